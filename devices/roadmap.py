"""Road segments from a street map, with sweeping plans by road class (``cityops roads import``).

A map (GeoJSON lines or an OpenStreetMap extract, ``roadmaps``) becomes road segments:

1. only the lines of a class the plans file names are kept (the others are not swept);
2. they are split at their junctions, keeping every piece at least ``min_length_m`` long (a
   few metres of road between two junctions cannot be judged under 5-10 m of GPS noise: it
   stays with its neighbour, and a whole line shorter than that is left out);
3. each segment lies in the deepest region (grid, else street, else district) whose boundary
   covers its midpoint, which routes its cases to that district's sanitation unit; a segment
   outside every region is left out;
4. the segments are stored like ``cityops roads`` rows of a bundle: all of them or none.

The plans file (TOML) gives ``[default]`` values and one ``[classes.NAME]`` table per swept
class overriding them: ``required_passes``, ``window_start``, ``window_end`` (local
"HH:MM"), ``max_speed_kmh``, ``working_width_m``.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import psycopg
import shapely
from pydantic import Field, ValidationError
from shapely.geometry import shape

import roadmaps
from devices.registry import ImportReport, store_roads
from sections import Section

#: Region levels from the deepest: a segment takes the first that covers its midpoint.
_DEEPEST_FIRST = ("grid", "street", "district")


class SweepPlan(Section):
    """How one class of road is swept: passes a night, in a window, at most this fast."""

    required_passes: int = Field(default=1, ge=0, le=24)
    window_start: time | None = None
    window_end: time | None = None
    max_speed_kmh: float = Field(default=8.0, gt=0, le=30)
    working_width_m: float = Field(default=3.0, gt=0, le=10)


class PlansError(ValueError):
    """A plans file cannot be used; the message names the file and each problem."""


def load_plans(path: Path) -> dict[str, SweepPlan]:
    """The plans file's plan per road class (its ``[default]`` under each class's own)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: {exc}"
        raise PlansError(msg) from None
    problems = [f"unknown table [{key}]" for key in document if key not in ("default", "classes")]
    default, classes = document.get("default", {}), document.get("classes", {})
    if not isinstance(default, dict) or not isinstance(classes, dict) or not classes:
        problems.append("expected a [default] table and at least one [classes.NAME] table")
        classes = {}
    plans = {}
    for name, own in classes.items():
        try:
            plans[name] = SweepPlan.model_validate({**default, **own})
        except ValidationError as exc:
            problems.extend(
                f"classes.{name}.{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}"
                for e in exc.errors()
            )
        except TypeError:
            problems.append(f"classes.{name}: expected a table")
    if problems:
        msg = f"{path}: " + "; ".join(problems)
        raise PlansError(msg)
    return plans


@dataclass(frozen=True, slots=True)
class MapImportReport:
    """What a map import stored, and how many map lines or segments it left out and why."""

    stored: ImportReport
    left_out: dict[str, int]


def import_road_map(
    conn: psycopg.Connection,
    path: Path,
    plans: dict[str, SweepPlan],
    *,
    min_length_m: float = 20.0,
) -> MapImportReport:
    """Import a street map's segments of the planned classes (the module's docstring)."""
    lines = roadmaps.read(path)
    left_out: Counter[str] = Counter()
    planned = []
    for line in lines:
        if line.road_class in plans:
            planned.append(line)
        else:
            left_out[f"lines of class {line.road_class or '(none)'!s} (no plan)"] += 1
    segments = []
    for piece in roadmaps.split_at_junctions(planned, min_length_m):
        if roadmaps.length_m(piece.coordinates) < min_length_m:
            left_out[f"lines shorter than {min_length_m:g} m"] += 1
        else:
            segments.append(piece)
    regions = _regions_of(conn, segments)
    rows = []
    for segment, region in zip(segments, regions, strict=True):
        if region is None:
            left_out["segments outside every region"] += 1
            continue
        plan = plans[segment.road_class]
        rows.append((segment.line_id, _row(segment, region, plan)))
    if not rows:
        msg = f"{path}: no segment to import ({_summary(left_out)})"
        raise ValueError(msg)
    return MapImportReport(store_roads(conn, rows, path), dict(sorted(left_out.items())))


def _row(segment: roadmaps.RoadLine, region: str, plan: SweepPlan) -> dict[str, Any]:
    return {
        "segment_id": segment.line_id,
        "name": segment.name,
        "road_class": segment.road_class,
        "region_id": region,
        "geometry": {"type": "LineString", "coordinates": [list(p) for p in segment.coordinates]},
        "length_m": round(roadmaps.length_m(segment.coordinates), 1),
        "oneway": segment.oneway,
        **plan.model_dump(),
    }


def _summary(left_out: Counter[str]) -> str:
    return ", ".join(f"{n} {why}" for why, n in left_out.items()) or "the map is empty"


def _regions_of(conn: psycopg.Connection, segments: list[roadmaps.RoadLine]) -> list[str | None]:
    """The deepest region covering each segment's midpoint, None outside every region."""
    found: list[str | None] = [None] * len(segments)
    if not segments:
        return found
    lines = [shapely.LineString(s.coordinates) for s in segments]
    middles = shapely.line_interpolate_point(lines, 0.5, normalized=True)
    for level in reversed(_DEEPEST_FIRST):  # deeper levels overwrite
        rows = conn.execute(
            "select region_id, boundary from regions where level = %s and boundary is not null "
            "order by region_id",
            (level,),
        ).fetchall()
        if not rows:
            continue
        tree = shapely.STRtree([shape(boundary) for _, boundary in rows])
        points, areas = tree.query(middles, predicate="covered_by")
        for point, area in zip(points.tolist(), areas.tolist(), strict=True):
            found[point] = str(rows[area][0])
    return found
