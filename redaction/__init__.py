"""Text fit for logs and output: no password from a URL or connection string, errors in a line."""

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


def error_line(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none), passwords redacted."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__)
