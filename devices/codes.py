"""City component codes: 16 digits = division + major + minor + serial, in a configurable split.

The classic split is 6+2+2+6 (3205080101000001: division 320508, major 01, minor 01, serial
000001); a newer schema uses 6+2+3+5. Nothing else in cityops assumes a split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

CODE_LENGTH: Final = 16
#: A component code as text (migration 0001 checks the same in SQL).
CODE_PATTERN: Final = rf"^[0-9]{{{CODE_LENGTH}}}$"
_DIGITS = re.compile(CODE_PATTERN)

#: Cover categories by minor code under major 01 (public facilities), classic 6+2+2+6 list.
COVER_CATEGORIES: Final[dict[str, str]] = {
    "01": "water_supply",  # 上水井盖
    "02": "sewage",  # 污水井盖
    "03": "storm_water",  # 雨水井盖
    "04": "storm_grate",  # 雨水箅子
    "05": "power",  # 电力井盖
    "06": "street_light",  # 路灯井盖
    "07": "telecom",  # 通信井盖
    "08": "cable_tv",  # 电视井盖
    "09": "network",  # 网络井盖
    "10": "heating",  # 热力井盖
    "11": "gas",  # 燃气井盖
    "12": "police",  # 公安井盖
    "14": "ownerless",  # 无主井盖
    "27": "reclaimed_water",  # 中水井盖
    "29": "oil_gas_pipeline",  # 石油管线井盖
    "30": "special",  # 特殊井盖
}
PUBLIC_FACILITIES_MAJOR: Final = "01"


class CodeError(ValueError):
    """A component code or code scheme is malformed."""


@dataclass(frozen=True, slots=True)
class CodeScheme:
    """How a 16-digit code splits into division, major, minor and serial."""

    division: int
    major: int
    minor: int
    serial: int

    @classmethod
    def parse(cls, text: str) -> CodeScheme:
        """Parse a split such as ``6+2+2+6``."""
        try:
            parts = [int(p) for p in text.split("+")]
        except ValueError:
            parts = []
        if len(parts) != 4 or sum(parts) != CODE_LENGTH or min(parts) < 1:
            msg = f"invalid code scheme {text!r}: expected four widths summing to 16, e.g. 6+2+2+6"
            raise CodeError(msg)
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.division}+{self.major}+{self.minor}+{self.serial}"


@dataclass(frozen=True, slots=True)
class ComponentCode:
    """A parsed component code."""

    code: str
    division: str
    major: str
    minor: str
    serial: str

    @property
    def default_category(self) -> str | None:
        """The cover category implied by the classic minor code, if any."""
        if self.major != PUBLIC_FACILITIES_MAJOR:
            return None
        return COVER_CATEGORIES.get(self.minor)


def parse_code(code: str, scheme: CodeScheme) -> ComponentCode:
    """Split a 16-digit code by ``scheme``."""
    if not _DIGITS.match(code):
        msg = f"invalid component code {code!r}: expected 16 digits"
        raise CodeError(msg)
    a = scheme.division
    b = a + scheme.major
    c = b + scheme.minor
    return ComponentCode(code, code[:a], code[a:b], code[b:c], code[c:])
