"""The clean-road scene's map matching and coverage: sweeper GPS onto road segments, vectorised.

Pure functions over numpy arrays (no database).

**The network.** Each segment (a polyline: curved roads, roundabouts, short links at junctions)
is cut into cells of ``cell_m`` along its length; a cell knows its segment, its place along it
and the segment's direction there. A KD-tree (scipy's ``cKDTree``, chosen by measurement:
1.1 M nearest queries per second against 0.2 M for shapely's ``STRtree.query_nearest``, in
``bench/clean_road.py``) holds the cells' centres in metres. Cells with a cell of another segment
within ``ambiguity_m`` that runs alongside (a parallel road, the other carriageway, the other
branch of a fork: parallel, and more than 2 m to the side) are marked.

**Matching** (``match``): each fix goes to its nearest cell within ``tolerance_m``. A fix whose
nearest cell is marked, or whose heading disagrees with the cell's direction (beyond
``heading_tol_deg``; both ways on a two-way segment, one way on a one-way carriageway), takes the
best of its ``_CANDIDATES`` nearest cells that agree with its heading. Where a cell of another
segment that agrees is a candidate too (parallel roads 15 m apart under 5-10 m of noise, a
fork), the stretch of such fixes is decided together by a hidden-Markov matcher (Newson & Krumm
2009) over each segment's nearest agreeing cell: Gaussian emission on the distance; transitions
that keep to a segment, or move to one whose end meets it at a cost growing with how much
longer the way round by those ends is than the fixes are apart; a Viterbi pass over the stretch
only, anchored by the fixes on either side, all stretches of one length at once.

**Coverage** (``coverage``): a vehicle's run is its consecutive fixes along one segment one way
(a U-turn, another segment, the brushes going up or down, a gap longer than ``max_gap_s`` or
more than ``max_unmatched`` fixes in a row off every segment end it); it sweeps at its mean
speed. A cell is covered by a valid fix (brushes down, its run no faster than the segment's
``max_speed_kmh`` plus ``speed_margin_kmh`` of GPS noise, inside the plan's window) and by the
cells between two consecutive valid fixes of a run whose gap implies no more than
``max_gap_speed_kmh`` (the distance less ``gap_slack_m`` of noise; a longer or faster gap covers
nothing between its ends). A pass is a run whose valid fixes cover ``pass_share`` of the
segment's judged cells (all but its two end cells, within GPS noise of the next segment); one
too fast (brushes down) or idle (brushes up, at sweeping speed) that covers as much counts apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from scenes.episodes import Floats

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

#: Metres per degree of latitude (and of longitude at the equator).
_M_PER_DEG: Final = 111_320.0
#: Nearest cells looked at for a fix that is not plain (at a busy junction, 8 can all be of
#: crossing roads and miss the right one), and the segments of them the matcher weighs.
_CANDIDATES: Final = 16
_SEGMENTS: Final = 6
#: Segment ends closer than this (metres) touch: a vehicle may move from one to the other.
_TOUCH_M: Final = 3.0
NO_MATCH: Final = -1


@dataclass(frozen=True, slots=True)
class Segment:
    """A road segment's shape: (lon, lat) positions, and whether it is one way (as drawn)."""

    segment_id: str
    coordinates: Sequence[tuple[float, float]]
    oneway: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """Local metres east and north of a centre (equirectangular: good to 0.1 % over 50 km)."""

    lon0: float
    lat0: float

    def to_metres(self, lon: Floats, lat: Floats) -> tuple[Floats, Floats]:
        """Metres east and north of the centre."""
        x = (lon - self.lon0) * _M_PER_DEG * math.cos(math.radians(self.lat0))
        return x, (lat - self.lat0) * _M_PER_DEG


