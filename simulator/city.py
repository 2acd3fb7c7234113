"""The city generator: a deterministic bundle of regions, units, roads, components and devices.

The same seed and size give byte-identical files. Districts are laid out as square cells around
the city centre; each district has four streets of four grids, a lattice of road segments with
a night sweeping plan, manhole covers along its roads (16-digit codes, category by minor code,
owner by category), street lamps on its main roads grouped into control cabinets (each cabinet
controller is a gateway publishing its lamps' readings) and a few sweepers.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

import roadmaps

#: Metres per degree of latitude (WGS-84 mean); longitude scales by cos(latitude).
_M_PER_DEG = 111_320.0
_DISTRICT_SIZE_M = 3_000.0
_BLOCK_M = 400.0
#: Map segments are split at junctions into pieces at least this long (``cityops roads import``
#: does the same by default).
_MIN_SEGMENT_M = 20.0
#: Map road classes the simulated sweepers sweep (those config/sweep-plans.toml plans, so that
#: ``cityops roads import`` of the same map gives the same segments), and the main roads.
#: Lines of a class no map uses (a GeoJSON's own) are swept too.
_SWEPT = frozenset(
    {"trunk", "primary", "secondary", "tertiary", "unclassified", "residential", "living_street"}
)
_MAIN = frozenset({"main", "trunk", "primary", "secondary"})

#: Cover categories (minor code under major 01) with their share and the kind of owner.
COVER_CATEGORIES: tuple[tuple[str, str, float, str | None], ...] = (
    ("01", "water_supply", 0.12, "water"),
    ("02", "sewage", 0.22, "drainage"),
    ("03", "storm_water", 0.20, "drainage"),
    ("04", "storm_grate", 0.10, "drainage"),
    ("05", "power", 0.08, "power"),
    ("06", "street_light", 0.04, "lighting"),
    ("07", "telecom", 0.08, "telecom"),
    ("10", "heating", 0.06, "heating"),
    ("11", "gas", 0.06, "gas"),
    ("14", "ownerless", 0.04, None),
)
#: District units by kind, with their Chinese names as operators know them.
UNIT_KINDS: tuple[tuple[str, str, str], ...] = (
    ("coordinating", "coordinating office", "城市管理协调办公室"),
    ("sanitation", "sanitation department", "环卫中心"),
    ("drainage", "drainage company", "排水公司"),
    ("power", "power supply company", "供电公司"),
    ("gas", "gas company", "燃气公司"),
    ("telecom", "telecom operator", "通信公司"),
    ("heating", "heating company", "热力公司"),
    ("water", "water supply company", "自来水公司"),
    ("lighting", "street lighting office", "路灯管理处"),
)
LAMPS_PER_CABINET = 40
CIRCUITS_PER_CABINET = 3


@dataclass(frozen=True, slots=True)
class CitySpec:
    """Size and place of a generated city."""

    seed: int = 1
    districts: int = 1
    covers: int = 200
    lamps: int = 120
    sweepers_per_district: int = 2
    center_lat: float = 41.8057  # Shenyang
    center_lon: float = 123.4315
    division_base: int = 210102  # administrative division code of the first district
    name: str = "Shenyang (simulated)"
    district_prefix: str = "d"  # district ids: d0, d1, ... (their streets, grids, units follow)


@dataclass(slots=True)
class City:
    """A generated city, as rows ready to be written as a bundle."""

    spec: CitySpec
    regions: list[dict[str, Any]] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)
    roads: list[dict[str, Any]] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)


class _Frame:
    """Metres east/north of the city centre to WGS-84 and back."""

    def __init__(self, lat: float, lon: float) -> None:
        self.lat, self.lon = lat, lon
        self.m_per_deg_lon = _M_PER_DEG * math.cos(math.radians(lat))

    def to_metres(self, lon: float, lat: float) -> tuple[float, float]:
        return ((lon - self.lon) * self.m_per_deg_lon, (lat - self.lat) * _M_PER_DEG)

    def to_lonlat(self, x_m: float, y_m: float) -> list[float]:
        return [
            round(self.lon + x_m / self.m_per_deg_lon, 7),
            round(self.lat + y_m / _M_PER_DEG, 7),
        ]


def _rectangle(frame: _Frame, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = [frame.to_lonlat(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    return {"type": "Polygon", "coordinates": [ring]}


@dataclass(frozen=True, slots=True)
class _Segment:
    """A road segment: a polyline in metres east/north of the centre."""

    segment_id: str
    name: str
    road_class: str
    points: tuple[tuple[float, float], ...]
    main: bool
    oneway: bool = False


#: What components are placed along: a straight piece's two ends and whether it is a main road.
_Road = tuple[tuple[float, float], tuple[float, float], bool]


@dataclass(frozen=True, slots=True)
class _Place:
    """A district as the component placers need it."""

    layout: _Layout
    district: int
    district_id: str
    division: str
    roads: list[_Road]


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the districts lie: square cells of ``size_m`` from their south-west corners."""

    frame: _Frame
    size_m: float
    origins: tuple[tuple[float, float], ...]

    def cell_of(self, x: float, y: float) -> int | None:
        for d, (x0, y0) in enumerate(self.origins):
            if x0 <= x < x0 + self.size_m and y0 <= y < y0 + self.size_m:
                return d
        return None


