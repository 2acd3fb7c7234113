"""How fast sweeper GPS is matched to road segments and scored, against a plain nearest-segment
baseline in the same run, and how well.

A lattice city of --size x --size nodes 150 m apart (default 101: 20,200 two-way segments over
15 x 15 km) and --sweepers sweepers (default 500) driving --hours (default 8.5: 14.5 million
fixes arrive of the 15.3 million sent) at 1 Hz with 5 m of
GPS noise: each drives from node to node, mostly straight on, sometimes turning or turning back,
sweeping at 3-8 km/h with brushes down; 3 % of its passes too fast (12-15 km/h), 3 % with
brushes up, and one GPS gap of 60-300 s an hour. Tracks are made with numpy, with the true
segment of each fix (no broker or database: this measures the matcher and the scoring).

Each sweeper's track is matched (``scenes.roads.match``) and scored (``scenes.roads.coverage``)
in turn, on one core, timed together: points per second. Beside it, in the same run, the plain
baseline: shapely's STRtree nearest segment for each fix of a sample (no heading, no stretches,
no scoring). Quality: the share of fixes (farther than 10 m from a junction) matched to their
true segment, and per segment the scene's finding (``scenes.sweeping.verdicts``: too fast, else
brushes up, else skipped, one pass planned) against the same finding made from the generated
passes whose fixes arrived (80 % of them): precision and recall per kind. Peak memory is the
process's maximum resident set.

Then the same quality on real streets: nights of the simulator's fleet (``simulator.fleet``,
its 00:00-06:30 shift, 1 Hz, 5 m of noise) on two OpenStreetMap extracts (``tests/data``:
central Helsinki, a Finnish town), --nights seeds each with 12 segment faults (skipped, too
fast, brushes up) and the segments its shift left, matched and judged the same way, against
the simulator's ground truth.

The last line of output is JSON.

Usage: python bench/clean_road.py [--size 101] [--sweepers 500] [--hours 8.5] [--nights 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import roadmaps  # noqa: E402
from scenes import roads  # noqa: E402
from scenes.settings import RoadsThresholds  # noqa: E402
from scenes.sweeping import BRUSHES_UP, SKIPPED, TOO_FAST, verdicts  # noqa: E402
from simulator.city import CitySpec, generate  # noqa: E402
from simulator.fleet import RunOptions, simulate  # noqa: E402
from simulator.scenario import Scenario  # noqa: E402

SPACING_M = 150.0
LON0, LAT0 = 123.43, 41.80
M_PER_DEG = 111_320.0
COS = math.cos(math.radians(LAT0))
NOISE_M = 5.0
#: Share of passes swept too fast, with brushes up.
FAST, UP = 0.03, 0.03
BASELINE_SAMPLE = 1_000_000
#: The longest gap the scoring interpolates (seconds; ``scenes.roads.Rules.max_gap_s``).
MAX_GAP_S = 30.0


@dataclass(slots=True)
class Truth:
    """What the generated passes did to each segment."""

    swept: np.ndarray  # bool per segment: a valid pass along it
    too_fast: np.ndarray
    brushes_up: np.ndarray


def lattice(size: int) -> tuple[list[roads.Segment], dict[tuple[int, int, int, int], int]]:
    """Two-way segments between neighbouring nodes, and each one's index by its end nodes."""
    segments, index = [], {}
    for i in range(size):
        for j in range(size):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < size and j + dj < size:
                    a, b = (i, j), (i + di, j + dj)
                    index[(*a, *b)] = index[(*b, *a)] = len(segments)
                    segments.append(roads.Segment(f"s{i}-{j}-{di}", [lonlat(*a), lonlat(*b)]))
    return segments, index


def lonlat(i: int, j: int) -> tuple[float, float]:
    return LON0 + i * SPACING_M / (M_PER_DEG * COS), LAT0 + j * SPACING_M / M_PER_DEG


