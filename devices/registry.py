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
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices.codes import CODE_PATTERN, CodeError, CodeScheme, parse_code
from wire.contract import ID_PATTERN

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

_ASSET_COLUMNS = (
    "code",
    "division",
    "major",
    "minor",
    "serial",
    "category",
    "name",
    "competent_unit_id",
    "owner_unit_id",
    "maintainer_unit_id",
    "lat",
    "lon",
    "accuracy_class",
    "region_id",
    "state",
    "properties",
    "updated_at",
)
_DEVICE_COLUMNS = (
    "device_id",
    "type",
    "asset_code",
    "gateway_id",
    "firmware",
    "region_id",
    "auto_registered",
)


class AssetRow(_Row):
    """One component of the dictionary, as a file gives it."""

    code: str = Field(pattern=CODE_PATTERN)
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
    properties: dict[str, Any] = Field(
        default_factory=dict, description="Category-specific: a lamp's cabinet_id, circuit, ..."
    )

    @field_validator("properties", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class DeviceRow(_Row):
    """One device, as a file gives it: only ``device_id`` and ``type`` are required."""

    device_id: str = Field(pattern=ID_PATTERN)
    type: DeviceType
    asset_code: str | None = Field(default=None, pattern=CODE_PATTERN)
    gateway_id: str | None = None
    firmware: str | None = None
    region_id: str | None = None


_LEVELS = ("city", "district", "street", "grid")


class RegionRow(_Row):
    """A district, street or grid with its boundary (GeoJSON Polygon or MultiPolygon)."""

    region_id: str = Field(pattern=ID_PATTERN)
    name: str
    level: Literal["district", "street", "grid"]
    parent_id: str | None = None
    geometry: dict[str, Any] | None = None


class UnitRow(_Row):
    """A responsible unit on the city, district, street or grid level."""

    unit_id: str = Field(pattern=ID_PATTERN)
    name: str
    name_zh: str | None = None
    level: Literal["city", "district", "street", "grid"]
    kind: str = Field(pattern=r"^[a-z_]{1,32}$")
    parent_id: str | None = None
    region_id: str | None = None


class RoadRow(_Row):
    """A road segment (GeoJSON LineString) with its sweeping plan."""

    segment_id: str = Field(pattern=ID_PATTERN)
    name: str
    road_class: str
    region_id: str | None = None
    geometry: dict[str, Any]
    length_m: float = Field(gt=0)
    required_passes: int = Field(default=1, ge=0, le=24)
    window_start: time | None = None
    window_end: time | None = None
    max_speed_kmh: float = Field(default=8, gt=0, le=30)
    working_width_m: float = Field(default=3, gt=0, le=10)
    oneway: bool = False  # swept only in the direction it is drawn

    @field_validator("geometry")
    @classmethod
    def _is_line(cls, value: dict[str, Any]) -> dict[str, Any]:
        coordinates = value.get("coordinates") or []
        if value.get("type") != "LineString" or len(coordinates) < 2:
            msg = "expected a GeoJSON LineString of at least two positions"
            raise ValueError(msg)
        return value


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import wrote."""

    rows: int
    created: int
    updated: int


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, columns) for each row of a CSV or GeoJSON file.

    A file that is not UTF-8, not JSON, or not shaped like a FeatureCollection of features with
    property objects raises RegistryError naming the place; rows are validated by the caller.
    """
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            yield from _features(path, json.loads(path.read_text(encoding="utf-8")))
            return
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                cleaned = {
                    k: v for k, v in row.items() if isinstance(k, str) and v not in ("", None)
                }
                yield f"line {reader.line_num}", cleaned
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        msg = f"{path}: not a readable {path.suffix.lstrip('.') or 'CSV'} file: {exc}"
        raise RegistryError(msg) from None


def _features(path: Path, document: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(document, dict) or document.get("type") != "FeatureCollection":
        msg = f"{path}: expected a GeoJSON FeatureCollection"
        raise RegistryError(msg)
    features = document.get("features", [])
    if not isinstance(features, list):
        msg = f"{path}: 'features' is not an array"
        raise RegistryError(msg)
    for number, feature in enumerate(features, start=1):
        properties = feature.get("properties") if isinstance(feature, dict) else None
        geometry = (feature.get("geometry") if isinstance(feature, dict) else None) or {}
        if not isinstance(properties, dict | None) or not isinstance(geometry, dict):
            msg = f"{path}: feature {number} is not a GeoJSON feature with object properties"
            raise RegistryError(msg)
        row = dict(properties or {})
        if geometry.get("type") == "Point":
            coordinates = geometry.get("coordinates")
            if not isinstance(coordinates, list) or len(coordinates) < 2:
                msg = f"{path}: feature {number}: a Point needs [lon, lat] coordinates"
                raise RegistryError(msg)
            row["lon"], row["lat"] = coordinates[:2]
        elif geometry:
            row["geometry"] = geometry
        yield f"feature {number}", row


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
    in_file: frozenset[str] = frozenset(),
) -> None:
    """Report each row whose references name something unknown.

    Known are rows in the database and ``in_file``: the ids the file itself defines (parents).
    """
    for field, (table, column) in references.items():
        wanted = {getattr(r, field) for _, r in rows if getattr(r, field) is not None}
        missing = _missing(conn, table, column, wanted - in_file)
        problems.extend(
            (where, f"{field} = {getattr(row, field)!r}: no such {table[:-1]}")
            for where, row in rows
            if getattr(row, field) in missing
        )


def import_assets(conn: psycopg.Connection, path: Path, scheme: CodeScheme) -> ImportReport:
    """Import a components file, all rows or none."""
    rows, problems = _validate(AssetRow, read_rows(path), "code")
    now = datetime.now(UTC)
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
                Jsonb(row.properties),
                now,
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
    return _upsert(conn, "assets", "code", _ASSET_COLUMNS, records)


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
    records = [
        (r.device_id, r.type, r.asset_code, r.gateway_id, r.firmware, r.region_id, False)
        for _, r in rows
    ]
    return _upsert(conn, "devices", "device_id", _DEVICE_COLUMNS, records)


def _upsert(
    conn: psycopg.Connection,
    table: str,
    key: str,
    columns: tuple[str, ...],
    records: list[tuple[Any, ...]],
) -> ImportReport:
    """Insert or update ``records`` in one transaction; count how many were new."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns if c != key
    )
    statement = sql.SQL(
        "insert into {table} ({names}) values ({values}) on conflict ({key}) do update set "
        "{updates} returning (xmax = 0)"
    ).format(
        table=sql.Identifier(table),
        names=names,
        values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        key=sql.Identifier(key),
        updates=updates,
    )
    created = 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(statement, records, returning=True)
        while True:
            row = cur.fetchone()
            created += bool(row and row[0])
            if not cur.nextset():
                break
    return ImportReport(rows=len(records), created=created, updated=len(records) - created)


def import_regions(conn: psycopg.Connection, path: Path) -> ImportReport:
    """Import districts, streets and grids (parents first), all rows or none."""
    rows, problems = _validate(RegionRow, read_rows(path), "region_id")
    defined = frozenset(r.region_id for _, r in rows)
    _check_references(conn, rows, {"parent_id": ("regions", "region_id")}, problems, defined)
    if problems:
        raise ImportRejectedError(path, problems)
    ordered = sorted((r for _, r in rows), key=lambda r: _LEVELS.index(r.level))
    records = [
        (r.region_id, r.name, r.level, r.parent_id, Jsonb(r.geometry) if r.geometry else None)
        for r in ordered
    ]
    columns = ("region_id", "name", "level", "parent_id", "boundary")
    return _upsert(conn, "regions", "region_id", columns, records)


def import_units(conn: psycopg.Connection, path: Path) -> ImportReport:
    """Import responsible units (parents first), all rows or none."""
    rows, problems = _validate(UnitRow, read_rows(path), "unit_id")
    defined = frozenset(r.unit_id for _, r in rows)
    _check_references(conn, rows, {"parent_id": ("units", "unit_id")}, problems, defined)
    _check_references(conn, rows, {"region_id": ("regions", "region_id")}, problems)
    if problems:
        raise ImportRejectedError(path, problems)
    ordered = sorted((r for _, r in rows), key=lambda r: _LEVELS.index(r.level))
    columns = ("unit_id", "name", "name_zh", "level", "kind", "parent_id", "region_id")
    records = [tuple(getattr(r, c) for c in columns) for r in ordered]
    return _upsert(conn, "units", "unit_id", columns, records)


def import_roads(conn: psycopg.Connection, path: Path) -> ImportReport:
    """Import road segments with their sweeping plans, all rows or none."""
    return store_roads(conn, read_rows(path), path)


def store_roads(
    conn: psycopg.Connection, rows: Iterable[tuple[str, dict[str, Any]]], origin: Path
) -> ImportReport:
    """Store road segments (where, columns) read from ``origin``: all of them or none."""
    good, problems = _validate(RoadRow, rows, "segment_id")
    _check_references(conn, good, {"region_id": ("regions", "region_id")}, problems)
    if problems:
        raise ImportRejectedError(origin, problems)
    columns = tuple(RoadRow.model_fields)
    records = [
        tuple(Jsonb(v) if c == "geometry" else v for c, v in ((c, getattr(r, c)) for c in columns))
        for _, r in good
    ]
    return _upsert(conn, "road_segments", "segment_id", columns, records)


#: A city bundle's files, in the order they must be imported.
BUNDLE_FILES = (
    ("regions", "regions.geojson"),
    ("units", "units.csv"),
    ("assets", "assets.csv"),
    ("devices", "devices.csv"),
    ("roads", "roads.geojson"),
)


def import_bundle(
    conn: psycopg.Connection, folder: Path, scheme: CodeScheme
) -> dict[str, ImportReport]:
    """Import a city bundle (``cityops sim city`` writes one); stops at the first bad file."""
    importers = {
        "regions": import_regions,
        "units": import_units,
        "assets": lambda c, p: import_assets(c, p, scheme),
        "devices": import_devices,
        "roads": import_roads,
    }
    return {
        part: importers[part](conn, folder / name)
        for part, name in BUNDLE_FILES
        if (folder / name).exists()
    }


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