@dataclass(frozen=True, slots=True)
class Network:
    """Segments cut into cells, in a KD-tree."""

    segment_ids: list[str]
    frame: Frame
    cell_m: float
    oneway: Bools  # per segment
    first_cell: Ints  # per segment, then the total: cells of segment s are first[s]:first[s+1]
    cell_segment: Ints  # per cell
    cell_xy: Floats  # (cells, 2)
    cell_dir: Floats  # (cells, 2) unit direction of the segment at the cell
    ambiguous: Bools  # per cell: another segment's cell within ambiguity_m
    joints: Ints  # sorted keys ((i * segments + j) * 4 + end of i * 2 + end of j): ends that meet
    tree: cKDTree

    @property
    def cells_of(self) -> Ints:
        """How many cells each segment has."""
        cells: Ints = np.diff(self.first_cell)
        return cells

    @property
    def judged_cells(self) -> Ints:
        """How many cells of each segment a pass or the coverage must cover.

        All but its two end cells, which lie within GPS noise of the next segment (at least one).
        """
        judged: Ints = np.maximum(self.cells_of - 2, 1)
        return judged


def build(
    segments: Sequence[Segment], *, cell_m: float = 5.0, ambiguity_m: float = 30.0
) -> Network:
    """The network of ``segments``, cut into cells of about ``cell_m``."""
    lons = np.array([p[0] for s in segments for p in s.coordinates], dtype=np.float64)
    lats = np.array([p[1] for s in segments for p in s.coordinates], dtype=np.float64)
    frame = Frame(float(lons.mean()), float(lats.mean())) if len(lons) else Frame(0.0, 0.0)
    xy_parts, dir_parts, counts, ends = [], [], [], []
    for segment in segments:
        line = np.array(segment.coordinates, dtype=np.float64)
        x, y = frame.to_metres(line[:, 0], line[:, 1])
        centres, directions = _cells(np.column_stack((x, y)), cell_m)
        xy_parts.append(centres)
        dir_parts.append(directions)
        counts.append(len(centres))
        ends.append((x[0], y[0], x[-1], y[-1]))
    cell_counts = np.array(counts, dtype=np.int64)
    first_cell = np.concatenate(([0], np.cumsum(cell_counts)))
    cell_xy = np.concatenate(xy_parts) if xy_parts else np.empty((0, 2))
    cell_segment = np.repeat(np.arange(len(segments)), cell_counts)
    cell_dir = np.concatenate(dir_parts) if dir_parts else np.empty((0, 2))
    joints = _joints(np.array(ends, dtype=np.float64).reshape(-1, 4))
    tree = cKDTree(cell_xy)
    return Network(
        segment_ids=[s.segment_id for s in segments],
        frame=frame,
        cell_m=cell_m,
        oneway=np.array([s.oneway for s in segments], dtype=bool),
        first_cell=first_cell,
        cell_segment=cell_segment,
        cell_xy=cell_xy,
        cell_dir=cell_dir,
        ambiguous=_ambiguous(tree, cell_segment, (cell_xy, cell_dir), ambiguity_m),
        joints=joints,
        tree=tree,
    )


def _cells(line: Floats, cell_m: float) -> tuple[Floats, Floats]:
    """Cell centres every ``cell_m`` along a polyline (metres), and their directions."""
    steps = np.diff(line, axis=0)
    step_m = np.hypot(steps[:, 0], steps[:, 1])
    keep = step_m > 0
    steps, step_m = steps[keep], step_m[keep]
    length = float(step_m.sum())
    if length == 0:
        return line[:1], np.array([[1.0, 0.0]])
    n = max(1, round(length / cell_m))
    at = (np.arange(n) + 0.5) * (length / n)  # arc length of each centre
    starts = np.concatenate(([0.0], np.cumsum(step_m)[:-1]))
    k = np.clip(np.searchsorted(starts, at, side="right") - 1, 0, len(steps) - 1)
    origin = line[:-1][keep][k]
    unit = steps[k] / step_m[k, None]
    return origin + unit * (at - starts[k])[:, None], unit


