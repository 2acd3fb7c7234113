"""Component codes split by a configurable scheme."""

from __future__ import annotations

import pytest

from devices.codes import CodeError, CodeScheme, parse_code


def test_classic_split_and_cover_category() -> None:
    code = parse_code("3205080101000001", CodeScheme.parse("6+2+2+6"))
    assert (code.division, code.major, code.minor, code.serial) == ("320508", "01", "01", "000001")
    assert code.default_category == "water_supply"


def test_newer_split_has_no_implied_category() -> None:
    code = parse_code("3205080100100001", CodeScheme.parse("6+2+3+5"))
    assert (code.minor, code.serial) == ("001", "00001")
    assert code.default_category is None


@pytest.mark.parametrize("scheme", ["6+2+2", "6+2+2+7", "a+b+c+d", "16+0+0+0"])
def test_bad_schemes_are_refused(scheme: str) -> None:
    with pytest.raises(CodeError, match="four widths summing to 16"):
        CodeScheme.parse(scheme)


@pytest.mark.parametrize("code", ["320508010100000", "32050801010000011", "32050801010000a1"])
def test_bad_codes_are_refused(code: str) -> None:
    with pytest.raises(CodeError, match="expected 16 digits"):
        parse_code(code, CodeScheme.parse("6+2+2+6"))
