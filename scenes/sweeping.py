"""The clean-road scene: sweeper tracks read, each night judged once its plans' windows are over.

- ``gps_gap`` (the sweeper's): its fixes stop for more than ``gps_gap_s`` and resume within
  ``shift_break_s`` (a longer silence is the shift's end). It begins when the silence has
  lasted the limit and ends at the next fix.
- Each district's night, once every window of its segments' plans has ended (plus
  ``settle_s`` for late fixes), is matched and scored (``scenes.roads``): coverage and passes
  per segment (``road_nights``), totals per sweeper (``sweeper_nights``), and per planned
  segment one finding at most: ``sweeping_too_fast`` (a pass brushing faster than its limit),
  ``brushes_up`` (a pass at sweeping speed with brushes up), else ``segment_skipped`` (covered
  below ``min_coverage`` or fewer valid passes than planned). A skipped segment stays skipped
  until a later night's valid pass clears it; the other two are that night's.

A night without a single fix from the district's sweepers is not judged: a fleet that did not
report is the health scene's to find, and a skipped-segment case for every road would bury it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import psycopg

from scenes import roads
from scenes.episodes import Device, Episode, Floats, Judgement, blocks
from scenes.settings import RoadsThresholds, ScenesSettings

if TYPE_CHECKING:
    from scenes.engine import Scene

SKIPPED: Final = "segment_skipped"
TOO_FAST: Final = "sweeping_too_fast"
BRUSHES_UP: Final = "brushes_up"
GPS_GAP: Final = "gps_gap"
#: A window not set in the plan: the whole lighting day, noon to noon.
_NOON: Final = time(12)


def judge_all(
    conn: psycopg.Connection,
    since: dict[str, datetime],
    known: dict[str, Device],
    settings: ScenesSettings,
    now: float,
) -> Iterator[tuple[str, Judgement]]:
    """Each sweeper's GPS gaps, from its fixes of the window."""
    devices = sorted(since)
    rows = conn.execute(
        "select r.device_id, extract(epoch from r.ts)::float8 "
        "from unnest(%s::text[], %s::float8[]) as w(device_id, start_s) "
        "join sweeper_readings r on r.device_id = w.device_id "
        "and r.ts >= to_timestamp(w.start_s) order by r.device_id, r.ts",
        (devices, [since[d].timestamp() - settings.lookback_s for d in devices]),
    ).fetchall()
    judged = set()
    for device_id, block in blocks(rows):
        judged.add(device_id)
        yield device_id, _gaps(block[:, 0], known[device_id].limits)
    for device_id in sorted(set(devices) - judged):  # fixes past retention
        yield device_id, Judgement()


