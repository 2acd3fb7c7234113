"""Street maps: road lines read from GeoJSON or an OpenStreetMap extract, split at junctions.

Both the registry's road import (``cityops roads import``) and the simulator's map cities
read maps here, so a simulated city's segments are the ones an operator would import.

- A line's class is the map's own: OpenStreetMap's ``highway`` value (``primary``,
  ``residential``, ...), a GeoJSON feature's ``road_class``, ``class`` or ``highway``.
- One way: ``oneway=yes`` (or true, 1) and roundabouts run as drawn; ``oneway=-1`` runs
  against the drawing, so its line is reversed.
- ``split_at_junctions``: a line is cut at every interior vertex it shares with another
  line (or with itself, a loop), so segments run from junction to junction, as road-chief
  segments do. Shared means the very same position: OpenStreetMap ways share their nodes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

#: OpenStreetMap highway values that vehicles drive on (what a sweeper could sweep).
DRIVEN = frozenset(
    {
        "motorway",
        "motorway_link",
        "trunk",
        "trunk_link",
        "primary",
        "primary_link",
        "secondary",
        "secondary_link",
        "tertiary",
        "tertiary_link",
        "unclassified",
        "residential",
        "living_street",
        "pedestrian",
        "service",
        "road",
    }
)
_ONEWAY = frozenset({"yes", "true", "1", True})
_AGAINST = frozenset({"-1", -1, "reverse"})

Position = tuple[float, float]
#: Metres per degree of latitude (WGS-84 mean); longitude scales by cos(latitude).
_M_PER_DEG = 111_320.0


@dataclass(frozen=True, slots=True)
class RoadLine:
    """A road from a map: (lon, lat) positions in the way traffic runs if it is one way."""

    line_id: str
    name: str
    road_class: str
    coordinates: tuple[Position, ...]
    oneway: bool = False


class RoadFileError(ValueError):
    """A road file cannot be read; the message names the file and what is wrong."""


def read(path: Path) -> list[RoadLine]:
    """The roads of a GeoJSON (.geojson, .json) or OpenStreetMap (.osm, .osm.pbf) file."""
    name = path.name.lower()
    if name.endswith((".geojson", ".json")):
        return _from_geojson(path)
    if name.endswith((".osm", ".pbf", ".osm.bz2")):
        return _from_osm(path)
    msg = f"{path}: expected .geojson, .json, .osm or .osm.pbf"
    raise RoadFileError(msg)


def split_at_junctions(lines: Sequence[RoadLine], min_length_m: float = 0.0) -> list[RoadLine]:
    """The lines as segments from junction to junction.

    Lines meeting end to end where no other line touches, of the same class, name and
    direction, are joined first (a map splits a street wherever its tags change); then each
    line is cut at the vertices where a third line touches it (or it touches itself). A cut is
    made where both sides of it are at least ``min_length_m`` long (a shorter piece stays with
    its neighbour). A piece keeps the id of its (first) line with ``-k`` appended (k from 0)
    when it was cut, the id alone when not.
    """
    degree: Counter[Position] = Counter()
    for line in lines:
        degree.update(line.coordinates)
        degree.update(line.coordinates[1:-1])  # an interior vertex joins two pieces of road
    pieces = []
    for line in _joined(lines, degree):
        along = _distances_m(line.coordinates)
        cuts = [0]
        for i in range(1, len(line.coordinates) - 1):
            junction = degree[line.coordinates[i]] > 2
            if junction and along[i] - along[cuts[-1]] >= min_length_m:
                cuts.append(i)
        while len(cuts) > 1 and along[-1] - along[cuts[-1]] < min_length_m:
            cuts.pop()  # the tail is too short: the last piece runs to the line's end
        if len(cuts) == 1:
            pieces.append(line)
            continue
        bounds = [*cuts, len(line.coordinates) - 1]
        pieces.extend(
            replace(line, line_id=f"{line.line_id}-{k}", coordinates=line.coordinates[a : b + 1])
            for k, (a, b) in enumerate(itertools.pairwise(bounds))
        )
    return pieces


def _joined(lines: Sequence[RoadLine], degree: Counter[Position]) -> list[RoadLine]:
    """Lines joined end to end through the positions where only they meet (the docstring above)."""
    ends: dict[Position, list[int]] = {}
    for i, line in enumerate(lines):
        for p in {line.coordinates[0], line.coordinates[-1]}:
            ends.setdefault(p, []).append(i)

    def onward(i: int, at: Position, used: set[int]) -> int | None:
        """The line that continues line ``i`` through its end ``at``, if one does."""
        if degree[at] != 2 or len(ends[at]) != 2:
            return None
        j = next(k for k in ends[at] if k != i)
        a, b = lines[i], lines[j]
        if j in used or (a.road_class, a.name, a.oneway) != (b.road_class, b.name, b.oneway):
            return None
        if a.oneway and (a.coordinates[-1] == at) != (b.coordinates[0] == at):
            return None  # one way lines meet head to head or tail to tail
        return j

    used: set[int] = set()
    out = []
    for i, line in enumerate(lines):
        if i in used:
            continue
        used.add(i)
        coordinates = list(line.coordinates)
        for forward in (True, False):
            last = i
            while (j := onward(last, coordinates[-1 if forward else 0], used)) is not None:
                used.add(j)
                more = lines[j].coordinates
                at = coordinates[-1 if forward else 0]
                if forward:
                    coordinates += more[1:] if more[0] == at else more[-2::-1]
                else:
                    coordinates[:0] = more[:-1] if more[-1] == at else more[:0:-1]
                last = j
        out.append(replace(line, coordinates=tuple(coordinates)))
    return out


def length_m(coordinates: Sequence[Position]) -> float:
    """A polyline's length in metres (equirectangular: good to 0.1 % over a city)."""
    return _distances_m(coordinates)[-1]