def _ambiguous(
    tree: cKDTree, cell_segment: Ints, cells: tuple[Floats, Floats], radius_m: float
) -> Bools:
    """Cells with a cell of another segment within ``radius_m`` that runs alongside.

    Alongside: about parallel (within 45 degrees, either way) and off to one side by more than
    ``_LATERAL_M``, as a parallel road, the other carriageway or the other branch of a fork;
    the road going on straight across a junction is in line, and a crossing one has another
    heading.
    """
    cell_xy, cell_dir = cells
    flag = np.zeros(len(cell_segment), dtype=bool)
    pairs = tree.query_pairs(radius_m, output_type="ndarray")
    if not len(pairs):
        return flag
    a, b = pairs[:, 0], pairs[:, 1]
    cos = np.abs((cell_dir[a] * cell_dir[b]).sum(axis=1))
    offset = cell_xy[b] - cell_xy[a]
    lateral = np.abs(cell_dir[a, 0] * offset[:, 1] - cell_dir[a, 1] * offset[:, 0])
    alongside = (
        (cell_segment[a] != cell_segment[b])
        & (cos >= math.cos(math.radians(45)))
        & (lateral > _LATERAL_M)
    )
    flag[pairs[alongside].ravel()] = True
    return flag


#: Another segment's cell less than this to one side is in line with a cell (metres).
_LATERAL_M: Final = 2.0


