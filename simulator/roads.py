"""Real road networks for the city generator: GeoJSON lines or an OpenStreetMap extract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulator.city import RoadLine

#: OpenStreetMap highway values that are swept, and which of them count as main roads.
_SWEPT = frozenset(
    {
        "motorway_link",
        "trunk",
        "primary",
        "secondary",
        "tertiary",
        "unclassified",
        "residential",
        "living_street",
        "service",
    }
)
_MAIN = frozenset({"trunk", "primary", "secondary"})
#: Values of an "oneway" tag or property that make a road one way as drawn ("-1", drawn against
#: its traffic, is rare and taken as two-way).
_ONEWAY = frozenset({"yes", "true", "1", True})


class RoadFileError(ValueError):
    """A road file cannot be read; the message names the file and what is wrong."""


def load_roads(path: Path) -> list[RoadLine]:
    """Roads from GeoJSON (.geojson, .json) or OpenStreetMap (.osm, .pbf, .osm.pbf)."""
    name = path.name.lower()
    if name.endswith((".geojson", ".json")):
        return _from_geojson(path)
    if name.endswith((".osm", ".pbf", ".osm.bz2")):
        return _from_osm(path)
    msg = f"{path}: expected .geojson, .json, .osm or .osm.pbf"
    raise RoadFileError(msg)


def _road_class(properties: dict[str, Any]) -> str:
    explicit = properties.get("road_class") or properties.get("class")
    if explicit in ("main", "secondary"):
        return str(explicit)
    return "main" if properties.get("highway") in _MAIN else "secondary"


def _from_geojson(path: Path) -> list[RoadLine]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"{path}: {exc}"
        raise RoadFileError(msg) from None
    roads = []
    for number, feature in enumerate(document.get("features", []), start=1):
        geometry = feature.get("geometry") or {}
        properties = feature.get("properties") or {}
        if geometry.get("type") == "LineString":
            parts = [geometry["coordinates"]]
        elif geometry.get("type") == "MultiLineString":
            parts = geometry["coordinates"]
        else:
            continue
        for k, coordinates in enumerate(parts):
            if len(coordinates) < 2:
                continue
            line_id = properties.get("segment_id") or properties.get("id") or f"f{number}"
            roads.append(
                RoadLine(
                    name=str(properties.get("name") or f"road {number}"),
                    road_class=_road_class(properties),
                    coordinates=tuple((float(p[0]), float(p[1])) for p in coordinates),
                    line_id=f"{line_id}" if len(parts) == 1 else f"{line_id}.{k}",
                    oneway=properties.get("oneway") in _ONEWAY,
                )
            )
    if not roads:
        msg = f"{path}: no LineString features"
        raise RoadFileError(msg)
    return roads


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
            if not isinstance(way, osmium.osm.Way) or way.tags.get("highway") not in _SWEPT:
                continue
            coordinates = tuple((node.lon, node.lat) for node in way.nodes if node.location.valid())
            if len(coordinates) < 2:
                continue
            highway = way.tags.get("highway")
            roads.append(
                RoadLine(
                    name=way.tags.get("name") or f"{highway} {way.id}",
                    road_class="main" if highway in _MAIN else "secondary",
                    coordinates=coordinates,
                    line_id=f"osm{way.id}",
                    oneway=way.tags.get("oneway") in _ONEWAY
                    or way.tags.get("junction") in ("roundabout", "circular"),
                )
            )
    except RuntimeError as exc:
        msg = f"{path}: {exc}"
        raise RoadFileError(msg) from None
    if not roads:
        msg = f"{path}: no highways to sweep"
        raise RoadFileError(msg)
    return roads