def drive(
    rng: np.random.Generator,
    size: int,
    index: dict[tuple[int, int, int, int], int],
    seconds: int,
    truth: Truth,
) -> dict[str, np.ndarray]:
    """One sweeper's fixes for ``seconds``: ts, lon, lat, heading, speed, brush, true segment."""
    node = (int(rng.integers(1, size - 1)), int(rng.integers(1, size - 1)))
    step = (1, 0)
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("x", "y", "heading", "speed", "brush", "seg", "pass")
    }
    kinds: list[tuple[int, bool, bool]] = []  # per pass: segment, too fast, brushes up
    t = 0
    while t < seconds:
        turn = rng.random()
        if turn < 0.15:
            step = (-step[1], step[0])
        elif turn < 0.3:
            step = (step[1], -step[0])
        elif turn < 0.33:
            step = (-step[0], -step[1])
        nxt = (node[0] + step[0], node[1] + step[1])
        if not (0 <= nxt[0] < size and 0 <= nxt[1] < size):
            step = (-step[0], -step[1])
            nxt = (node[0] + step[0], node[1] + step[1])
        seg = index[(*node, *nxt)]
        kind = rng.random()
        fast, up = kind < FAST, FAST <= kind < FAST + UP
        speed = rng.uniform(12, 15) if fast else rng.uniform(3, 8)
        n = max(1, int(SPACING_M / (speed / 3.6)))
        f = np.arange(n) / n
        parts["x"].append((node[0] + step[0] * f) * SPACING_M)
        parts["y"].append((node[1] + step[1] * f) * SPACING_M)
        parts["heading"].append(np.full(n, math.degrees(math.atan2(step[0], step[1])) % 360))
        parts["speed"].append(np.full(n, speed))
        parts["brush"].append(np.full(n, not up))
        parts["seg"].append(np.full(n, seg))
        parts["pass"].append(np.full(n, len(kinds)))
        kinds.append((seg, fast, up))
        node, t = nxt, t + n
    track = {k: np.concatenate(v)[:seconds] for k, v in parts.items()}
    # GPS gaps of 60-300 s, one an hour: their fixes never arrive
    keep = np.ones(len(track["x"]), dtype=bool)
    for hour in range(seconds // 3600):
        start = hour * 3600 + int(rng.integers(0, 3000))
        keep[start : start + int(rng.integers(60, 300))] = False
    # what the passes did, as far as the fixes that arrived tell: 80 % of a pass's fixes
    # arrived or lie in a gap of at most MAX_GAP_S between two that did (the rules interpolate it)
    passes_of = track["pass"]
    arrived = np.flatnonzero(keep)
    hidden = np.diff(arrived) - 1
    bridged = (
        (hidden > 0) & (hidden <= MAX_GAP_S) & (passes_of[arrived[1:]] == passes_of[arrived[:-1]])
    )
    told = np.bincount(passes_of[arrived], minlength=len(kinds)) + np.bincount(
        passes_of[arrived[1:]][bridged], weights=hidden[bridged], minlength=len(kinds)
    )
    share = told / np.maximum(np.bincount(passes_of, minlength=len(kinds)), 1)
    for (seg, fast, up), part in zip(kinds, share, strict=True):
        if part >= 0.8:
            truth.too_fast[seg] |= fast
            truth.brushes_up[seg] |= up
            truth.swept[seg] |= not (fast or up)
    noisy_x = track["x"] + rng.normal(0, NOISE_M, len(keep))
    noisy_y = track["y"] + rng.normal(0, NOISE_M, len(keep))
    out = {
        "ts": np.arange(len(keep), dtype=np.float64),
        "lon": LON0 + noisy_x / (M_PER_DEG * COS),
        "lat": LAT0 + noisy_y / M_PER_DEG,
        "heading": track["heading"],
        "speed": track["speed"] + rng.normal(0, 0.3, len(keep)),
        "brush": track["brush"].astype(bool),
        "seg": track["seg"].astype(np.int64),
        "near_node": _near_node(track["x"], track["y"]),
    }
    return {k: v[keep] for k, v in out.items()}


def _near_node(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each true position is within 10 m of a junction (either segment is right)."""
    dx = np.abs(x - np.round(x / SPACING_M) * SPACING_M)
    dy = np.abs(y - np.round(y / SPACING_M) * SPACING_M)
    return np.hypot(dx, dy) < 10.0


KINDS = (SKIPPED, TOO_FAST, BRUSHES_UP)
MIN_COVERAGE = RoadsThresholds().min_coverage
EXTRACTS = (("helsinki.osm.pbf", 4), ("town.osm.pbf", 6))
#: 2026-11-01 15:55 UTC: 23:55 in the simulated city (UTC+8), five minutes before its window.
FIRST_NIGHT = 1_793_548_500.0


def precision_recall(
    found: list[str | None], truth: list[str | None]
) -> dict[str, dict[str, float | int | None]]:
    """Per kind, over segments: how many were found and true, precision and recall."""
    out = {}
    for kind in KINDS:
        f = np.array([k == kind for k in found], dtype=bool)
        t = np.array([k == kind for k in truth], dtype=bool)
        hits = int((f & t).sum())
        out[kind] = {
            "truth": int(t.sum()),
            "found": int(f.sum()),
            "precision": round(hits / int(f.sum()), 4) if f.any() else None,
            "recall": round(hits / int(t.sum()), 4) if t.any() else None,
        }
    return out


def real_streets(nights: int) -> dict[str, dict[str, float | int | None]]:
    """The scene's findings on simulated nights on the extracts, against the ground truth."""
    found: list[str | None] = []
    truth: list[str | None] = []
    rules = roads.MatchRules()
    for extract, sweepers in EXTRACTS:
        lines = roadmaps.read(ROOT / "tests" / "data" / extract)
        spec = CitySpec(seed=3, covers=10, lamps=0, sweepers_per_district=sweepers)
        city = generate(spec, lines)
        segment_ids = [r["segment_id"] for r in city.roads]
        network = roads.build(
            [
                roads.Segment(
                    r["segment_id"], [tuple(p) for p in r["geometry"]["coordinates"]], r["oneway"]
                )
                for r in city.roads
            ]
        )
        required = np.array([r["required_passes"] for r in city.roads])
        for night in range(nights):
            rng = np.random.default_rng(night)
            picked = rng.choice(len(segment_ids), 12, replace=False)
            scenario = Scenario.model_validate(
                {
                    "fault": [
                        {"kind": KINDS[n % 3], "subject": segment_ids[i], "start_min": 0}
                        for n, i in enumerate(picked)
                    ]
                }
            )
            start = FIRST_NIGHT + night * 86_400
            run = simulate(city, scenario, RunOptions(start=start, duration_s=7 * 3600, seed=night))
            n = len(segment_ids)
            share_parts, passes, fast, idle = [], *(np.zeros(n, np.int64) for _ in range(3))
            tracks: dict[str, list[dict]] = {}
            for p in run.publications:
                if "/sweeper/" in p.topic:
                    tracks.setdefault(p.topic, []).append(json.loads(p.payload))
            for fixes in tracks.values():
                ts = np.array([f["ts"] / 1000 for f in fixes])
                m = roads.match(
                    network,
                    np.array([f["lon"] for f in fixes]),
                    np.array([f["lat"] for f in fixes]),
                    np.array([f["heading_deg"] for f in fixes]),
                    rules,
                )
                swept = roads.coverage(
                    network,
                    roads.Track(
                        ts,
                        np.array([f["speed_kmh"] for f in fixes]),
                        np.array([f["brush_on"] for f in fixes]),
                        m,
                    ),
                    roads.Rules(np.full(n, 8.0), np.ones(len(ts), dtype=bool)),
                )
                share_parts.append(swept.covered)
                passes += swept.passes
                fast += swept.fast_passes
                idle += swept.idle_passes
            share = roads.segment_coverage(network, np.unique(np.concatenate(share_parts)))
            found += verdicts((share, passes, fast, idle), required, MIN_COVERAGE)
            faults = {f.subject: f.kind for f in run.faults if f.detectable and f.kind in KINDS}
            truth += [faults.get(s) for s in segment_ids]
    return precision_recall(found, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=101)
    parser.add_argument("--sweepers", type=int, default=500)
    parser.add_argument("--hours", type=float, default=8.5)
    parser.add_argument("--nights", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    segments, index = lattice(args.size)
    t = time.perf_counter()
    network = roads.build(segments)
    build_s = time.perf_counter() - t
    n_seg = len(segments)
    truth = Truth(np.zeros(n_seg, bool), np.zeros(n_seg, bool), np.zeros(n_seg, bool))
    rng = np.random.default_rng(11)
    seconds = int(args.hours * 3600)
    t = time.perf_counter()
    tracks = [drive(rng, args.size, index, seconds, truth) for _ in range(args.sweepers)]
    generate_s = time.perf_counter() - t
    points = sum(len(tr["ts"]) for tr in tracks)
    print(
        f"{n_seg} segments ({len(network.cell_segment)} cells, built in {build_s:.1f} s); "
        f"{args.sweepers} sweepers, {points} fixes generated in {generate_s:.1f} s",
        flush=True,
    )
    max_speed = np.full(n_seg, 8.0)
    covered, passes = [], np.zeros(n_seg, dtype=np.int64)
    fast_passes, idle_passes = np.zeros(n_seg, dtype=np.int64), np.zeros(n_seg, dtype=np.int64)
    right = judged = 0
    t = time.perf_counter()
    for tr in tracks:
        m = roads.match(network, tr["lon"], tr["lat"], tr["heading"], roads.MatchRules())
        swept = roads.coverage(
            network,
            roads.Track(tr["ts"], tr["speed"], tr["brush"], m),
            roads.Rules(max_speed, np.ones(len(tr["ts"]), dtype=bool), max_gap_s=MAX_GAP_S),
        )
        covered.append(swept.covered)
        passes += swept.passes
        fast_passes += swept.fast_passes
        idle_passes += swept.idle_passes
        away = ~tr["near_node"]
        right += int((m.segment[away] == tr["seg"][away]).sum())
        judged += int(away.sum())
    match_s = time.perf_counter() - t
    share = roads.segment_coverage(network, np.unique(np.concatenate(covered)))
    rate = points / match_s
    sample = np.concatenate([np.column_stack((tr["lon"], tr["lat"])) for tr in tracks])
    sample = sample[:BASELINE_SAMPLE]
    lines = shapely.linestrings([np.array(s.coordinates) for s in segments])
    t = time.perf_counter()
    tree = shapely.STRtree(lines)
    tree.query_nearest(shapely.points(sample), max_distance=20 / M_PER_DEG)
    baseline_rate = len(sample) / (time.perf_counter() - t)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "bench": "clean_road",
        "segments": n_seg,
        "sweepers": args.sweepers,
        "points": points,
        "seconds": round(match_s, 1),
        "points_per_s": round(rate),
        "baseline_nearest_points_per_s": round(baseline_rate),
        "x_baseline": round(rate / baseline_rate, 2),
        "matched_right": round(right / judged, 4),
        "peak_rss_mib": round(peak_mib),
        "lattice": precision_recall(
            verdicts((share, passes, fast_passes, idle_passes), np.ones(n_seg), MIN_COVERAGE),
            [
                TOO_FAST if f else BRUSHES_UP if u else None if s else SKIPPED
                for s, f, u in zip(truth.swept, truth.too_fast, truth.brushes_up, strict=True)
            ],
        ),
    }
    t = time.perf_counter()
    report["real_streets"] = real_streets(args.nights)
    report["real_streets_s"] = round(time.perf_counter() - t, 1)
    for key, value in report.items():
        print(f"{key:30} {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