def _distances_m(coordinates: Sequence[Position]) -> list[float]:
    """The distance along a polyline to each of its positions, in metres."""
    out = [0.0]
    for (lon0, lat0), (lon1, lat1) in itertools.pairwise(coordinates):
        east = (lon1 - lon0) * math.cos(math.radians((lat0 + lat1) / 2))
        out.append(out[-1] + math.hypot(east, lat1 - lat0) * _M_PER_DEG)
    return out


def _oriented(positions: tuple[Position, ...], oneway: object) -> tuple[tuple[Position, ...], bool]:
    """The positions in the way traffic runs, and whether it runs only that way."""
    if not isinstance(oneway, str | int):  # a map's list or object: not a one-way tag
        return positions, False
    if oneway in _AGAINST:
        return positions[::-1], True
    return positions, oneway in _ONEWAY


def _distinct(positions: tuple[Position, ...]) -> tuple[Position, ...]:
    """Without repeated consecutive positions (a zero-length piece has no direction)."""
    return tuple(p for k, p in enumerate(positions) if k == 0 or p != positions[k - 1])


def _from_geojson(path: Path) -> list[RoadLine]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path}: {exc}"
        raise RoadFileError(msg) from None
    features = document.get("features") if isinstance(document, dict) else None
    roads = []
    for number, feature in enumerate(features if isinstance(features, list) else [], start=1):
        geometry = _member(feature, "geometry")
        properties = _member(feature, "properties")
        kind, drawn = geometry.get("type"), geometry.get("coordinates")
        if kind not in ("LineString", "MultiLineString"):
            continue
        parts = [drawn] if kind == "LineString" else drawn
        if not isinstance(parts, list) or not all(_is_line(part) for part in parts):
            msg = f"{path}: feature {number}: a {kind} needs lists of [lon, lat] positions"
            raise RoadFileError(msg)
        line_id = str(properties.get("segment_id") or properties.get("id") or f"f{number}")
        for k, part in enumerate(parts):
            drawn_positions = tuple((float(p[0]), float(p[1])) for p in part)
            coordinates, oneway = _oriented(drawn_positions, properties.get("oneway"))
            coordinates = _distinct(coordinates)
            if len(coordinates) < 2:
                continue
            roads.append(
                RoadLine(
                    line_id=line_id if len(parts) == 1 else f"{line_id}.{k}",
                    name=str(properties.get("name") or f"road {number}"),
                    road_class=str(_class(properties)),
                    coordinates=coordinates,
                    oneway=oneway,
                )
            )
    if not roads:
        msg = f"{path}: no LineString features"
        raise RoadFileError(msg)
    return roads


def _member(feature: object, key: str) -> dict[str, Any]:
    """A feature's geometry or properties object ({} when missing or not an object)."""
    value = feature.get(key) if isinstance(feature, dict) else None
    return value if isinstance(value, dict) else {}


def _is_line(part: object) -> bool:
    """Whether ``part`` is a list of [lon, lat, ...] positions of numbers on the globe."""
    return isinstance(part, list) and all(
        isinstance(p, list)
        and len(p) >= 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in p[:2])
        and -180 <= p[0] <= 180
        and -90 <= p[1] <= 90
        for p in part
    )


def _class(properties: dict[str, Any]) -> object:
    return (
        properties.get("road_class") or properties.get("class") or properties.get("highway") or ""
    )


def _from_osm(path: Path) -> list[RoadLine]:
    import osmium  # only for map extracts

    roads = []
    try:
        processor = (
            osmium.FileProcessor(str(path))
            .with_locations()
            .with_filter(osmium.filter.KeyFilter("highway"))
        )
        for way in processor:
            if not isinstance(way, osmium.osm.Way):
                continue
            highway = way.tags.get("highway")
            if highway not in DRIVEN or way.tags.get("area") == "yes":
                continue
            located = tuple((n.lon, n.lat) for n in way.nodes if n.location.valid())
            roundabout = way.tags.get("junction") in ("roundabout", "circular")
            coordinates, oneway = _oriented(
                located, "yes" if roundabout else way.tags.get("oneway")
            )
            coordinates = _distinct(coordinates)
            if len(coordinates) < 2:
                continue
            roads.append(
                RoadLine(
                    line_id=f"osm{way.id}",
                    name=way.tags.get("name") or f"{highway} {way.id}",
                    road_class=str(highway),
                    coordinates=coordinates,
                    oneway=oneway,
                )
            )
    except RuntimeError as exc:
        msg = f"{path}: {exc}"
        raise RoadFileError(msg) from None
    if not roads:
        msg = f"{path}: no highways"
        raise RoadFileError(msg)
    return roads
