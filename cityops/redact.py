"""Secrets out of text: passwords in URLs and connection strings never reach logs or output."""

from __future__ import annotations

import re
from typing import Final

#: scheme://user:password@ (up to the last @ before the path: an unencoded @ in a password).
_URL_PASSWORD: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^\s/]*@")
#: password=secret in a libpq connection string, quoted or not.
_CONNINFO_PASSWORD: Final = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)")
MASK: Final = "***"


def redact(text: str) -> str:
    """``text`` with every password in a URL or a connection string replaced by ``***``."""
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    return _CONNINFO_PASSWORD.sub(rf"\g<head>{MASK}", text)
