"""Road networks from a map: GeoJSON and OpenStreetMap extracts, and bundles read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.city import CitySpec, generate, read_bundle, write_bundle
from simulator.fleet import RunOptions, simulate
from simulator.roads import RoadFileError, load_roads
from simulator.scenario import Scenario

OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="cityops test">
  <node id="1" lat="41.8000" lon="123.4000"/>
  <node id="2" lat="41.8000" lon="123.4060"/>
  <node id="3" lat="41.8000" lon="123.4120"/>
  <node id="4" lat="41.8040" lon="123.4000"/>
  <node id="5" lat="41.8080" lon="123.4000"/>
  <node id="6" lat="41.8040" lon="123.4120"/>
  <way id="10"><nd ref="1"/><nd ref="2"/><nd ref="3"/>
    <tag k="highway" v="primary"/><tag k="name" v="Shifu Road"/></way>
  <way id="11"><nd ref="1"/><nd ref="4"/><nd ref="5"/>
    <tag k="highway" v="residential"/></way>
  <way id="12"><nd ref="4"/><nd ref="6"/><tag k="highway" v="footway"/></way>
  <way id="13"><nd ref="3"/><nd ref="6"/><tag k="waterway" v="canal"/></way>
</osm>
"""


def test_openstreetmap_extract_gives_swept_highways_only(tmp_path: Path) -> None:
    path = tmp_path / "tiny.osm"
    path.write_text(OSM)
    roads = load_roads(path)
    assert [(r.line_id, r.road_class, len(r.coordinates)) for r in roads] == [
        ("osm10", "main", 3),
        ("osm11", "secondary", 3),
    ]
    assert roads[0].name == "Shifu Road"


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
                            "coordinates": [[123.40, 41.80], [123.40, 41.81]],
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
    lines = load_roads(path)
    assert [r.road_class for r in lines] == ["main", "secondary"]
    city = generate(CitySpec(seed=2, districts=2, covers=50, lamps=20), lines)
    assert {r["segment_id"] for r in city.roads} == {"f1-0", "f1-1", "L1-0"}
    assert sum(1 for d in city.devices if d["type"] == "manhole") == 50
    lamp_districts = {d["region_id"] for d in city.devices if d["type"] == "light"}
    assert lamp_districts
    main_districts = {r["region_id"] for r in city.roads if r["road_class"] == "main"}
    assert lamp_districts <= main_districts | {r["region_id"] for r in city.roads}
    assert generate(CitySpec(seed=2, districts=2, covers=50, lamps=20), lines) == city


def test_bad_road_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "none.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(RoadFileError, match="no LineString"):
        load_roads(empty)
    with pytest.raises(RoadFileError, match=r"expected \.geojson"):
        load_roads(tmp_path / "roads.shp")


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
