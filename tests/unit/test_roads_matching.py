"""Map matching and coverage of sweeper tracks on constructed roads, without a database."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import roadmaps
from scenes import roads
from scenes.roads import MatchRules, Rules, Segment, Track

LON0, LAT0 = 123.43, 41.80
M_PER_DEG = 111_320.0
COS = math.cos(math.radians(LAT0))
NOISE_M = 5.0


def lonlat(x: float, y: float) -> tuple[float, float]:
    """A point ``x`` m east and ``y`` m north of the origin."""
    return LON0 + x / (M_PER_DEG * COS), LAT0 + y / M_PER_DEG


def road(segment_id: str, *points: tuple[float, float], oneway: bool = False) -> Segment:
    return Segment(segment_id, [lonlat(x, y) for x, y in points], oneway=oneway)


def drive(
    path: list[tuple[float, float]], speed_kmh: float = 5.0, seed: int = 1, noise_m: float = NOISE_M
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fix a second along the polyline ``path`` (metres) with noise: ts, lon, lat, heading."""
    rng = np.random.default_rng(seed)
    xy, headings = [], []
    step = speed_kmh / 3.6
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(length / step))
        heading = math.degrees(math.atan2(x1 - x0, y1 - y0)) % 360
        for k in range(n):
            f = k / n
            xy.append((x0 + (x1 - x0) * f, y0 + (y1 - y0) * f))
            headings.append(heading)
    pts = np.array(xy) + rng.normal(0, noise_m, (len(xy), 2))
    lon = LON0 + pts[:, 0] / (M_PER_DEG * COS)
    lat = LAT0 + pts[:, 1] / M_PER_DEG
    return np.arange(len(pts), dtype=np.float64), lon, lat, np.array(headings)


def matched_ids(network: roads.Network, lon, lat, heading) -> list[str]:
    m = roads.match(network, lon, lat, heading, MatchRules())
    return [network.segment_ids[s] if s >= 0 else "-" for s in m.segment]


def test_parallel_roads_15_m_apart_keep_the_track_on_its_own_road() -> None:
    network = roads.build([road("a", (0, 0), (400, 0)), road("b", (0, 15), (400, 15))])
    for seed in range(5):
        _, lon, lat, heading = drive([(0, 0), (400, 0)], seed=seed)
        assert set(matched_ids(network, lon, lat, heading)) == {"a"}
        _, lon, lat, heading = drive([(400, 15), (0, 15)], seed=seed)
        assert set(matched_ids(network, lon, lat, heading)) == {"b"}


def test_a_track_through_a_crossing_stays_on_its_road() -> None:
    network = roads.build(
        [
            road("west", (-200, 0), (0, 0)),
            road("east", (0, 0), (200, 0)),
            road("south", (0, -200), (0, 0)),
            road("north", (0, 0), (0, 200)),
        ]
    )
    _, lon, lat, heading = drive([(-200, 0), (200, 0)])
    ids = matched_ids(network, lon, lat, heading)
    assert set(ids) == {"west", "east"}
    # in order: west until the crossing, east after it
    assert ids == sorted(ids, key=lambda s: s == "east")


def test_a_u_turn_is_two_passes_of_one_road() -> None:
    network = roads.build([road("a", (0, 0), (200, 0)), road("b", (0, 40), (200, 40))])
    ts, lon, lat, heading = drive([(0, 0), (200, 0), (0, 0)])
    m = roads.match(network, lon, lat, heading, MatchRules())
    assert set(m.segment.tolist()) == {0}
    swept = roads.coverage(network, sweeping(ts, m), rules_for(network, len(ts)))
    assert swept.passes.tolist() == [2, 0]
    assert roads.segment_coverage(network, swept.covered).tolist() == [1.0, 0.0]


def test_a_dual_carriageway_is_matched_by_direction() -> None:
    network = roads.build(
        [
            road("eastbound", (0, 0), (400, 0), oneway=True),
            road("westbound", (400, 10), (0, 10), oneway=True),
        ]
    )
    _, lon, lat, heading = drive([(0, 0), (400, 0)])
    assert set(matched_ids(network, lon, lat, heading)) == {"eastbound"}
    _, lon, lat, heading = drive([(400, 10), (0, 10)])
    assert set(matched_ids(network, lon, lat, heading)) == {"westbound"}


def test_a_roundabout_is_driven_round_and_its_approaches_are_not() -> None:
    circle = [
        (25 * math.cos(math.radians(a)), 25 * math.sin(math.radians(a))) for a in range(0, 361, 10)
    ]
    network = roads.build(
        [
            road("ring", *circle, oneway=True),  # anticlockwise
            road("east-arm", (25, 0), (200, 0)),
            road("north-arm", (0, 25), (0, 200)),
        ]
    )
    # in on the east arm, once round (anticlockwise), out on the north arm
    path = [(200, 0), (25, 0), *circle[1:], *circle[1:10], (0, 200)]
    _, lon, lat, heading = drive(path, seed=3)
    ids = matched_ids(network, lon, lat, heading)
    on_ring = [i for i, (x, y) in enumerate(_path_points(path)) if math.hypot(x, y) < 24]
    assert ids[0] == "east-arm"
    assert ids[-1] == "north-arm"
    assert sum(ids[i] == "ring" for i in on_ring) >= 0.95 * len(on_ring)


def _path_points(path: list[tuple[float, float]]) -> list[tuple[float, float]]:
    step = 5.0 / 3.6
    out = []
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n) for k in range(n)]
    return out


def sweeping(ts: np.ndarray, matched: roads.Matched, speed_kmh: float = 5.0) -> Track:
    return Track(ts, np.full(len(ts), speed_kmh), np.ones(len(ts), dtype=bool), matched)


