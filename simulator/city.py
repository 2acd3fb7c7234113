"""The city generator: a deterministic bundle of regions, units, roads, components and devices.

The same seed and size give byte-identical files. Districts are laid out as square cells around
the city centre; each district has four streets of four grids, a lattice of road segments with
a night sweeping plan, manhole covers along its roads (16-digit codes, category by minor code,
owner by category), street lamps on its main roads grouped into control cabinets (each cabinet
controller is a gateway publishing its lamps' readings) and a few sweepers.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Metres per degree of latitude (WGS-84 mean); longitude scales by cos(latitude).
_M_PER_DEG = 111_320.0
_DISTRICT_SIZE_M = 3_000.0
_BLOCK_M = 400.0

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

    def to_lonlat(self, x_m: float, y_m: float) -> list[float]:
        return [
            round(self.lon + x_m / self.m_per_deg_lon, 7),
            round(self.lat + y_m / _M_PER_DEG, 7),
        ]


def _rectangle(frame: _Frame, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = [frame.to_lonlat(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    return {"type": "Polygon", "coordinates": [ring]}


def _district_origins(count: int) -> list[tuple[float, float]]:
    side = math.ceil(math.sqrt(count))
    half = side * _DISTRICT_SIZE_M / 2
    return [
        (i % side * _DISTRICT_SIZE_M - half, i // side * _DISTRICT_SIZE_M - half)
        for i in range(count)
    ]


def generate(spec: CitySpec) -> City:
    """Generate the city ``spec`` describes; the same spec always gives the same city."""
    rng = np.random.default_rng(spec.seed)
    frame = _Frame(spec.center_lat, spec.center_lon)
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
    origins = _district_origins(spec.districts)
    covers_left, lamps_left = spec.covers, spec.lamps
    for d, (x0, y0) in enumerate(origins):
        districts_left = spec.districts - d
        n_covers = covers_left // districts_left
        n_lamps = lamps_left // districts_left
        covers_left -= n_covers
        lamps_left -= n_lamps
        _district(city, rng, frame, d, x0=x0, y0=y0, n_covers=n_covers, n_lamps=n_lamps)
    return city


def _district(
    city: City,
    rng: np.random.Generator,
    frame: _Frame,
    d: int,
    *,
    x0: float,
    y0: float,
    n_covers: int,
    n_lamps: int,
) -> None:
    spec = city.spec
    size = _DISTRICT_SIZE_M
    division = str(spec.division_base + d)
    district_id = f"d{d}"
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
        sx, sy = x0 + s % 2 * half, y0 + s // 2 * half
        street_id = f"{district_id}-s{s}"
        city.regions.append(
            {
                "region_id": street_id,
                "name": f"District {d} street {s}",
                "level": "street",
                "parent_id": district_id,
                "geometry": _rectangle(frame, sx, sy, sx + half, sy + half),
            }
        )
        quarter = half / 2
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

    roads = _roads(city, frame, district_id, x0, y0)
    _covers(
        city, rng, frame, district_id=district_id, division=division, roads=roads, count=n_covers
    )
    _lamps(city, rng, frame, district_id=district_id, division=division, roads=roads, count=n_lamps)
    for k in range(spec.sweepers_per_district):
        city.devices.append(
            {
                "device_id": f"sw-{d}-{k}",
                "type": "sweeper",
                "region_id": district_id,
                "firmware": "3.2.0",
            }
        )


def _roads(
    city: City, frame: _Frame, district_id: str, x0: float, y0: float
) -> list[tuple[str, tuple[float, float], tuple[float, float], bool]]:
    """A lattice of segments between intersections; every other line is a main road."""
    lines = int(_DISTRICT_SIZE_M // _BLOCK_M)
    out = []
    for horizontal in (True, False):
        for i in range(1, lines):
            main = i % 2 == 1
            for j in range(lines):
                a = (j * _BLOCK_M, i * _BLOCK_M)
                b = ((j + 1) * _BLOCK_M, i * _BLOCK_M)
                if not horizontal:
                    a, b = (a[1], a[0]), (b[1], b[0])
                p, q = (x0 + a[0], y0 + a[1]), (x0 + b[0], y0 + b[1])
                segment_id = f"{district_id}-{'h' if horizontal else 'v'}{i}-{j}"
                road = f"{'East' if horizontal else 'North'} {i} {'Avenue' if main else 'Street'}"
                city.roads.append(
                    {
                        "segment_id": segment_id,
                        "name": f"{road}, district {district_id[1:]}",
                        "road_class": "main" if main else "secondary",
                        "region_id": district_id,
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [frame.to_lonlat(*p), frame.to_lonlat(*q)],
                        },
                        "length_m": _BLOCK_M,
                        "required_passes": 2 if main else 1,
                        "window_start": "00:00",
                        "window_end": "06:30",
                        "max_speed_kmh": 8.0,
                        "working_width_m": 3.0,
                    }
                )
                out.append((segment_id, p, q, main))
    return out


def _point_on(
    rng: np.random.Generator,
    roads: list[tuple[str, tuple[float, float], tuple[float, float], bool]],
    count: int,
    offset_m: float,
    main_only: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pool = [r for r in roads if r[3]] if main_only else roads
    idx = rng.integers(0, len(pool), count)
    t = rng.random(count)
    p = np.array([pool[i][1] for i in idx]).reshape(-1, 2)
    q = np.array([pool[i][2] for i in idx]).reshape(-1, 2)
    xy = p + (q - p) * t[:, None]
    side = rng.choice([-1.0, 1.0], count) * offset_m
    vertical = p[:, 0] == q[:, 0]
    xy[:, 0] += np.where(vertical, side, 0.0)
    xy[:, 1] += np.where(vertical, 0.0, side)
    return xy[:, 0], xy[:, 1], idx


def _covers(
    city: City,
    rng: np.random.Generator,
    frame: _Frame,
    *,
    district_id: str,
    division: str,
    roads: list[tuple[str, tuple[float, float], tuple[float, float], bool]],
    count: int,
) -> None:
    shares = np.array([c[2] for c in COVER_CATEGORIES])
    kinds = rng.choice(len(COVER_CATEGORIES), count, p=shares / shares.sum())
    xs, ys, _ = _point_on(rng, roads, count, offset_m=2.0)
    angles = np.round(rng.uniform(0.0, 3.0, count), 1)
    serials: dict[str, int] = {}
    for n in range(count):
        minor, category, _, owner_kind = COVER_CATEGORIES[kinds[n]]
        serials[minor] = serials.get(minor, 0) + 1
        code = f"{division}01{minor}{serials[minor]:06d}"
        lon, lat = frame.to_lonlat(float(xs[n]), float(ys[n]))
        owner = f"{district_id}-{owner_kind}" if owner_kind else None
        city.assets.append(
            {
                "code": code,
                "category": category,
                "name": f"{category.replace('_', ' ')} cover",
                "competent_unit_id": f"{district_id}-coordinating",
                "owner_unit_id": owner,
                "maintainer_unit_id": owner,
                "lat": lat,
                "lon": lon,
                "accuracy_class": "B",
                "region_id": _grid_of(district_id, float(xs[n]), float(ys[n]), city, frame),
                "properties": {"installed_angle_deg": float(angles[n])},
            }
        )
        city.devices.append(
            {
                "device_id": f"mh-{code}",
                "type": "manhole",
                "asset_code": code,
                "region_id": district_id,
                "firmware": "1.4.2",
            }
        )


def _lamps(
    city: City,
    rng: np.random.Generator,
    frame: _Frame,
    *,
    district_id: str,
    division: str,
    roads: list[tuple[str, tuple[float, float], tuple[float, float], bool]],
    count: int,
) -> None:
    if count == 0:
        return
    xs, ys, _ = _point_on(rng, roads, count, offset_m=6.0, main_only=True)
    order = np.lexsort((xs, ys))  # neighbours share a cabinet
    ratings = rng.choice([100.0, 150.0, 250.0], count, p=[0.5, 0.3, 0.2])
    for n, i in enumerate(order):
        cabinet = n // LAMPS_PER_CABINET
        cabinet_code = f"{division}0220{cabinet + 1:06d}"
        gateway = f"cab-{cabinet_code}"
        if n % LAMPS_PER_CABINET == 0:
            lon, lat = frame.to_lonlat(float(xs[i]), float(ys[i]))
            city.assets.append(
                {
                    "code": cabinet_code,
                    "category": "lighting_cabinet",
                    "name": "control cabinet",
                    "owner_unit_id": f"{district_id}-lighting",
                    "maintainer_unit_id": f"{district_id}-lighting",
                    "lat": lat,
                    "lon": lon,
                    "accuracy_class": "B",
                    "region_id": district_id,
                    "properties": {},
                }
            )
            city.devices.append(
                {
                    "device_id": gateway,
                    "type": "gateway",
                    "asset_code": cabinet_code,
                    "region_id": district_id,
                    "firmware": "2.0.1",
                }
            )
        code = f"{division}0201{n + 1:06d}"
        lon, lat = frame.to_lonlat(float(xs[i]), float(ys[i]))
        city.assets.append(
            {
                "code": code,
                "category": "street_lamp",
                "name": "street lamp",
                "owner_unit_id": f"{district_id}-lighting",
                "maintainer_unit_id": f"{district_id}-lighting",
                "lat": lat,
                "lon": lon,
                "accuracy_class": "B",
                "region_id": _grid_of(district_id, float(xs[i]), float(ys[i]), city, frame),
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
                "region_id": district_id,
                "firmware": "2.0.1",
            }
        )


def _grid_of(district_id: str, x: float, y: float, city: City, frame: _Frame) -> str:
    """The grid cell of a point (by the district's layout)."""
    d = int(district_id[1:])
    x0, y0 = _district_origins(city.spec.districts)[d]
    half, quarter = _DISTRICT_SIZE_M / 2, _DISTRICT_SIZE_M / 4
    rx = min(max(x - x0, 0.0), _DISTRICT_SIZE_M - 1e-6)
    ry = min(max(y - y0, 0.0), _DISTRICT_SIZE_M - 1e-6)
    street = int(rx // half) + 2 * int(ry // half)
    grid = int((rx % half) // quarter) + 2 * int((ry % half) // quarter)
    return f"{district_id}-s{street}-g{grid}"


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


def read_spec(folder: Path) -> CitySpec:
    """The spec a bundle was generated from."""
    manifest = json.loads((folder / "city.json").read_text(encoding="utf-8"))
    return CitySpec(**manifest["spec"])


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