def _joints(ends: Floats) -> Ints:
    """Ends of two segments within ``_TOUCH_M`` of each other, as sorted keys.

    The key of segment i's end meeting segment j's: ``(i * segments + j) * 4 + end of i * 2 +
    end of j``, in both orders; an end is 0 (the segment's first position) or 1 (its last).
    """
    points = np.concatenate((ends[:, :2], ends[:, 2:]))
    n = len(ends)
    owner = np.concatenate((np.arange(n), np.arange(n)))
    which = np.repeat([0, 1], n)
    pairs = cKDTree(points).query_pairs(_TOUCH_M, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    distinct = owner[a] != owner[b]
    p, q = np.concatenate((a[distinct], b[distinct])), np.concatenate((b[distinct], a[distinct]))
    joints: Ints = np.sort((owner[p] * n + owner[q]) * 4 + which[p] * 2 + which[q]).astype(np.int64)
    return joints


@dataclass(frozen=True, slots=True)
class MatchRules:
    """How fixes are matched: how far, how well aligned, when two segments are alike."""

    tolerance_m: float = 20.0
    heading_tol_deg: float = 45.0
    noise_m: float = 5.0


@dataclass(frozen=True, slots=True)
class Matched:
    """Each fix's segment (``NO_MATCH``: none within tolerance), cell, distance (m), heading.

    ``forward``: whether the fix travels the way its segment is drawn.
    """

    segment: Ints
    cell: Ints  # global cell index (NO_MATCH where unmatched)
    distance_m: Floats
    forward: Bools


def match(
    network: Network, lon: Floats, lat: Floats, heading_deg: Floats, rules: MatchRules
) -> Matched:
    """Match one vehicle's fixes, in time order (``heading_deg`` NaN: from its track)."""
    x, y = network.frame.to_metres(lon, lat)
    points = np.column_stack((x, y))
    heading = _headings(points, heading_deg)
    n = len(points)
    out = Matched(
        np.full(n, NO_MATCH, dtype=np.int64),
        np.full(n, NO_MATCH, dtype=np.int64),
        np.full(n, np.inf),
        np.ones(n, dtype=bool),
    )
    if n == 0 or len(network.cell_xy) == 0:
        return out
    nearest_d, nearest_i = network.tree.query(points, k=1, distance_upper_bound=rules.tolerance_m)
    d1, i1 = np.asarray(nearest_d, dtype=np.float64), np.asarray(nearest_i, dtype=np.int64)
    found = np.isfinite(d1)
    nearest = np.where(found, i1, 0)
    plain = found & ~network.ambiguous[nearest]
    plain &= _agrees(network, nearest, heading, rules.heading_tol_deg)
    out.cell[plain], out.distance_m[plain] = i1[plain], d1[plain]
    hard = np.flatnonzero(found & ~plain)
    if len(hard):
        _match_hard(network, (points, heading), hard, rules, out)
    matched = out.cell >= 0
    out.segment[matched] = network.cell_segment[out.cell[matched]]
    out.forward[matched] = _along(network, out.cell[matched], heading[matched]) >= 0
    return out


def _headings(points: Floats, reported: Floats) -> Floats:
    """Heading (radians, clockwise from north) of each fix: reported, else along its track.

    The track's over ``_BASELINE`` fixes either side: a fix a second at 5 km/h moves less than
    its noise.
    """
    n = len(points)
    ahead = points[np.minimum(np.arange(n) + _BASELINE, n - 1)]
    behind = points[np.maximum(np.arange(n) - _BASELINE, 0)]
    step = ahead - behind
    moving = np.hypot(step[:, 0], step[:, 1]) > 1.0
    track = np.where(moving, np.arctan2(step[:, 0], step[:, 1]), np.nan)
    heading: Floats = np.where(np.isnan(reported), track, np.radians(reported))
    return heading


#: Fixes either side that a heading not reported is taken over.
_BASELINE: Final = 10


def _along(network: Network, cells: Ints, heading: Floats) -> Floats:
    """The cosine between each heading and its cell's direction (NaN heading: 1)."""
    direction = network.cell_dir[cells]
    cos: Floats = direction[:, 0] * np.sin(heading) + direction[:, 1] * np.cos(heading)
    return np.where(np.isnan(heading), 1.0, cos)


def _agrees(network: Network, cells: Ints, heading: Floats, tol_deg: float) -> Bools:
    """Whether each fix's heading agrees with its cell's segment (NaN heading: always)."""
    cos = _along(network, cells, heading)
    oneway = network.oneway[network.cell_segment[cells]]
    limit = math.cos(math.radians(tol_deg))
    agree: Bools = np.isnan(heading) | np.where(oneway, cos >= limit, np.abs(cos) >= limit)
    return agree


def _match_hard(
    network: Network, fixes: tuple[Floats, Floats], hard: Ints, rules: MatchRules, out: Matched
) -> None:
    """Match the fixes ``hard`` of ``fixes`` (points, headings) by their agreeing neighbours."""
    points, heading = fixes
    d, i = network.tree.query(points[hard], k=_CANDIDATES, distance_upper_bound=rules.tolerance_m)
    valid = np.isfinite(d)
    safe = np.where(valid, i, 0)
    agree = valid & _agrees(
        network, safe.ravel(), np.repeat(heading[hard], _CANDIDATES), rules.heading_tol_deg
    ).reshape(safe.shape)
    cost = np.where(agree, d, np.inf)
    best = np.argmin(cost, axis=1)
    rows = np.arange(len(hard))
    best_cost = cost[rows, best]
    best_cell = safe[rows, best]
    # the best candidate of another segment
    other = agree & (network.cell_segment[safe] != network.cell_segment[best_cell][:, None])
    second = np.where(other, d, np.inf).min(axis=1)
    ok = np.isfinite(best_cost)
    out.cell[hard[ok]], out.distance_m[hard[ok]] = best_cell[ok], best_cost[ok]
    unsure = ok & np.isfinite(second)
    if unsure.any():
        cells, costs = _per_segment(network, safe[unsure], cost[unsure])
        _Stretches(network, points, hard[unsure], cells, costs, rules.noise_m).decide(out)


def _per_segment(network: Network, cells: Ints, costs: Floats) -> tuple[Ints, Floats]:
    """Each fix's candidates cut to the nearest agreeing cell of each segment.

    Nearest first, at most ``_SEGMENTS`` of them: along one segment the hidden-Markov moves are
    free, so a segment's farther cells add nothing but work.
    """
    segment = network.cell_segment[cells]
    # an agreeing cell is its segment's nearest when no nearer agreeing one is of its segment
    earlier = np.tril(np.ones((cells.shape[1], cells.shape[1]), dtype=bool), k=-1)
    same = (segment[:, :, None] == segment[:, None, :]) & np.isfinite(costs)[:, None, :]
    repeat = (same & earlier).any(axis=2)
    kept = np.where(repeat, np.inf, costs)
    order = np.argsort(kept, axis=1, kind="stable")[:, :_SEGMENTS]
    return np.take_along_axis(cells, order, axis=1), np.take_along_axis(kept, order, axis=1)


@dataclass(frozen=True, slots=True)
class _Stretches:
    """Unsure fixes (in time order) with their candidate cells and distances."""

    network: Network
    points: Floats  # every fix of the track (metres)
    fixes: Ints
    candidates: Ints  # (fixes, K) cells
    costs: Floats  # (fixes, K) metres; inf: not a candidate
    noise_m: float

    def decide(self, out: Matched) -> None:
        """Decide each stretch of consecutive unsure fixes together (Newson & Krumm).

        Anchored by the decided fixes either side (a stretch's neighbours are never unsure, so
        the stretches are independent): stretches of one length are decided at once, one
        Viterbi step for all of them at a time.
        """
        starts = np.flatnonzero(np.diff(self.fixes, prepend=-2) != 1)
        lengths = np.diff(np.append(starts, len(self.fixes)))
        for length in np.unique(lengths).tolist():
            rows = starts[lengths == length][:, None] + np.arange(length)  # (stretches, length)
            path = self._viterbi(rows, out)
            chosen = np.take_along_axis(self.candidates[rows], path[..., None], axis=2)[..., 0]
            out.cell[self.fixes[rows]] = chosen
            out.distance_m[self.fixes[rows]] = np.take_along_axis(
                self.costs[rows], path[..., None], axis=2
            )[..., 0]

    def _viterbi(self, rows: Ints, out: Matched) -> Ints:
        """(stretches, length): the most likely candidate (column) per fix of each stretch."""
        cells, fixes = self.candidates[rows], self.fixes[rows]  # (S, L, K), (S, L)
        s, length, k = cells.shape
        n = len(out.cell)
        # each fix's distance from the one before it, and the next fix's from the last
        to = np.clip(np.concatenate((fixes, fixes[:, -1:] + 1), axis=1), 1, n - 1)
        step = self.points[to] - self.points[to - 1]
        travelled = np.hypot(step[..., 0], step[..., 1])  # (S, L + 1)
        moves = _Moves(self.network, self.noise_m)
        before = np.where(fixes[:, 0] > 0, out.cell[np.maximum(fixes[:, 0] - 1, 0)], NO_MATCH)
        after = np.where(
            fixes[:, -1] + 1 < n, out.cell[np.minimum(fixes[:, -1] + 1, n - 1)], NO_MATCH
        )
        into = moves.between(np.maximum(before, 0)[:, None], cells[:, 0], travelled[:, 0])
        onto = moves.between(cells[:, -1], np.maximum(after, 0)[:, None], travelled[:, -1])
        emission = np.where(
            np.isfinite(self.costs[rows]), -0.5 * (self.costs[rows] / self.noise_m) ** 2, -np.inf
        )
        score = emission[:, 0] + np.where(before[:, None] >= 0, into[:, 0, :], 0.0)  # (S, K)
        if length > 1:
            inner = moves.between(
                cells[:, :-1].reshape(-1, k),
                cells[:, 1:].reshape(-1, k),
                travelled[:, 1:-1].reshape(-1),
            ).reshape(s, length - 1, k, k)
        back = []
        for t in range(1, length):
            step_scores = score[:, :, None] + inner[:, t - 1]  # (S, from, to)
            back.append(np.argmax(step_scores, axis=1))
            score = step_scores.max(axis=1) + emission[:, t]
        score += np.where(after[:, None] >= 0, onto[:, :, 0], 0.0)
        path = np.empty((s, length), dtype=np.int64)
        path[:, -1] = np.argmax(score, axis=1)
        every = np.arange(s)
        for t in range(length - 1, 0, -1):
            path[:, t - 1] = back[t - 1][every, path[:, t]]
        return path


#: Log-probability of moving to a touching segment between two fixes (staying: 0), less one
#: per noise_m that the way round by the joint is longer than the fixes are apart.
_SWITCH: Final = math.log(0.05)
#: The four pairs of ends two segments may meet by (end of the one, end of the other).
_END_A: Final = np.array([0, 0, 1, 1])
_END_B: Final = np.array([0, 1, 0, 1])


@dataclass(frozen=True, slots=True)
class _Moves:
    """Log-probabilities of moving between candidate cells (Newson & Krumm's transitions).

    Along one segment: free. To a segment it touches: ``_SWITCH``, less the metres by which the
    way along both to the ends where they meet (the joint) is longer than the straight distance
    between the fixes (plus a cell), per ``noise_m``: at a fork, the other branch a few metres
    to the side is far by road. To any other segment: impossible.
    """

    network: Network
    noise_m: float

    def between(self, a: Ints, b: Ints, travelled_m: Floats) -> Floats:
        """(steps, A, B): from cells ``a`` (steps, A) to cells ``b`` (steps, B).

        Each step's fixes are ``travelled_m`` (steps) apart.
        """
        network = self.network
        sa, sb = network.cell_segment[a], network.cell_segment[b]
        pair = (sa[:, :, None] * len(network.segment_ids) + sb[:, None, :]) * 4
        keys = pair[..., None] + _END_A * 2 + _END_B  # (steps, A, B, 4)
        found = np.minimum(np.searchsorted(network.joints, keys), len(network.joints) - 1)
        meet = network.joints[found] == keys if len(network.joints) else np.zeros_like(keys, bool)
        # the way from a to b through each pair of ends, where they meet
        ends_a, ends_b = self._to_ends(a, sa), self._to_ends(b, sb)
        way = ends_a[:, :, None, _END_A] + ends_b[:, None, :, _END_B]
        way = np.where(meet, way, np.inf).min(axis=3)
        detour = np.maximum(way - travelled_m[:, None, None] - network.cell_m, 0.0) / self.noise_m
        moves: Floats = np.where(
            sa[:, :, None] == sb[:, None, :],
            0.0,
            np.where(np.isfinite(way), _SWITCH - detour, -1e6),
        )
        return moves

    def _to_ends(self, cells: Ints, segments: Ints) -> Floats:
        """Metres along its segment from each cell to the segment's first and last positions."""
        first = self.network.first_cell
        k = cells - first[segments]
        n = first[segments + 1] - first[segments]
        ends: Floats = np.stack((k + 0.5, n - k - 0.5), axis=-1) * self.network.cell_m
        return ends


@dataclass(frozen=True, slots=True)
class Track:
    """One vehicle's fixes in time order, as matched."""

    ts: Floats  # epoch seconds
    speed_kmh: Floats
    brush_on: Bools
    matched: Matched


@dataclass(frozen=True, slots=True)
class Rules:
    """What counts as sweeping: per segment (speed limit, window), and for gaps and passes."""

    max_speed_kmh: Floats  # per segment
    in_window: Bools  # per fix: inside its segment's sweeping window
    max_gap_s: float = 30.0
    max_gap_speed_kmh: float = 18.0
    gap_slack_m: float = 10.0  # the noise in the distance between two fixes
    speed_margin_kmh: float = 0.5  # a pass's mean speed may exceed the limit by this (GPS noise)
    pass_share: float = 0.8
    max_unmatched: int = 2  # more fixes in a row off every segment: the vehicle left the road


@dataclass(frozen=True, slots=True)
class Coverage:
    """What a vehicle's track swept: covered cells, and its passes per segment."""

    covered: Ints  # global cell indices, unique
    passes: Ints  # per segment: valid passes
    fast_passes: Ints  # per segment: passes brushing faster than its limit
    idle_passes: Ints  # per segment: passes at sweeping speed with brushes up
    too_fast_s: float  # time brushing faster than the limit
    swept_m: float
    driven_m: float


def coverage(network: Network, track: Track, rules: Rules) -> Coverage:
    """The cells ``track`` swept validly, and its passes per segment.

    A fix that matches no segment (off the network, or a GPS outlier) is passed over: it
    covers nothing and counts only in the distance driven. More than ``max_unmatched`` of them
    in a row end a run: the vehicle left the segment (and a second pass of a one-way segment
    after coming back to its start is a pass of its own).
    """
    driven_s = np.append(np.minimum(np.diff(track.ts), rules.max_gap_s), 0.0)
    driven_m = float(np.nansum(track.speed_kmh / 3.6 * driven_s))
    keep = track.matched.segment >= 0
    stayed = np.diff(np.flatnonzero(keep)) <= rules.max_unmatched + 1
    ts, speed, brush = track.ts[keep], track.speed_kmh[keep], track.brush_on[keep]
    seg, cell = track.matched.segment[keep], track.matched.cell[keep]
    forward, in_window = track.matched.forward[keep], rules.in_window[keep]
    dt = np.diff(ts)
    same = seg[1:] == seg[:-1]
    # runs: consecutive fixes along one segment one way, broken by a change of segment, of
    # direction (a U-turn) or of the brushes, by a gap too long or by leaving the road; a run
    # sweeps at its mean speed (a valid pass near the limit has fixes above it, a fast one below)
    onward = forward[1:] == forward[:-1]
    carry_on = same & onward & (brush[1:] == brush[:-1]) & stayed & (dt <= rules.max_gap_s)
    run_id = np.cumsum(np.concatenate(([True], ~carry_on))) - 1
    runs = int(run_id[-1]) + 1 if len(run_id) else 0
    run_speed = np.bincount(run_id, weights=speed, minlength=runs) / np.maximum(
        np.bincount(run_id, minlength=runs), 1
    )
    fast_run = run_speed[run_id] > rules.max_speed_kmh[seg] + rules.speed_margin_kmh
    valid = brush & ~fast_run & in_window
    fast = brush & fast_run
    idle = ~brush & ~fast_run & in_window
    # between consecutive fixes of a run: the cells in between, if the gap is sound
    step = np.abs(cell[1:] - cell[:-1])
    implied_m = np.maximum(step * network.cell_m - rules.gap_slack_m, 0.0)
    sound = (run_id[1:] == run_id[:-1]) & (
        implied_m / np.maximum(dt, 1e-9) * 3.6 <= rules.max_gap_speed_kmh
    )
    run_segment = np.full(runs, NO_MATCH)
    run_segment[run_id] = seg

    def swept(fixes: Bools) -> tuple[Ints, Ints]:
        """The cells ``fixes`` pass over, with the runs they belong to."""
        fill = np.flatnonzero(fixes[1:] & fixes[:-1] & sound & (step > 1))
        lo = np.minimum(cell[fill], cell[fill + 1])
        hi = np.maximum(cell[fill], cell[fill + 1])
        between = _ranges(lo, hi)
        runs_of = np.repeat(run_id[fill], hi - lo + 1)
        return np.concatenate((run_id[fixes], runs_of)), np.concatenate((cell[fixes], between))

    def passes(fixes: Bools) -> Ints:
        """Per segment, the runs whose ``fixes`` cover ``pass_share`` of it."""
        runs_of, cells_of = swept(fixes)
        total = len(network.cell_segment)
        per_run = np.bincount(np.unique(runs_of * total + cells_of) // total, minlength=runs)
        enough = (run_segment >= 0) & (
            per_run >= rules.pass_share * network.judged_cells[np.maximum(run_segment, 0)]
        )
        counted: Ints = np.bincount(run_segment[enough], minlength=len(network.segment_ids))
        return counted.astype(np.int64)

    covered = np.unique(swept(valid)[1])
    # time per fix: until the next matched one, at most max_gap_s
    hold = np.append(np.minimum(dt, rules.max_gap_s), 0.0)
    return Coverage(
        covered=covered,
        passes=passes(valid),
        fast_passes=passes(fast),
        idle_passes=passes(idle),
        too_fast_s=float(hold[fast].sum()),
        swept_m=float(len(covered) * network.cell_m),
        driven_m=driven_m,
    )


def _ranges(lo: Ints, hi: Ints) -> Ints:
    """Every integer in each [lo, hi], concatenated."""
    counts = hi - lo + 1
    if not len(counts):
        return np.empty(0, dtype=np.int64)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return np.arange(int(counts.sum()), dtype=np.int64) + starts


def segment_coverage(network: Network, covered: Ints) -> Floats:
    """Each segment's covered share of its judged cells (``Network.judged_cells``), at most 1."""
    per_segment = np.bincount(
        network.cell_segment[covered], minlength=len(network.segment_ids)
    ).astype(np.float64)
    share: Floats = np.minimum(per_segment / network.judged_cells, 1.0)
    return share
