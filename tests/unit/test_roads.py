"""Road networks from a map: GeoJSON and OpenStreetMap extracts, and bundles read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import roadmaps
from simulator.city import CitySpec, generate, read_bundle, write_bundle
from simulator.fleet import RunOptions, simulate
from simulator.scenario import Scenario

#: Shifu Road (ways 10 and 14, one street over a bridge), a residential street (11), a one-way
#: lane drawn against its traffic (15), a footway and a canal.
TINY = Path(__file__).resolve().parents[1] / "data" / "tiny.osm"


def test_openstreetmap_extract_gives_the_roads_vehicles_drive() -> None:
    roads = roadmaps.read(TINY)
    assert [(r.line_id, r.road_class, len(r.coordinates), r.oneway) for r in roads] == [
        ("osm10", "primary", 3, False),
        ("osm11", "residential", 3, False),
        ("osm14", "primary", 2, False),
        ("osm15", "residential", 2, True),
    ]
    assert roads[0].name == "Shifu Road"
    # oneway=-1: traffic runs from node 2 to node 8, against the way's drawing
    assert roads[3].coordinates == ((123.406, 41.8), (123.406, 41.796))


def test_roads_are_joined_through_tag_changes_and_cut_at_junctions() -> None:
    segments = roadmaps.split_at_junctions(roadmaps.read(TINY))
    # Shifu Road is one street over its bridge (ways 10 and 14 meet where nothing else does)
    # and is cut where the one-way lane 15 joins it (node 2); way 11 meets it at node 1, an end
    # of both, and has another class: it stays a segment of its own
    assert {s.line_id: s.coordinates for s in segments} == {
        "osm10-0": ((123.4, 41.8), (123.406, 41.8)),
        "osm10-1": ((123.406, 41.8), (123.412, 41.8), (123.418, 41.8)),
        "osm11": ((123.4, 41.8), (123.4, 41.804), (123.4, 41.808)),
        "osm15": ((123.406, 41.8), (123.406, 41.796)),
    }
    # a cut that would leave less than the minimum is not made: node 2 is ~500 m along
    lengths = {s.line_id: round(roadmaps.length_m(s.coordinates)) for s in segments}
    assert lengths["osm10-0"] == pytest.approx(498, abs=2)
    kept = roadmaps.split_at_junctions(roadmaps.read(TINY), min_length_m=600)
    assert {s.line_id for s in kept} == {"osm10", "osm11", "osm15"}


def test_one_way_lines_meeting_head_to_head_are_not_joined() -> None:
    a = roadmaps.RoadLine("a", "Lane", "residential", ((0.0, 0.0), (0.001, 0.0)), oneway=True)
    b = roadmaps.RoadLine("b", "Lane", "residential", ((0.002, 0.0), (0.001, 0.0)), oneway=True)
    c = roadmaps.RoadLine("c", "Lane", "residential", ((0.001, 0.0), (0.002, 0.0)), oneway=True)
    assert [s.line_id for s in roadmaps.split_at_junctions([a, b])] == ["a", "b"]
    (joined,) = roadmaps.split_at_junctions([a, c])
    assert joined.coordinates == ((0.0, 0.0), (0.001, 0.0), (0.002, 0.0))


def test_geojson_lines_and_a_city_on_them(tmp_path: Path) -> None:
    path = tmp_path / "roads.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"name": "Beiling Street", "highway": "primary"},
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[123.40, 41.80], [123.41, 41.80], [123.42, 41.80]],
                        },
                    },
                    {
                        "type": "Feature",
                        "properties": {"name": "Lane", "id": "L1"},
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[123.40, 41.80], [123.40, 41.803]],
                        },
                    },
                    {
                        "type": "Feature",
                        "properties": {"name": "Cross Street", "oneway": "yes"},
                        "geometry": {
                            "type": "LineString",
                            "coordinates": [[123.41, 41.80], [123.41, 41.797]],
                        },
                    },
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [123.4, 41.8]},
                    },
                ],
            }
        )
    )
    lines = roadmaps.read(path)
    assert [(r.road_class, r.oneway) for r in lines] == [
        ("primary", False),
        ("", False),
        ("", True),
    ]
    city = generate(CitySpec(seed=2, districts=2, covers=50, lamps=20), lines)
    # Beiling Street is cut where Cross Street meets it; the lane meets it at their ends and
    # is of another class, so it is a segment of its own; the halves lie in two districts
    assert {
        (r["segment_id"], r["road_class"], r["oneway"], r["region_id"]) for r in city.roads
    } == {
        ("f1-0", "main", False, "d0"),
        ("f1-1", "main", False, "d1"),
        ("L1", "secondary", False, "d0"),
        ("f3", "secondary", True, "d0"),
    }
    assert sum(1 for d in city.devices if d["type"] == "manhole") == 50
    lamp_districts = {d["region_id"] for d in city.devices if d["type"] == "light"}
    assert lamp_districts
    main_districts = {r["region_id"] for r in city.roads if r["road_class"] == "main"}
    assert lamp_districts <= main_districts | {r["region_id"] for r in city.roads}
    assert generate(CitySpec(seed=2, districts=2, covers=50, lamps=20), lines) == city


def test_bad_road_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "none.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(roadmaps.RoadFileError, match="no LineString"):
        roadmaps.read(empty)
    with pytest.raises(roadmaps.RoadFileError, match=r"expected \.geojson"):
        roadmaps.read(tmp_path / "roads.shp")


def test_a_bundle_read_back_runs_like_the_city_it_was_written_from(tmp_path: Path) -> None:
    city = generate(CitySpec(seed=5, covers=40, lamps=40))
    write_bundle(city, tmp_path)
    options = RunOptions(start=1_764_086_100.0, duration_s=900, seed=1)
    direct = simulate(city, Scenario(rates={"lamp_out": 0.1}), options)
    reread = simulate(read_bundle(tmp_path), Scenario(rates={"lamp_out": 0.1}), options)
    assert direct.publications
    assert direct.faults  # lamps out at night show
    assert [p.payload for p in reread.publications] == [p.payload for p in direct.publications]
    assert reread.faults == direct.faults