def rules_for(network: roads.Network, fixes: int) -> Rules:
    return Rules(
        max_speed_kmh=np.full(len(network.segment_ids), 8.0), in_window=np.ones(fixes, dtype=bool)
    )


@pytest.mark.parametrize(("gap_s", "covered"), [(20, True), (120, False)])
def test_a_short_gps_gap_is_interpolated_and_a_long_one_covers_nothing(
    gap_s: int, covered: bool
) -> None:
    network = roads.build([road("a", (0, 0), (300, 0))])
    ts, lon, lat, heading = drive([(0, 0), (300, 0)], noise_m=0.5)
    # no fix from 100 m on for gap_s seconds (5 km/h: 1.39 m a second)
    gone = (ts >= 72) & (ts < 72 + gap_s)
    keep = ~gone
    ts, lon, lat, heading = ts[keep], lon[keep], lat[keep], heading[keep]
    m = roads.match(network, lon, lat, heading, MatchRules())
    swept = roads.coverage(network, sweeping(ts, m), rules_for(network, len(ts)))
    middle = network.first_cell[0] + int((100 + gap_s * 1.39 / 2) / network.cell_m)
    assert (middle in swept.covered) is covered


def test_too_fast_or_brushes_up_sweeps_nothing_and_is_counted() -> None:
    network = roads.build([road("a", (0, 0), (300, 0))])
    ts, lon, lat, heading = drive([(0, 0), (300, 0)], speed_kmh=13.0)
    m = roads.match(network, lon, lat, heading, MatchRules())
    fast = roads.coverage(network, sweeping(ts, m, speed_kmh=13.0), rules_for(network, len(ts)))
    assert fast.covered.tolist() == []
    assert (fast.passes.tolist(), fast.fast_passes.tolist()) == ([0], [1])
    assert fast.too_fast_s == pytest.approx(len(ts) - 1)
    ts, lon, lat, heading = drive([(0, 0), (300, 0)])
    m = roads.match(network, lon, lat, heading, MatchRules())
    up = Track(ts, np.full(len(ts), 5.0), np.zeros(len(ts), dtype=bool), m)
    idle = roads.coverage(network, up, rules_for(network, len(ts)))
    assert idle.covered.tolist() == []
    assert (idle.passes.tolist(), idle.idle_passes.tolist()) == ([0], [1])


def test_fixes_far_from_every_road_match_nothing() -> None:
    network = roads.build([road("a", (0, 0), (300, 0))])
    _, lon, lat, heading = drive([(0, 100), (300, 100)], noise_m=1.0)
    assert set(matched_ids(network, lon, lat, heading)) == {"-"}


@pytest.mark.parametrize(("speed_kmh", "valid"), [(8.3, True), (9.0, False)])
def test_a_pass_at_the_limit_within_gps_noise_sweeps_and_one_beyond_does_not(
    speed_kmh: float, valid: bool
) -> None:
    network = roads.build([road("a", (0, 0), (300, 0))])
    ts, lon, lat, heading = drive([(0, 0), (300, 0)], speed_kmh=speed_kmh)
    m = roads.match(network, lon, lat, heading, MatchRules())
    swept = roads.coverage(
        network, sweeping(ts, m, speed_kmh=speed_kmh), rules_for(network, len(ts))
    )
    assert (swept.passes.tolist(), swept.fast_passes.tolist()) == (
        ([1], [0]) if valid else ([0], [1])
    )


HELSINKI = Path(__file__).resolve().parents[1] / "data" / "helsinki.osm.pbf"


def test_tracks_along_a_real_city_s_streets_are_matched_to_them() -> None:
    # central Helsinki from OpenStreetMap: curved streets, short links at junctions, one-way
    # carriageways side by side, roundabouts; each way is a segment
    lines = roadmaps.split_at_junctions(roadmaps.read(HELSINKI))
    network = roads.build(
        [Segment(line.line_id or line.name, list(line.coordinates), line.oneway) for line in lines]
    )
    frame = network.frame
    rng = np.random.default_rng(7)
    right = judged = 0
    for n in range(len(lines)):
        line = lines[int(n)]
        x, y = frame.to_metres(*(np.array(c) for c in zip(*line.coordinates, strict=True)))
        path = list(zip(x.tolist(), y.tolist(), strict=True))
        if line.oneway is False and rng.random() < 0.5:
            path = path[::-1]  # a two-way street driven against the way it is drawn
        _, lon, lat, heading = drive_metres(path, frame, seed=int(n))
        m = roads.match(network, lon, lat, heading, MatchRules())
        # judged where the street is the only one within 15 m of the true position: nearer a
        # junction (or a way drawn over another) either street may be right
        _, true_lon, true_lat, _ = drive_metres(path, frame, seed=int(n), noise_m=0.0)
        tx, ty = frame.to_metres(true_lon, true_lat)
        d, i = network.tree.query(np.column_stack((tx, ty)), k=32)
        own = network.segment_ids.index(line.line_id or line.name)
        other = network.cell_segment[np.minimum(i, len(network.cell_segment) - 1)] != own
        clear = np.where(other, d, np.inf).min(axis=1) > 15
        right += int((m.segment[clear] == own).sum())
        judged += int(clear.sum())
    assert judged > 5000
    assert right / judged >= 0.98


def drive_metres(
    path: list[tuple[float, float]], frame: roads.Frame, seed: int, noise_m: float = NOISE_M
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``drive`` along a path in the frame's metres."""
    ts, lon, lat, heading = drive(path, seed=seed, noise_m=noise_m)
    # drive() places metres around (LON0, LAT0): move them to the frame's centre
    lon = frame.lon0 + (lon - LON0) * COS / math.cos(math.radians(frame.lat0))
    lat = frame.lat0 + (lat - LAT0)
    return ts, lon, lat, heading
