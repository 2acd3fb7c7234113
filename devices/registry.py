"""The device registry and the asset dictionary: validated, all-or-nothing imports and look-ups.

Files are CSV (a header row, empty cells mean "not given") or GeoJSON (a FeatureCollection of
Point features whose properties are the columns). Every row is checked, references to units,
regions, assets and gateways included, before anything is written; a file with any bad row
imports nothing and every bad row is reported by its line or feature number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.codes import CodeError, CodeScheme, parse_code

DeviceType = Literal["manhole", "sweeper", "light", "gateway"]


class RegistryError(Exception):
    """Base of the registry's errors."""


class ImportRejectedError(RegistryError):
    """A file had bad rows; nothing was imported. ``problems`` lists (where, message)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"{path}: {where}: {message}" for where, message in problems)
        super().__init__(f"{len(problems)} bad rows, nothing imported:\n{lines}")


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


_M = TypeVar("_M", bound=_Row)


class AssetRow(_Row):
    """One component of the dictionary, as a file gives it."""

    code: str = Field(pattern=r"^[0-9]{16}$")
    category: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,64}$")
    name: str | None = None
    competent_unit_id: str | None = None
    owner_unit_id: str | None = None
    maintainer_unit_id: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    accuracy_class: Literal["A", "B", "C"] | None = None
    region_id: str | None = None
    state: str = "in_service"


class DeviceRow(_Row):
    """One device, as a file gives it: only ``device_id`` and ``type`` are required."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    type: DeviceType
    asset_code: str | None = Field(default=None, pattern=r"^[0-9]{16}$")
    gateway_id: str | None = None
    firmware: str | None = None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import wrote."""

    rows: int
    created: int
    updated: int


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, columns) for each row of a CSV or GeoJSON file."""
    if path.suffix.lower() in (".geojson", ".json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("type") != "FeatureCollection":
            msg = f"{path}: expected a GeoJSON FeatureCollection"
            raise RegistryError(msg)
        for number, feature in enumerate(document.get("features", []), start=1):
            row = dict(feature.get("properties") or {})
            geometry = feature.get("geometry") or {}
            if geometry.get("type") == "Point":
                row["lon"], row["lat"] = geometry["coordinates"][:2]
            yield f"feature {number}", row
        return
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            cleaned = {k: v for k, v in row.items() if k is not None and v not in ("", None)}
            yield f"line {reader.line_num}", cleaned


def _validate(
    model: type[_M], rows: Iterable[tuple[str, dict[str, Any]]], key: str
) -> tuple[list[tuple[str, _M]], list[tuple[str, str]]]:
    good: list[tuple[str, _M]] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for where, raw in rows:
        try:
            row = model.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(row)"
                problems.append((where, f"{field} = {err.get('input')!r}: {err['msg']}"))
            continue
        value = getattr(row, key)
        if value in seen:
            problems.append((where, f"{key} {value!r} repeats {seen[value]}"))
            continue
        seen[value] = where
        good.append((where, row))
    return good, problems


def _missing(conn: psycopg.Connection, table: str, column: str, values: set[str]) -> set[str]:
    if not values:
        return set()
    found = conn.execute(
        f"select {column} from {table} where {column} = any(%s)", (list(values),)
    ).fetchall()
    return values - {r[0] for r in found}


def _check_references(
    conn: psycopg.Connection,
    rows: Sequence[tuple[str, _Row]],
    references: dict[str, tuple[str, str]],
    problems: list[tuple[str, str]],
) -> None:
    """Report each row whose reference columns name something the database does not have."""
    for field, (table, column) in references.items():
        wanted = {getattr(r, field) for _, r in rows if getattr(r, field) is not None}
        missing = _missing(conn, table, column, wanted)
        problems.extend(
            (where, f"{field} = {getattr(row, field)!r}: no such {table[:-1]}")
            for where, row in rows
            if getattr(row, field) in missing
        )


def import_assets(conn: psycopg.Connection, path: Path, scheme: CodeScheme) -> ImportReport:
    """Import a components file, all rows or none."""
    rows, problems = _validate(AssetRow, read_rows(path), "code")
    records = []
    for where, row in rows:
        try:
            code = parse_code(row.code, scheme)
        except CodeError as exc:
            problems.append((where, str(exc)))
            continue
        category = row.category or code.default_category
        if category is None:
            problems.append(
                (
                    where,
                    f"category is required for code {row.code} (no default "
                    f"for major {code.major} minor {code.minor})",
                )
            )
            continue
        records.append(
            (
                code.code,
                code.division,
                code.major,
                code.minor,
                code.serial,
                category,
                row.name,
                row.competent_unit_id,
                row.owner_unit_id,
                row.maintainer_unit_id,
                row.lat,
                row.lon,
                row.accuracy_class,
                row.region_id,
                row.state,
            )
        )
    unit = ("units", "unit_id")
    _check_references(
        conn,
        rows,
        {
            "competent_unit_id": unit,
            "owner_unit_id": unit,
            "maintainer_unit_id": unit,
            "region_id": ("regions", "region_id"),
        },
        problems,
    )
    if problems:
        raise ImportRejectedError(path, problems)
    return _upsert(
        conn,
        "insert into assets (code, division, major, minor, serial, category, name, "
        "competent_unit_id, owner_unit_id, maintainer_unit_id, lat, lon, accuracy_class, "
        "region_id, state) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "on conflict (code) do update set division = excluded.division, major = excluded.major, "
        "minor = excluded.minor, serial = excluded.serial, category = excluded.category, "
        "name = excluded.name, competent_unit_id = excluded.competent_unit_id, "
        "owner_unit_id = excluded.owner_unit_id, maintainer_unit_id = excluded.maintainer_unit_id, "
        "lat = excluded.lat, lon = excluded.lon, accuracy_class = excluded.accuracy_class, "
        "region_id = excluded.region_id, state = excluded.state, updated_at = now() "
        "returning (xmax = 0)",
        records,
    )


def import_devices(conn: psycopg.Connection, path: Path) -> ImportReport:
    """Import a devices file, all rows or none."""
    rows, problems = _validate(DeviceRow, read_rows(path), "device_id")
    _check_references(conn, rows, {"asset_code": ("assets", "code")}, problems)
    in_file = {r.device_id for _, r in rows if r.type == "gateway"}
    gateways = {r.gateway_id for _, r in rows if r.gateway_id is not None} - in_file
    registered = {
        g
        for (g,) in conn.execute(
            "select device_id from devices where type = 'gateway' and device_id = any(%s)",
            (list(gateways),),
        )
    }
    problems.extend(
        (where, f"gateway_id = {row.gateway_id!r}: no such gateway")
        for where, row in rows
        if row.gateway_id in gateways - registered
    )
    if problems:
        raise ImportRejectedError(path, problems)
    return _upsert(
        conn,
        "insert into devices (device_id, type, asset_code, gateway_id, firmware) "
        "values (%s, %s, %s, %s, %s) on conflict (device_id) do update set type = excluded.type, "
        "asset_code = excluded.asset_code, gateway_id = excluded.gateway_id, "
        "firmware = coalesce(excluded.firmware, devices.firmware), auto_registered = false "
        "returning (xmax = 0)",
        [(r.device_id, r.type, r.asset_code, r.gateway_id, r.firmware) for _, r in rows],
    )


def _upsert(
    conn: psycopg.Connection, statement: str, records: list[tuple[Any, ...]]
) -> ImportReport:
    created = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(statement, records, returning=True)
        while True:
            row = cur.fetchone()
            created += bool(row and row[0])
            if not cur.nextset():
                break
    return ImportReport(rows=len(records), created=created, updated=len(records) - created)


def show_asset(conn: psycopg.Connection, code: str) -> dict[str, Any] | None:
    """One asset with its units' names and the devices bound to it."""
    cur = conn.execute(
        "select a.*, cu.name as competent_unit, ou.name as owner_unit, "
        "mu.name as maintainer_unit, "
        "coalesce((select array_agg(d.device_id order by d.device_id) from devices d "
        "where d.asset_code = a.code), '{}') as devices "
        "from assets a left join units cu on cu.unit_id = a.competent_unit_id "
        "left join units ou on ou.unit_id = a.owner_unit_id "
        "left join units mu on mu.unit_id = a.maintainer_unit_id where a.code = %s",
        (code,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([c.name for c in cur.description or ()], row, strict=True))