def _gaps(ts: Floats, limits: RoadsThresholds) -> Judgement:
    silence = np.diff(ts)
    gaps = np.flatnonzero((silence > limits.gps_gap_s) & (silence <= limits.shift_break_s))
    return Judgement(
        [
            Episode(
                GPS_GAP,
                float(ts[i]) + limits.gps_gap_s,
                float(ts[i]) + limits.gps_gap_s,
                float(ts[i + 1]),
                1,
                float(silence[i]),
            )
            for i in gaps.tolist()
        ]
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """The district's segments and their plans for one night."""

    segment_ids: list[str]
    required: np.ndarray  # passes
    max_speed_kmh: Floats
    starts: Floats  # epoch seconds, per segment: the night's window
    ends: Floats
    network: roads.Network


def tally(
    conn: psycopg.Connection,
    settings: ScenesSettings,
    district: str,
    now: float,
    record: Callable[[str | None, Episode], int],
) -> int:
    """Judge the district's latest night whose windows are over, once; return cases opened.

    Cheap until there is a night to judge (it runs with every partition run): the night from
    the plans' distinct windows, then whether it is judged, then whether any sweeper reported.
    """
    plans = conn.execute("select distinct window_start, window_end from road_segments").fetchall()
    if not plans:
        return 0
    limits = settings.roads
    for days_back in range(3):
        night = datetime.fromtimestamp(now, tz=settings.zone).date() - timedelta(days=days_back)
        starts, ends = _windows(plans, night, settings)
        if float(ends.max()) + limits.settle_s <= now:
            break
    else:
        return 0
    window = (_at(float(starts.min())), _at(float(ends.max())))
    pending = conn.execute(
        "select not exists (select from road_nights where night = %s and district = %s) "
        "and exists (select from sweeper_readings where ts >= %s and ts < %s)",
        (night, district, *window),
    ).fetchone()
    if not (pending and pending[0]):
        return 0
    rows = conn.execute(
        "select s.segment_id, s.geometry, s.required_passes, s.max_speed_kmh, "
        "s.oneway, s.window_start, s.window_end from road_segments s "
        "join segment_districts sd using (segment_id) where sd.district = %s order by 1",
        (district,),
    ).fetchall()
    fixes = conn.execute(
        "select r.device_id, extract(epoch from r.ts)::float8, r.lon, r.lat, r.speed_kmh, "
        "r.heading_deg, r.brush_on::int::float8 from sweeper_readings r "
        "join device_districts dd on dd.device_id = r.device_id "
        "where dd.district = %s and dd.type = 'sweeper' and r.ts >= %s and r.ts < %s "
        "order by r.device_id, r.ts",
        (district, *window),
    ).fetchall()
    if not rows or not fixes:
        return 0  # no roads here, or nobody reported: not judged (the module's docstring)
    segments = [
        roads.Segment(row[0], [tuple(p) for p in row[1]["coordinates"]], row[4]) for row in rows
    ]
    plan = _Plan(
        [row[0] for row in rows],
        np.array([row[2] for row in rows]),
        np.array([row[3] for row in rows], dtype=np.float64),
        *_windows(rows, night, settings),
        roads.build(segments),
    )
    return _judge_night(conn, settings, (district, night), plan, fixes, record=record)


def _windows(
    rows: list[tuple[Any, ...]], night: date, settings: ScenesSettings
) -> tuple[Floats, Floats]:
    """Each segment's window on ``night`` (epoch seconds): its plan's local times."""
    starts, ends = [], []
    for *_, window_start, window_end in rows:
        start, end = window_start or _NOON, window_end or _NOON
        begins = datetime.combine(night if start >= _NOON else night + timedelta(days=1), start)
        finishes = datetime.combine(
            night if end >= _NOON and end > start else night + timedelta(days=1), end
        )
        starts.append(begins.replace(tzinfo=settings.zone).timestamp())
        ends.append(finishes.replace(tzinfo=settings.zone).timestamp())
    return np.array(starts), np.array(ends)


def _judge_night(
    conn: psycopg.Connection,
    settings: ScenesSettings,
    where: tuple[str, date],
    plan: _Plan,
    fixes: list[tuple[Any, ...]],
    *,
    record: Callable[[str | None, Episode], int],
) -> int:
    district, night = where
    limits = settings.roads
    network = plan.network
    match_rules = roads.MatchRules(limits.tolerance_m, limits.heading_tol_deg, limits.noise_m)
    covered, vehicles = [], []
    n = len(plan.segment_ids)
    passes, fast, idle = (np.zeros(n, dtype=np.int64) for _ in range(3))
    for device_id, block in blocks(fixes):
        ts = block[:, 0]
        matched = roads.match(network, block[:, 1], block[:, 2], block[:, 4], match_rules)
        at = np.maximum(matched.segment, 0)
        in_window = (matched.segment >= 0) & (ts >= plan.starts[at]) & (ts < plan.ends[at])
        swept = roads.coverage(
            network,
            roads.Track(ts, np.nan_to_num(block[:, 3]), block[:, 5] == 1.0, matched),
            roads.Rules(
                plan.max_speed_kmh,
                in_window,
                max_gap_s=limits.max_gap_s,
                max_gap_speed_kmh=limits.max_gap_speed_kmh,
                speed_margin_kmh=limits.speed_margin_kmh,
                pass_share=limits.pass_share,
            ),
        )
        covered.append(swept.covered)
        passes += swept.passes
        fast += swept.fast_passes
        idle += swept.idle_passes
        vehicles.append((device_id, swept, len(ts)))
    share = roads.segment_coverage(network, np.unique(np.concatenate(covered)))
    _store(conn, night, district, plan, figures=(share, passes, fast, idle), vehicles=vehicles)
    return _findings(conn, limits, plan, (share, passes, fast, idle), record)


def _store(
    conn: psycopg.Connection,
    night: date,
    district: str,
    plan: _Plan,
    *,
    figures: tuple[Floats, np.ndarray, np.ndarray, np.ndarray],
    vehicles: list[tuple[str, roads.Coverage, int]],
) -> None:
    share, passes, fast, idle = figures
    with conn.cursor().copy(
        "copy road_nights (night, segment_id, district, coverage, passes, required, "
        "fast_passes, idle_passes) from stdin"
    ) as copy:
        for k, segment_id in enumerate(plan.segment_ids):
            copy.write_row(
                (
                    night,
                    segment_id,
                    district,
                    min(1.0, float(share[k])),
                    int(passes[k]),
                    int(plan.required[k]),
                    int(fast[k]),
                    int(idle[k]),
                )
            )
    conn.cursor().executemany(
        "insert into sweeper_nights (night, device_id, district, swept_km, driven_km, "
        "over_limit_s, fixes) values (%s, %s, %s, %s, %s, %s, %s) "
        "on conflict (night, device_id) do update set swept_km = excluded.swept_km, "
        "driven_km = excluded.driven_km, over_limit_s = excluded.over_limit_s, "
        "fixes = excluded.fixes, computed_at = now()",
        [
            (night, d, district, c.swept_m / 1000, c.driven_m / 1000, c.too_fast_s, n)
            for d, c, n in vehicles
        ],
    )


def verdicts(
    figures: tuple[Floats, np.ndarray, np.ndarray, np.ndarray],
    required: np.ndarray,
    min_coverage: float,
) -> list[str | None]:
    """Per segment, its night's finding (the module's docstring), else None.

    ``figures``: each segment's coverage, valid, fast and idle passes. None: swept as planned,
    or not planned tonight.
    """
    share, passes, fast, idle = (f.tolist() for f in figures)
    rows = zip(share, passes, fast, idle, required.tolist(), strict=True)
    return [_verdict(c, p, f, i, r, min_coverage=min_coverage) for c, p, f, i, r in rows]


def _verdict(
    share: float, passes: int, fast: int, idle: int, required: int, *, min_coverage: float
) -> str | None:
    if required < 1:
        return None
    if fast:
        return TOO_FAST
    if idle:
        return BRUSHES_UP
    if share < min_coverage or passes < required:
        return SKIPPED
    return None


def _findings(
    conn: psycopg.Connection,
    limits: RoadsThresholds,
    plan: _Plan,
    figures: tuple[Floats, np.ndarray, np.ndarray, np.ndarray],
    record: Callable[[str | None, Episode], int],
) -> int:
    share, _, fast, idle = figures
    skipped_since: dict[str, float] = dict(
        conn.execute(
            "select subject, extract(epoch from first_seen)::float8 from detections "
            "where kind = %s and cleared_at is null and subject = any(%s)",
            (SKIPPED, plan.segment_ids),
        ).fetchall()
    )
    kinds = verdicts(figures, plan.required, limits.min_coverage)
    opened = 0
    for k, segment_id in enumerate(plan.segment_ids):
        if plan.required[k] < 1:
            continue  # not planned tonight
        start, end = float(plan.starts[k]), float(plan.ends[k])
        kind = kinds[k]
        if kind in (TOO_FAST, BRUSHES_UP):
            count = int(fast[k] if kind == TOO_FAST else idle[k])
            episode = Episode(kind, start, end, end, count, float(count), segment_id)
        elif kind == SKIPPED or segment_id in skipped_since:
            # still skipped, or swept at last: the episode that began when it was first missed
            first = skipped_since.get(segment_id, start)
            cleared = None if kind == SKIPPED else end
            episode = Episode(SKIPPED, first, end, cleared, 1, float(share[k]), segment_id)
        else:
            continue
        opened += record(None, episode)
    return opened


def settled(
    conn: psycopg.Connection,
    scene: Scene,
    device_id: str | None,
    normal_since: datetime,
    settings: ScenesSettings,
) -> bool:
    """A road case's findings have cleared: a later valid pass (or a GPS back) says it all."""
    return True


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


@dataclass(frozen=True, slots=True)
class SegmentNight:
    """A road segment's night as judged."""

    segment_id: str
    name: str
    district: str
    length_m: float
    coverage: float
    passes: int
    required: int
    fast_passes: int
    idle_passes: int


@dataclass(frozen=True, slots=True)
class SweeperNight:
    """A sweeper's night as judged."""

    device_id: str
    district: str
    swept_km: float
    driven_km: float
    sweeping_share: float | None  # swept over driven
    over_limit_s: float


def coverage_of(
    conn: psycopg.Connection, night: date, district: str | None
) -> tuple[list[SegmentNight], list[SweeperNight]]:
    """The stored night: every judged segment (of ``district``) and every sweeper."""
    segments = [
        SegmentNight(*row)
        for row in conn.execute(
            "select n.segment_id, s.name, n.district, s.length_m, n.coverage, n.passes, "
            "n.required, n.fast_passes, n.idle_passes from road_nights n "
            "join road_segments s using (segment_id) "
            "where n.night = %s and (%s::text is null or n.district = %s) order by 3, 1",
            (night, district, district),
        ).fetchall()
    ]
    sweepers = [
        SweeperNight(d, where, swept, driven, swept / driven if driven else None, over)
        for d, where, swept, driven, over in conn.execute(
            "select device_id, district, swept_km, driven_km, over_limit_s from sweeper_nights "
            "where night = %s and (%s::text is null or district = %s) order by 2, 1",
            (night, district, district),
        ).fetchall()
    ]
    return segments, sweepers