def _grid_layout(count: int, frame: _Frame, size_m: float, corner: tuple[float, float]) -> _Layout:
    side = math.ceil(math.sqrt(count))
    origins = tuple(
        (corner[0] + i % side * size_m, corner[1] + i // side * size_m) for i in range(count)
    )
    return _Layout(frame, size_m, origins)


def generate(spec: CitySpec, roads: Sequence[roadmaps.RoadLine] | None = None) -> City:
    """Generate the city ``spec`` describes, on a lattice of streets or on ``roads`` from a map.

    The same spec (and roads) always give the same city.
    """
    rng = np.random.default_rng(spec.seed)
    city = City(spec)
    city.units.append(
        {
            "unit_id": "city-office",
            "name": "city operations office",
            "name_zh": "城市运行管理服务中心",
            "level": "city",
            "kind": "coordinating",
        }
    )
    if roads:
        layout, segments = _map_layout(spec.districts, roads)
    else:
        frame = _Frame(spec.center_lat, spec.center_lon)
        half = math.ceil(math.sqrt(spec.districts)) * _DISTRICT_SIZE_M / 2
        layout = _grid_layout(spec.districts, frame, _DISTRICT_SIZE_M, (-half, -half))
        segments = [_lattice(layout, d, spec.district_prefix) for d in range(spec.districts)]
    covers_left, lamps_left = spec.covers, spec.lamps
    for d in range(spec.districts):
        districts_left = spec.districts - d
        n_covers = covers_left // districts_left
        n_lamps = lamps_left // districts_left
        covers_left -= n_covers
        lamps_left -= n_lamps
        _district(city, rng, layout, d, segments=segments[d], n_covers=n_covers, n_lamps=n_lamps)
    return city


def _map_layout(
    districts: int, roads: Sequence[roadmaps.RoadLine]
) -> tuple[_Layout, list[list[_Segment]]]:
    """Districts laid over the roads' extent, and the roads split at junctions into segments.

    Each segment lies in the district of its midpoint.
    """
    lons = [p[0] for r in roads for p in r.coordinates]
    lats = [p[1] for r in roads for p in r.coordinates]
    frame = _Frame((min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2)
    swept = [r for r in roads if r.road_class in _SWEPT or r.road_class not in roadmaps.DRIVEN]
    pieces = [
        p
        for p in roadmaps.split_at_junctions(swept, _MIN_SEGMENT_M)
        if roadmaps.length_m(p.coordinates) >= _MIN_SEGMENT_M
    ]
    points = [tuple(frame.to_metres(lon, lat) for lon, lat in p.coordinates) for p in pieces]
    xs = [x for line in points for x, _ in line]
    ys = [y for line in points for _, y in line]
    side = math.ceil(math.sqrt(districts))
    size = max(max(xs) - min(xs), max(ys) - min(ys), 1.0) / side + 1.0
    layout = _grid_layout(districts, frame, size, (min(xs) - 0.5, min(ys) - 0.5))
    segments: list[list[_Segment]] = [[] for _ in range(districts)]
    for piece, line in zip(pieces, points, strict=True):
        lon, lat = shapely.LineString(piece.coordinates).interpolate(0.5, normalized=True).coords[0]
        d = layout.cell_of(*frame.to_metres(lon, lat))
        if d is not None:
            main = piece.road_class in _MAIN
            segments[d].append(
                _Segment(
                    piece.line_id,
                    piece.name,
                    "main" if main else "secondary",
                    line,
                    main,
                    piece.oneway,
                )
            )
    return layout, segments


def _district(
    city: City,
    rng: np.random.Generator,
    layout: _Layout,
    d: int,
    *,
    segments: list[_Segment],
    n_covers: int,
    n_lamps: int,
) -> None:
    """Add district ``d``: its regions, units, roads, the components along them and sweepers."""
    district_id = f"{city.spec.district_prefix}{d}"
    _district_regions(city, layout, d, district_id)
    _district_units(city, d, district_id)
    _district_roads(city, layout.frame, district_id, segments)
    roads = [(p, q, s.main) for s in segments for p, q in itertools.pairwise(s.points)]
    place = _Place(layout, d, district_id, str(city.spec.division_base + d), roads)
    if roads:
        _covers(city, rng, place, n_covers)
        _lamps(city, rng, place, n_lamps)
    _district_sweepers(city, district_id)


def _district_regions(city: City, layout: _Layout, d: int, district_id: str) -> None:
    """The district's square and its four streets (quarters), each split into four grids."""
    frame = layout.frame
    size = layout.size_m
    x0, y0 = layout.origins[d]
    city.regions.append(
        {
            "region_id": district_id,
            "name": f"District {d}",
            "level": "district",
            "geometry": _rectangle(frame, x0, y0, x0 + size, y0 + size),
        }
    )
    half = size / 2
    for s in range(4):
        corner = (x0 + s % 2 * half, y0 + s // 2 * half)
        _street_regions(city, frame, (d, district_id), s, corner=corner, side=half)


def _street_regions(
    city: City,
    frame: _Frame,
    district: tuple[int, str],
    s: int,
    *,
    corner: tuple[float, float],
    side: float,
) -> None:
    """Street ``s`` of a district (a square of ``side`` from ``corner``) and its four grids."""
    sx, sy = corner
    d, district_id = district
    street_id = f"{district_id}-s{s}"
    city.regions.append(
        {
            "region_id": street_id,
            "name": f"District {d} street {s}",
            "level": "street",
            "parent_id": district_id,
            "geometry": _rectangle(frame, sx, sy, sx + side, sy + side),
        }
    )
    quarter = side / 2
    for g in range(4):
        gx, gy = sx + g % 2 * quarter, sy + g // 2 * quarter
        city.regions.append(
            {
                "region_id": f"{street_id}-g{g}",
                "name": f"District {d} street {s} grid {g}",
                "level": "grid",
                "parent_id": street_id,
                "geometry": _rectangle(frame, gx, gy, gx + quarter, gy + quarter),
            }
        )


def _district_units(city: City, d: int, district_id: str) -> None:
    """The district's four street offices and its units of every kind, units kept by level."""
    for s in range(4):
        street_id = f"{district_id}-s{s}"
        city.units.append(
            {
                "unit_id": f"{street_id}-office",
                "name": f"street {s} office",
                "name_zh": "街道办事处",
                "level": "street",
                "kind": "street_office",
                "parent_id": f"{district_id}-coordinating",
                "region_id": street_id,
            }
        )
    for kind, name, name_zh in UNIT_KINDS:
        city.units.append(
            {
                "unit_id": f"{district_id}-{kind}",
                "name": f"District {d} {name}",
                "name_zh": name_zh,
                "level": "district",
                "kind": kind,
                "parent_id": "city-office",
                "region_id": district_id,
            }
        )
    # streets first in the file: street offices name the coordinating office as parent
    city.units.sort(key=lambda u: ("city", "district", "street").index(u["level"]))


def _district_roads(city: City, frame: _Frame, district_id: str, segments: list[_Segment]) -> None:
    """The district's road segments, each with its night sweeping plan."""
    for s in segments:
        city.roads.append(
            {
                "segment_id": s.segment_id,
                "name": s.name,
                "road_class": s.road_class,
                "region_id": district_id,
                "geometry": {
                    "type": "LineString",
                    "coordinates": [frame.to_lonlat(*p) for p in s.points],
                },
                "length_m": round(sum(math.dist(p, q) for p, q in itertools.pairwise(s.points)), 1),
                "required_passes": 2 if s.main else 1,
                "window_start": "00:00",
                "window_end": "06:30",
                "max_speed_kmh": 8.0,
                "working_width_m": 3.0,
                "oneway": s.oneway,
            }
        )


def _district_sweepers(city: City, district_id: str) -> None:
    for k in range(city.spec.sweepers_per_district):
        city.devices.append(
            {
                "device_id": f"sw-{district_id}-{k}",
                "type": "sweeper",
                "region_id": district_id,
                "firmware": "3.2.0",
            }
        )


def _lattice(layout: _Layout, d: int, prefix: str) -> list[_Segment]:
    """A lattice of 400 m segments between intersections; every other line is a main road."""
    x0, y0 = layout.origins[d]
    lines = int(layout.size_m // _BLOCK_M)
    out: list[_Segment] = []
    for horizontal in (True, False):
        for i in range(1, lines):
            main = i % 2 == 1
            road = f"{'East' if horizontal else 'North'} {i} {'Avenue' if main else 'Street'}"
            for j in range(lines):
                a = (j * _BLOCK_M, i * _BLOCK_M)
                b = ((j + 1) * _BLOCK_M, i * _BLOCK_M)
                if not horizontal:
                    a, b = (a[1], a[0]), (b[1], b[0])
                p, q = (x0 + a[0], y0 + a[1]), (x0 + b[0], y0 + b[1])
                segment_id = f"{prefix}{d}-{'h' if horizontal else 'v'}{i}-{j}"
                name = f"{road}, district {d}"
                out.append(
                    _Segment(segment_id, name, "main" if main else "secondary", (p, q), main)
                )
    return out


def _point_on(
    rng: np.random.Generator,
    roads: list[_Road],
    count: int,
    offset_m: float,
    *,
    main_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random points beside the roads (``offset_m`` to either side), main roads only if asked."""
    pool = ([r for r in roads if r[2]] if main_only else roads) or roads
    idx = rng.integers(0, len(pool), count)
    t = rng.random(count)
    p = np.array([pool[i][0] for i in idx]).reshape(-1, 2)
    q = np.array([pool[i][1] for i in idx]).reshape(-1, 2)
    xy = p + (q - p) * t[:, None]
    along = q - p
    normal = np.stack([-along[:, 1], along[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    xy += normal * (rng.choice([-1.0, 1.0], count) * offset_m)[:, None]
    return xy[:, 0], xy[:, 1]


def _covers(city: City, rng: np.random.Generator, place: _Place, count: int) -> None:
    shares = np.array([c[2] for c in COVER_CATEGORIES])
    kinds = rng.choice(len(COVER_CATEGORIES), count, p=shares / shares.sum())
    frame = place.layout.frame
    xs, ys = _point_on(rng, place.roads, count, offset_m=2.0)
    angles = np.round(rng.uniform(0.0, 3.0, count), 1)
    serials: dict[str, int] = {}
    for n in range(count):
        minor, category, _, owner_kind = COVER_CATEGORIES[kinds[n]]
        serials[minor] = serials.get(minor, 0) + 1
        code = f"{place.division}01{minor}{serials[minor]:06d}"
        lon, lat = frame.to_lonlat(float(xs[n]), float(ys[n]))
        owner = f"{place.district_id}-{owner_kind}" if owner_kind else None
        city.assets.append(
            {
                "code": code,
                "category": category,
                "name": f"{category.replace('_', ' ')} cover",
                "competent_unit_id": f"{place.district_id}-coordinating",
                "owner_unit_id": owner,
                "maintainer_unit_id": owner,
                "lat": lat,
                "lon": lon,
                "accuracy_class": "B",
                "region_id": _grid_of(place, float(xs[n]), float(ys[n])),
                "properties": {"installed_angle_deg": float(angles[n])},
            }
        )
        city.devices.append(
            {
                "device_id": f"mh-{code}",
                "type": "manhole",
                "asset_code": code,
                "region_id": place.district_id,
                "firmware": "1.4.2",
            }
        )


def _lamps(city: City, rng: np.random.Generator, place: _Place, count: int) -> None:
    if count == 0:
        return
    frame = place.layout.frame
    xs, ys = _point_on(rng, place.roads, count, offset_m=6.0, main_only=True)
    order = np.lexsort((xs, ys))  # neighbours share a cabinet
    ratings = rng.choice([100.0, 150.0, 250.0], count, p=[0.5, 0.3, 0.2])
    for n, i in enumerate(order):
        cabinet = n // LAMPS_PER_CABINET
        cabinet_code = f"{place.division}0220{cabinet + 1:06d}"
        gateway = f"cab-{cabinet_code}"
        if n % LAMPS_PER_CABINET == 0:
            lon, lat = frame.to_lonlat(float(xs[i]), float(ys[i]))
            city.assets.append(
                {
                    "code": cabinet_code,
                    "category": "lighting_cabinet",
                    "name": "control cabinet",
                    "owner_unit_id": f"{place.district_id}-lighting",
                    "maintainer_unit_id": f"{place.district_id}-lighting",
                    "lat": lat,
                    "lon": lon,
                    "accuracy_class": "B",
                    "region_id": place.district_id,
                    "properties": {},
                }
            )
            city.devices.append(
                {
                    "device_id": gateway,
                    "type": "gateway",
                    "asset_code": cabinet_code,
                    "region_id": place.district_id,
                    "firmware": "2.0.1",
                }
            )
        code = f"{place.division}0201{n + 1:06d}"
        lon, lat = frame.to_lonlat(float(xs[i]), float(ys[i]))
        city.assets.append(
            {
                "code": code,
                "category": "street_lamp",
                "name": "street lamp",
                "owner_unit_id": f"{place.district_id}-lighting",
                "maintainer_unit_id": f"{place.district_id}-lighting",
                "lat": lat,
                "lon": lon,
                "accuracy_class": "B",
                "region_id": _grid_of(place, float(xs[i]), float(ys[i])),
                "properties": {
                    "cabinet_id": gateway,
                    "circuit": int(n % CIRCUITS_PER_CABINET) + 1,
                    "rated_power_w": float(ratings[i]),
                },
            }
        )
        city.devices.append(
            {
                "device_id": f"lt-{code}",
                "type": "light",
                "asset_code": code,
                "gateway_id": gateway,
                "region_id": place.district_id,
                "firmware": "2.0.1",
            }
        )


def _grid_of(place: _Place, x: float, y: float) -> str:
    """The grid cell of a point of the district (four streets of four grids)."""
    x0, y0 = place.layout.origins[place.district]
    size = place.layout.size_m
    half, quarter = size / 2, size / 4
    rx = min(max(x - x0, 0.0), size - 1e-6)
    ry = min(max(y - y0, 0.0), size - 1e-6)
    street = int(rx // half) + 2 * int(ry // half)
    grid = int((rx % half) // quarter) + 2 * int((ry % half) // quarter)
    return f"{place.district_id}-s{street}-g{grid}"


def write_bundle(city: City, folder: Path) -> dict[str, int]:
    """Write the bundle ``cityops city import`` reads; return the row count of each file."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_features(folder / "regions.geojson", city.regions)
    _write_features(folder / "roads.geojson", city.roads)
    _write_csv(
        folder / "units.csv",
        city.units,
        ("unit_id", "name", "name_zh", "level", "kind", "parent_id", "region_id"),
    )
    _write_csv(
        folder / "assets.csv",
        city.assets,
        (
            "code",
            "category",
            "name",
            "competent_unit_id",
            "owner_unit_id",
            "maintainer_unit_id",
            "lat",
            "lon",
            "accuracy_class",
            "region_id",
            "properties",
        ),
    )
    # gateways first: the lamps in the same file name them
    devices = sorted(city.devices, key=lambda r: r["type"] != "gateway")
    _write_csv(
        folder / "devices.csv",
        devices,
        ("device_id", "type", "asset_code", "gateway_id", "region_id", "firmware"),
    )
    counts = {
        "regions": len(city.regions),
        "units": len(city.units),
        "roads": len(city.roads),
        "assets": len(city.assets),
        "devices": len(city.devices),
    }
    manifest = {"spec": asdict(city.spec), "counts": counts}
    (folder / "city.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return counts


def read_bundle(folder: Path) -> City:
    """A bundle read back as the city it describes (generated or on a real map)."""
    manifest = json.loads((folder / "city.json").read_text(encoding="utf-8"))
    city = City(CitySpec(**manifest["spec"]))
    city.regions = _read_features(folder / "regions.geojson")
    city.roads = _read_features(folder / "roads.geojson")
    city.units = _read_csv(folder / "units.csv")
    city.devices = _read_csv(folder / "devices.csv")
    city.assets = _read_csv(folder / "assets.csv")
    for asset in city.assets:
        asset["properties"] = json.loads(asset["properties"] or "{}")
    return city


def _read_features(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return [{**f["properties"], "geometry": f["geometry"]} for f in document["features"]]


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)
        ]


def _write_features(path: Path, rows: list[dict[str, Any]]) -> None:
    features = [
        {
            "type": "Feature",
            "geometry": row["geometry"],
            "properties": {k: v for k, v in row.items() if k != "geometry"},
        }
        for row in rows
    ]
    document = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(document, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value
