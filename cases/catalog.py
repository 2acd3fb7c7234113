"""The problem catalog: categories, who answers for each, deadlines and severities."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Severity = Literal["critical", "major", "minor", "warning"]
UNIT_KINDS = ("sanitation", "drainage", "power", "gas", "telecom", "heating", "water", "lighting")


class CatalogError(ValueError):
    """The catalog file is invalid; ``problems`` lists (where, message)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"{path}: {where}: {message}" for where, message in problems)
        super().__init__(f"invalid problem catalog:\n{lines}")


class Category(BaseModel):
    """One kind of problem."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$")
    name: str = Field(min_length=1)
    name_zh: str | None = None
    responsible: str = Field(
        description=(
            '"owner" (the component\'s owner), "maintainer" (the component\'s maintainer: a '
            'device\'s own faults), "coordinating", or a district unit kind.'
        )
    )
    deadline_h: float = Field(gt=0, le=24 * 90)
    severity: Severity
    sensor_verification: bool = False
    minor_codes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known_responsible(self) -> Category:
        if self.responsible not in ("owner", "maintainer", "coordinating", *UNIT_KINDS):
            allowed = ", ".join(("owner", "maintainer", "coordinating", *UNIT_KINDS))
            msg = f"responsible {self.responsible!r} is not one of {allowed}"
            raise ValueError(msg)
        return self


class Catalog(BaseModel):
    """All categories, by code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: tuple[Category, ...]

    @model_validator(mode="after")
    def _unique_codes(self) -> Catalog:
        codes = [c.code for c in self.category]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            msg = f"category codes repeat: {', '.join(repeated)}"
            raise ValueError(msg)
        return self

    def get(self, code: str) -> Category:
        """The category ``code``, or KeyError naming the known ones."""
        for category in self.category:
            if category.code == code:
                return category
        msg = f"unknown category {code!r}; known: {', '.join(c.code for c in self.category)}"
        raise KeyError(msg)


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog; CatalogError lists every problem."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(path, [("(file)", str(exc))]) from None
    try:
        return Catalog.model_validate(document)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            where = (
                f"category {loc[1]} ({document['category'][loc[1]].get('code', '?')})"
                if len(loc) > 1 and loc[0] == "category" and isinstance(loc[1], int)
                else ".".join(map(str, loc)) or "(catalog)"
            )
            field = ".".join(map(str, loc[2:]))
            problems.append((where, f"{field + ': ' if field else ''}{err['msg']}"))
        raise CatalogError(path, problems) from None
