"""Fuzzing the road import's readers: any map is road lines or a RoadFileError, any plans file
is plans or a PlansError, never a crash; the lines always split into segments."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import roadmaps
from devices.roadmap import PlansError, load_plans
from tests.unit.test_registry_fuzz import json_values

numbers = st.one_of(
    st.floats(min_value=-180, max_value=180), st.integers(-200, 200), st.text(max_size=3)
)
positions = st.one_of(st.lists(numbers, min_size=0, max_size=3), json_values)
geometries = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["LineString", "MultiLineString", "Point", "Polygon"]),
        "coordinates": st.one_of(
            st.lists(positions, max_size=6),
            st.lists(st.lists(positions, max_size=4), max_size=3),
            json_values,
        ),
    }
)
features = st.fixed_dictionaries(
    {
        "type": st.just("Feature"),
        "properties": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "oneway": st.one_of(
                        st.sampled_from(["yes", "-1", "no", 1, True, None]), json_values
                    ),
                    "highway": st.sampled_from(["primary", "residential", 3]),
                    "id": json_values,
                    "name": json_values,
                },
            ),
        ),
        "geometry": st.one_of(st.none(), geometries, json_values),
    }
)
documents = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.just("FeatureCollection"), "features": st.lists(features, max_size=6)}
    ),
)


def read(data: bytes, name: str = "roads.geojson") -> list[roadmaps.RoadLine] | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return roadmaps.read(path)
        except roadmaps.RoadFileError as exc:
            refusal = str(exc)
    assert str(path) in refusal  # the error names the file
    return None


@settings(max_examples=400)
@given(document=documents)
def test_any_geojson_is_road_lines_or_a_road_file_error(document: Any) -> None:
    lines = read(json.dumps(document).encode())
    if lines is None:
        return
    assert lines  # an empty map is refused
    for line in lines:
        assert len(line.coordinates) >= 2
        assert all(a != b for a, b in zip(line.coordinates, line.coordinates[1:], strict=False))
        assert all(math.isfinite(v) for p in line.coordinates for v in p)
    pieces = roadmaps.split_at_junctions(lines, min_length_m=20.0)
    # every position of the map is in a segment still: nothing is lost by the split
    kept = {p for piece in pieces for p in piece.coordinates}
    assert kept == {p for line in lines for p in line.coordinates}


@settings(max_examples=100)
@given(data=st.binary(max_size=300))
def test_any_bytes_are_road_lines_or_a_road_file_error(data: bytes) -> None:
    for name in ("roads.geojson", "roads.osm"):
        lines = read(data, name)
        assert lines is None or all(len(line.coordinates) >= 2 for line in lines)


toml_values = st.one_of(
    st.integers(-5, 40).map(str),
    st.floats(-1, 50, allow_nan=False).map(repr),
    st.sampled_from(['"00:00"', "06:30:00", '"25:00"', '"x"', "true", "[1, 2]", "{}"]),
)
tables = st.sampled_from(["[default]", "[classes.primary]", "[classes.residential]", "[lanes]"])
keys = st.sampled_from(
    ["required_passes", "window_start", "window_end", "max_speed_kmh", "working_width_m", "x"]
)
plans_files = st.lists(
    st.tuples(tables, st.lists(st.tuples(keys, toml_values), max_size=4)), max_size=4
).map(
    lambda parts: "\n".join(
        table + "\n" + "\n".join(f"{k} = {v}" for k, v in dict(items).items())
        for table, items in parts
    )
)


@settings(max_examples=300)
@given(text=st.one_of(plans_files, st.text(max_size=80)))
def test_any_plans_file_is_plans_or_a_plans_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plans.toml"
        path.write_text(text, encoding="utf-8")
        try:
            plans = load_plans(path)
        except PlansError as exc:
            refusal = str(exc)
        else:
            refusal = ""
    if refusal:
        assert str(path) in refusal
        return
    assert plans
    for plan in plans.values():
        assert 0 <= plan.required_passes <= 24
        assert 0 < plan.max_speed_kmh <= 30
