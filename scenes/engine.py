"""The scene engine: partitions of (scene, district) over ingest's change feed and deadlines.

Partitions are claimed with advisory locks, so several processes can share them. A partition run
is one transaction: it reads the feed from its watermark up to the horizon of transactions that
have all finished (``pg_snapshot_xmin``: a batch that commits late is never skipped), judges the
devices touched or due, upserts their detections, opens cases for new ones, keeps its deadlines,
and moves its watermark, all committed together. Running it again over the same readings finds
the same episodes (a detection is keyed by subject, kind and first seen), so it changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from cases.access import Caller
from cases.catalog import Catalog, Category
from cases.lifecycle import Action
from cases.service import CaseError, CaseService, Report
from redaction import error_line
from scenes import anomalies, covers, health, lamps, lighting, nights, sweeping
from scenes.episodes import Device, Episode, Judgement, blocks
from scenes.settings import ScenesSettings, Tunable

_READINGS: Final = ("manhole_readings", "light_readings", "sweeper_readings", "device_status")
#: Advisory lock keys of partitions: this in the high 32 bits, the partition's crc32 below.
_LOCK_SPACE: Final = 0x5CE4E

#: The shortest wait between runs (seconds).
_SOON_S: Final = 0.5

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionResult:
    """What one partition run did."""

    scene: str
    district: str
    devices: int
    detections: int
    cases_opened: int
    cases_verified: int
    seconds: float = 0.0  # how long the run took


def partitions(
    conn: psycopg.Connection, scenes: Sequence[Scene] | None = None
) -> list[tuple[Scene, str]]:
    """Every (scene, district) partition: the districts, and '' for devices outside any."""
    rows = conn.execute("select region_id from regions where level = 'district'").fetchall()
    districts = ["", *sorted(r[0] for r in rows)]
    return [(scene, district) for scene in scenes or SCENES for district in districts]


def run_once(
    conn: psycopg.Connection,
    settings: ScenesSettings,
    catalog: Catalog,
    *,
    now: float | None = None,
    scenes: Sequence[Scene] | None = None,
    stop: threading.Event | None = None,
) -> list[PartitionResult]:
    """Run every partition (of ``scenes``, default all) this process can claim, once.

    Partitions another process holds are skipped; once ``stop`` is set, the rest are left. A
    partition that fails (a category missing from the catalog, say) is logged and rolled back,
    watermark included, and the others run.
    """
    results = []
    for scene, district in partitions(conn, scenes):
        if stop is not None and stop.is_set():
            break
        with _claimed(conn, scene.name, district) as claimed:
            if not claimed:
                continue
            at = time.time() if now is None else now
            began = time.perf_counter()
            try:
                result = _run(conn, scene, settings, catalog, district=district, now=at)
                results.append(dataclasses.replace(result, seconds=time.perf_counter() - began))
            except Exception as exc:  # one failing scene or partition must not stop the others
                if conn.broken:
                    raise  # the database is gone: every partition would fail; the caller decides
                logger.warning(
                    "scene %s, district %s failed, retried at its next run: %s",
                    scene.name,
                    district or "(none)",
                    error_line(exc),
                )
    return results


def lock_key(scene: str, district: str) -> int:
    """The advisory lock key of a partition."""
    return _LOCK_SPACE << 32 | zlib.crc32(f"{scene}/{district}".encode())


def next_run_in(conn: psycopg.Connection, interval_s: float, *, now: float | None = None) -> float:
    """Seconds until the partitions should run again, without a wake-up.

    At the earliest deadline (``now``: the time the runs judge at, default the database's
    clock), within ``interval_s`` in any case, and soon (``_SOON_S``) when batches of
    transactions still running when the last run read the feed (an alarm's, say) are waiting;
    never sooner than ``_SOON_S``: a due deadline of a partition another process holds stays due.
    """
    row = conn.execute(
        "select (select extract(epoch from min(s.due_at) - coalesce(%s::timestamptz, now()))"
        "::float8 from scene_deadlines s join devices d on d.device_id = s.device_id), "
        "exists (select from reading_batches "
        "where xact >= pg_snapshot_xmin(pg_current_snapshot()))",
        (None if now is None else _at(now),),
    ).fetchone()
    conn.commit()
    due_s = row[0] if row and row[0] is not None else interval_s
    if row and row[1]:
        due_s = min(due_s, _SOON_S)
    return max(_SOON_S, min(interval_s, due_s))


@contextmanager
def _claimed(conn: psycopg.Connection, scene: str, district: str) -> Iterator[bool]:
    key = lock_key(scene, district)
    row = conn.execute("select pg_try_advisory_lock(%s::bigint)", (key,)).fetchone()
    conn.commit()
    claimed = bool(row and row[0])
    try:
        yield claimed
    finally:
        if claimed:
            conn.execute("select pg_advisory_unlock(%s::bigint)", (key,))
            conn.commit()


def _run(
    conn: psycopg.Connection,
    scene: Scene,
    settings: ScenesSettings,
    catalog: Catalog,
    *,
    district: str,
    now: float,
) -> PartitionResult:
    with conn.transaction():
        horizon, watermark = _feed_window(conn, scene.name, district)
        touched = conn.execute(
            # the devices first, then their districts: the recursive view once, and after
            # the feed's own filter whatever the planner knows of the feed
            "with fed as materialized (select t.device_id, min(b.min_ts) as since "
            "from reading_batches b cross join unnest(b.device_ids) as t(device_id) "
            "where b.readings = any(%s) and b.xact >= %s and b.xact < %s group by 1), "
            "due as (select device_id, since from fed union all "
            "select device_id, due_at from scene_deadlines where scene = %s and due_at <= %s) "
            "select dd.device_id, dd.type, dd.asset_code, a.major || a.minor, due.since "
            "from due join device_districts dd on dd.device_id = due.device_id "
            "left join assets a on a.code = dd.asset_code "
            "where dd.district = %s and dd.type = any(%s)",
            (
                list(scene.readings),
                watermark,
                horizon,
                scene.name,
                _at(now),
                district,
                list(scene.device_types),
            ),
        ).fetchall()
        since: dict[str, datetime] = {}
        known: dict[str, Device] = {}
        limits_of = functools.cache(scene.thresholds(settings).for_component)
        for device_id, device_type, asset_code, category, first_ts in touched:
            since[device_id] = min(first_ts, since.get(device_id, first_ts))
            known[device_id] = Device(device_type, asset_code, limits_of(category, asset_code))
        if scene.companions is not None and since:
            # judged with the touched ones (a cabinet's lamps): over the same window
            earliest = min(since.values())
            extra = sorted(set(scene.companions(conn, sorted(since))) - set(since))
            for device_id, device_type, asset_code, category in conn.execute(
                "select dd.device_id, dd.type, dd.asset_code, a.major || a.minor "
                "from device_districts dd left join assets a on a.code = dd.asset_code "
                "where dd.device_id = any(%s) and dd.district = %s and dd.type = any(%s)",
                (extra, district, list(scene.device_types)),
            ).fetchall():
                since[device_id] = earliest
                known[device_id] = Device(device_type, asset_code, limits_of(category, asset_code))
        _reach_back(conn, scene, since, settings.lookback_s)
        # whose detections or deadline a judgement may end: the rest need no statement of
        # their own when their readings show nothing (most devices of a partition, most runs)
        active, waiting = (
            {
                r[0]
                for r in conn.execute(
                    f"select device_id from {table} where scene = %s and device_id = any(%s)"
                    + (" and cleared_at is null" if table == "detections" else ""),
                    (scene.name, sorted(since)),
                ).fetchall()
            }
            for table in ("detections", "scene_deadlines")
        )
        detections = cases_opened = 0
        for device_id, judgement in scene.judge_all(conn, since, known, settings, now):
            kept = []
            for episode in judgement.episodes:
                device = known[device_id]
                detection_id, opened = _record(
                    conn,
                    catalog,
                    scene=scene,
                    district=district,
                    device_id=device_id,
                    place=(device.asset_code, device.limits),
                    episode=episode,
                )
                kept.append(detection_id)
                detections += 1
                cases_opened += opened
            if device_id in active:
                _clear_superseded(conn, scene, device_id, kept)
            if judgement.due_at is not None or device_id in waiting:
                _keep_deadline(conn, scene.name, device_id, judgement.due_at)
        _merge_explained(conn, scene, catalog, settings, district)
        if scene.tally is not None:
            limits = scene.thresholds(settings)

            def record(device_id: str | None, episode: Episode) -> int:
                """Record a finding of the tally (a road segment's); the cases it opened."""
                return _record(
                    conn,
                    catalog,
                    scene=scene,
                    district=district,
                    device_id=device_id,
                    place=(None, limits),
                    episode=episode,
                )[1]

            cases_opened += scene.tally(conn, settings, district, now, record)
        # after the tally, whose findings (a segment swept at last) may clear a case's
        verified = _verify_disposed(conn, scene, catalog, settings, district)
        conn.execute(
            "insert into scene_watermarks (scene, district, xact_horizon) values (%s, %s, %s) "
            "on conflict (scene, district) do update set xact_horizon = excluded.xact_horizon, "
            "updated_at = now()",
            (scene.name, district, horizon),
        )
    return PartitionResult(scene.name, district, len(since), detections, cases_opened, verified)


def _reach_back(
    conn: psycopg.Connection, scene: Scene, since: dict[str, datetime], lookback_s: float
) -> None:
    """Move each device's window back to the start of any detection it may continue or end.

    Judged from a later start, an episode would get another first seen: a second detection of
    the same spell.
    """
    if not since:
        return
    devices = sorted(since)
    rows = conn.execute(
        "select x.device_id, min(x.first_seen) from detections x "
        "join unnest(%s::text[], %s::timestamptz[]) as w(device_id, start_ts) "
        "on w.device_id = x.device_id "
        "where x.scene = %s and coalesce(x.cleared_at, 'infinity') >= w.start_ts "
        "group by x.device_id",
        (devices, [since[d] - timedelta(seconds=lookback_s) for d in devices], scene.name),
    ).fetchall()
    for device_id, first_seen in rows:
        since[device_id] = min(since[device_id], first_seen + timedelta(seconds=lookback_s))


def _clear_superseded(
    conn: psycopg.Connection, scene: Scene, device_id: str, kept: list[int]
) -> None:
    """End the device's active detections its readings no longer show, as superseded.

    Late readings can rewrite a device's history: each such detection ends at its last seen.
    """
    conn.execute(
        "update detections set cleared_at = last_seen, updated_at = now(), "
        "evidence = evidence || '{\"superseded\": true}' "
        "where scene = %s and device_id = %s and cleared_at is null "
        "and detection_id <> all(%s)",
        (scene.name, device_id, kept),
    )


def _merge_explained(
    conn: psycopg.Connection,
    scene: Scene,
    catalog: Catalog,
    settings: ScenesSettings,
    district: str,
) -> None:
    """Merge into each active group finding's case the open cases it now explains.

    A dark cabinet explains the lamps it left dark: their detections were superseded when the
    run saw the cabinet (``_clear_superseded``), so a lamp case opened before that, whose every
    detection is such a one and began within ``lookback_s`` of the cabinet's, is merged into the
    cabinet's case (cancelled, its detections moved there). A lamp dark on its own account keeps
    its case.
    """
    if not scene.explains:
        return
    groups = conn.execute(
        "select detection_id, kind, subject, device_id, case_id, first_seen from detections "
        "where scene = %s and coalesce(district, '') = %s and kind = any(%s) "
        "and cleared_at is null and case_id is not null",
        (scene.name, district, sorted(scene.explains)),
    ).fetchall()
    service = CaseService(conn, catalog)
    for _, kind, subject, device_id, into, first_seen in groups:
        assert scene.companions is not None  # a scene whose findings explain others has them
        members = scene.companions(conn, [device_id])
        rows = conn.execute(
            "select c.case_id from cases c join detections x on x.case_id = c.case_id "
            "where x.device_id = any(%s) and c.case_id <> %s "
            "and c.state in ('reported', 'registered', 'dispatched', 'accepted', 'returned') "
            "group by c.case_id having bool_and(x.kind = any(%s) "
            "and coalesce((x.evidence ->> 'superseded')::boolean, false) "
            "and x.first_seen >= %s)",
            (
                members,
                into,
                list(scene.explains[kind]),
                first_seen - timedelta(seconds=settings.lookback_s),
            ),
        ).fetchall()
        for (case_id,) in rows:
            service.merge(case_id, into, f"scene:{scene.name}", f"{kind} on {subject}")
            conn.execute("update detections set case_id = %s where case_id = %s", (into, case_id))


def _verify_disposed(
    conn: psycopg.Connection,
    scene: Scene,
    catalog: Catalog,
    settings: ScenesSettings,
    district: str,
) -> int:
    """Close the disposed cases of the partition whose sensor reads normal again.

    A case verifies itself when its category asks for sensor verification, every detection on
    it has cleared, and the device sent a message at least ``verify_s`` after the later of the
    disposal and the clearing (a message of that age without a new detection: normal for that
    long). Otherwise it waits for an inspector. Returns the cases verified.
    """
    rows = conn.execute(
        "select c.case_id, c.category, min(d.device_id), array_agg(distinct d.kind), "
        "greatest(c.disposed_at, max(d.cleared_at)) as normal_since "
        "from cases c join detections d on d.case_id = c.case_id "
        "where c.state = 'disposed' and d.scene = %s and coalesce(d.district, '') = %s "
        "group by c.case_id having bool_and(d.cleared_at is not null)",
        (scene.name, district),
    ).fetchall()
    verified = 0
    for case_id, category, device_id, kinds, normal_since in rows:
        # every finding on it must be one a sensor can vouch for (a loose cover that joined a
        # displaced cover's case needs someone to look)
        categories = {category, *(scene.category_of.get(kind, category) for kind in kinds)}
        if not all(catalog.get(c).sensor_verification for c in categories):
            continue
        if not scene.settled(conn, scene, device_id, normal_since, settings):
            continue
        CaseService(conn, catalog).act(
            case_id,
            Action.VERIFY,
            Caller(f"scene:{scene.name}", "operator"),
            note=f"verified by sensor: {device_id} normal since {normal_since:%Y-%m-%d %H:%M}",
        )
        verified += 1
    return verified


def _normal_long_enough(
    conn: psycopg.Connection,
    scene: Scene,
    device_id: str,
    normal_since: datetime,
    settings: ScenesSettings,
) -> bool:
    """Whether the device sent a message ``verify_s`` or more after ``normal_since``."""
    newest = " union all ".join(
        f"(select max(ts) from {table} where device_id = %(device)s)" for table in scene.readings
    )
    row = conn.execute(f"select max(ts) from ({newest}) m(ts)", {"device": device_id}).fetchone()
    return bool(
        row and row[0] is not None and row[0] >= normal_since + timedelta(seconds=settings.verify_s)
    )


def _feed_window(conn: psycopg.Connection, scene: str, district: str) -> tuple[Any, Any]:
    """The partition's watermark, and the horizon below which every transaction has ended."""
    row = conn.execute(
        "select pg_snapshot_xmin(pg_current_snapshot()), coalesce((select xact_horizon from "
        "scene_watermarks where scene = %s and district = %s), '0'::xid8)",
        (scene, district),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _judge_covers(
    conn: psycopg.Connection,
    since: dict[str, datetime],
    known: dict[str, Device],
    settings: ScenesSettings,
    now: float,
) -> Iterator[tuple[str, Judgement]]:
    """Each cover's readings from its last entirely normal one at or before its window."""
    devices = sorted(since)
    starts = [since[d].timestamp() - settings.lookback_s for d in devices]
    rows = conn.execute(
        "with w as (select * from unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[]) "
        "as w(device_id, start_s, tilt_deg, water_cm)), "
        "f as (select w.device_id, coalesce((select max(r.ts) from manhole_readings r "
        "  where r.device_id = w.device_id and r.ts <= to_timestamp(w.start_s) "
        "  and coalesce(r.tilt_deg, 0) <= w.tilt_deg and not coalesce(r.cover_open, false) "
        "  and coalesce(r.water_level_cm, 0) <= w.water_cm), '-infinity') as start_ts from w) "
        "select r.device_id, extract(epoch from r.ts)::float8, r.tilt_deg, "
        "r.cover_open::int::float8, r.water_level_cm "
        "from f join manhole_readings r on r.device_id = f.device_id and r.ts >= f.start_ts "
        "order by r.device_id, r.ts",
        (
            devices,
            starts,
            [known[d].limits.tilt_deg for d in devices],
            [known[d].limits.water_cm for d in devices],
        ),
    ).fetchall()
    judged = set()
    for device_id, block in blocks(rows):
        readings = covers.CoverReadings(block[:, 0], block[:, 1], block[:, 2], block[:, 3])
        judged.add(device_id)
        yield device_id, covers.judge(readings, known[device_id].limits, now)
    for device_id in sorted(set(devices) - judged):  # its readings are past retention
        yield device_id, Judgement()


def _judge_health(
    conn: psycopg.Connection,
    since: dict[str, datetime],
    known: dict[str, Device],
    settings: ScenesSettings,
    now: float,
) -> Iterator[tuple[str, Judgement]]:
    """Each device's messages, of every kind, from its last one at or before its window."""
    devices = sorted(since)
    starts = [since[d].timestamp() - settings.lookback_s for d in devices]
    last_before = ", ".join(
        f"(select max(r.ts) from {table} r where r.device_id = w.device_id "
        "and r.ts <= to_timestamp(w.start_s))"
        for table in _READINGS
    )
    # each device's messages from its start only (by its (device_id, ts) indexes), not its
    # whole history: on a hypertable, chunks before the start are never opened
    messages = " union all ".join(
        f"select ts, {'battery_pct' if table == 'manhole_readings' else 'null'} as battery_pct "
        f"from {table} where device_id = f.device_id and ts >= f.start_ts"
        for table in _READINGS
    )
    rows = conn.execute(
        "with w as (select * from unnest(%(devices)s::text[], %(starts)s::float8[]) "
        "as w(device_id, start_s)), "
        f"f as (select w.device_id, coalesce(greatest({last_before}), '-infinity') as start_ts "
        "from w) "
        "select f.device_id, extract(epoch from m.ts)::float8, m.battery_pct::float8 "
        f"from f cross join lateral ({messages}) m "
        "order by f.device_id, m.ts",
        {"devices": devices, "starts": starts},
    ).fetchall()
    # the batches from a flooding window before each start: a window's count is whole from it
    batch_starts = [
        start - known[d].limits.flood_window_s for d, start in zip(devices, starts, strict=True)
    ]
    feed = dict(
        blocks(
            conn.execute(
                "with w as (select * from unnest(%(devices)s::text[], %(starts)s::float8[]) "
                "as w(device_id, start_s)) "
                # one row per device and flush (its transaction), of whatever tables
                "select t.device_id, extract(epoch from max(b.max_ts))::float8, "
                "avg(t.skew_s)::float8, sum(t.sent)::float8 from reading_batches b "
                "cross join unnest(b.device_ids, b.skews_s, b.counts) t(device_id, skew_s, sent) "
                "join w on w.device_id = t.device_id and b.max_ts >= to_timestamp(w.start_s) "
                "where b.counts is not null and b.max_ts >= to_timestamp(%(earliest)s) "
                "group by t.device_id, b.xact order by t.device_id, 2, min(b.batch_id)",
                {
                    "devices": devices,
                    "starts": batch_starts,
                    "earliest": min(batch_starts, default=0.0),
                },
            ).fetchall()
        )
    )
    none = np.empty((0, 3))
    judged = set()
    for device_id, block in blocks(rows):
        judged.add(device_id)
        batches = feed.pop(device_id, none)
        yield (
            device_id,
            health.judge(
                health.DeviceMessages(known[device_id].type, block[:, 0], block[:, 1]),
                health.DeviceBatches(batches[:, 0], batches[:, 1], batches[:, 2]),
                known[device_id].limits,
                now,
            ),
        )
    for device_id in sorted(set(devices) - judged):  # its messages are past retention
        yield device_id, Judgement()


@dataclass(frozen=True, slots=True)
class Scene:
    """A scene: what wakes it, how it judges a device, and the case category of each kind."""

    name: str
    device_types: tuple[str, ...]
    readings: tuple[str, ...]  # the readings tables whose batches it reads
    category_of: dict[str, str]  # detection kind: problem category (config/categories.toml)
    judge_all: Callable[
        [psycopg.Connection, dict[str, datetime], dict[str, Device], ScenesSettings, float],
        Iterator[tuple[str, Judgement]],
    ]
    thresholds: Callable[[ScenesSettings], Tunable]
    subject_is_device: bool  # detections are the device's (else its component's)
    #: Devices judged with the touched ones, over the same window (a cabinet's lamps).
    companions: Callable[[psycopg.Connection, list[str]], list[str]] | None = None
    #: Kinds whose finding covers others' on its companions (a dark cabinet: its lamps out).
    explains: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    #: What the scene keeps besides detections, after each partition run (nightly indicators,
    #: and the findings only a finished night shows, recorded by the callable it gets: the
    #: cases opened).
    tally: (
        Callable[
            [psycopg.Connection, ScenesSettings, str, float, Callable[[str | None, Episode], int]],
            int,
        ]
        | None
    ) = None
    #: Whether a disposed case's device has read normal long enough since a time to verify it.
    settled: Callable[[psycopg.Connection, Scene, str, datetime, ScenesSettings], bool] = (
        _normal_long_enough
    )


COVERS: Final = Scene(
    "covers",
    ("manhole",),
    ("manhole_readings",),
    {
        covers.DISPLACED: "cover_displaced",
        covers.OPEN: "cover_missing",
        covers.LOOSE: "cover_damaged",
        covers.WATER: "water_high",
    },
    _judge_covers,
    lambda s: s.covers,
    subject_is_device=False,
)
HEALTH: Final = Scene(
    "health",
    ("manhole", "light", "sweeper", "gateway"),
    _READINGS,
    {
        health.OFFLINE: "device_offline",
        health.BATTERY: "device_battery_low",
        health.CLOCK: "device_clock_skew",
        health.FLOODING: "device_flooding",
    },
    _judge_health,
    lambda s: s.health,
    subject_is_device=True,
)
LIGHTING: Final = Scene(
    "lighting",
    ("light", "gateway"),
    ("light_readings",),
    {
        lighting.LAMP_OUT: "lamp_out",
        lighting.DAY_BURNER: "lamp_day_burner",
        lighting.DEGRADED: "lamp_degraded",
        lighting.LOW_POWER_FACTOR: "lamp_power_quality",
        lighting.OVER_VOLTAGE: "lighting_voltage",
        lighting.UNDER_VOLTAGE: "lighting_voltage",
        **dict.fromkeys(
            (k for k in lighting.FAULT_FLAGS.values() if k != lighting.LEAKAGE),
            "lamp_controller_fault",
        ),
        lighting.LEAKAGE: "lamp_leakage",
        lighting.CABINET_OUTAGE: "cabinet_dark",
        lighting.CIRCUIT_OUTAGE: "cabinet_dark",
    },
    lamps.judge_all,
    lambda s: s.lighting,
    subject_is_device=False,
    companions=lamps.companions,
    explains=dict.fromkeys(
        (lighting.CABINET_OUTAGE, lighting.CIRCUIT_OUTAGE), (lighting.LAMP_OUT,)
    ),
    tally=nights.tally,
    settled=lamps.settled,
)
ROADS: Final = Scene(
    "roads",
    ("sweeper",),
    ("sweeper_readings",),
    {
        sweeping.SKIPPED: "road_not_swept",
        sweeping.TOO_FAST: "road_swept_improperly",
        sweeping.BRUSHES_UP: "road_swept_improperly",
        sweeping.GPS_GAP: "device_gps_gap",
    },
    sweeping.judge_all,
    lambda s: s.roads,
    subject_is_device=True,  # a GPS gap is the sweeper's; the segments' findings are theirs
    tally=sweeping.tally,
    settled=sweeping.settled,
)
#: The rule scenes: on the alarm path, woken by ingest.
SCENES: Final = (COVERS, HEALTH, LIGHTING, ROADS)
#: The models' scene: each type's active model scores its devices' windows, on its own schedule
#: (``scenes.anomaly_interval_s``), never holding up the rule scenes' alarms.
ANOMALIES: Final = Scene(
    "anomalies",
    anomalies.DEVICE_TYPES,
    anomalies.READINGS,
    {anomalies.ANOMALOUS: "device_anomaly"},
    anomalies.judge_all,
    lambda s: s.anomalies,
    subject_is_device=False,
)


def _record(
    conn: psycopg.Connection,
    catalog: Catalog,
    *,
    scene: Scene,
    district: str,
    device_id: str | None,
    place: tuple[str | None, Tunable],
    episode: Episode,
) -> tuple[int, int]:
    """Upsert the episode's detection; open its case when it has none.

    ``place``: the device's component (None: none) and the thresholds in force for it. The
    subject is the episode's road segment, else the device (its own faults) or its component.
    An episode that overlaps the subject's active detection of its kind continues or ends it
    (the window reaches back over it, so its first seen is the spell's own: late readings may
    move it); any other is keyed by its first seen. Returns the
    detection's id and the cases opened (0 or 1).
    """
    category = catalog.get(scene.category_of[episode.kind])
    asset_code, limits = place
    # a segment's finding is the segment's; a device's own fault the device's; a cover's the
    # cover's, whichever sensor; and its case on the segment or the component (the sensor's
    # own when it has none)
    if episode.segment_id is not None:
        subject = case_subject = episode.segment_id
    else:
        assert device_id is not None  # a finding that is no segment's is a device's
        subject = device_id if scene.subject_is_device else asset_code or device_id
        case_subject = asset_code or device_id
    values = {
        "scene": scene.name,
        "kind": episode.kind,
        "subject": subject,
        "device": device_id,
        "district": district or None,
        "severity": category.severity,
        "first": _at(episode.first_seen),
        "last": _at(episode.last_seen),
        "cleared": None if episode.cleared_at is None else _at(episode.cleared_at),
        "count": episode.count,
        "evidence": Jsonb(
            {
                "peak": episode.peak,
                "readings": episode.count,
                "thresholds": limits.in_force(),
                **(episode.detail or {}),
            }
        ),
    }
    row = conn.execute(
        "update detections set first_seen = %(first)s, "
        "last_seen = greatest(last_seen, %(last)s), cleared_at = %(cleared)s, "
        "count = greatest(count, %(count)s), evidence = %(evidence)s, device_id = %(device)s, "
        "updated_at = now() "
        "where subject = %(subject)s and kind = %(kind)s and cleared_at is null "
        "and first_seen <= coalesce(%(cleared)s::timestamptz, 'infinity') "
        "returning detection_id, case_id",
        values,
    ).fetchone()
    if row is None:
        row = conn.execute(
            "insert into detections (scene, kind, subject, device_id, district, severity, "
            "first_seen, last_seen, cleared_at, count, evidence) values (%(scene)s, %(kind)s, "
            "%(subject)s, %(device)s, %(district)s, %(severity)s, %(first)s, %(last)s, "
            "%(cleared)s, %(count)s, %(evidence)s) "
            "on conflict (subject, kind, first_seen) do update set last_seen = excluded.last_seen, "
            "cleared_at = excluded.cleared_at, count = excluded.count, "
            "evidence = excluded.evidence, updated_at = now() "
            "returning detection_id, case_id",
            values,
        ).fetchone()
    assert row is not None
    detection_id, case_id = row
    if case_id is not None:
        return detection_id, 0
    description = f"{episode.kind} detected by scene {scene.name} (detection {detection_id})"
    if episode.segment_id is not None:
        report = Report(category.code, "sensor", segment_id=subject, description=description)
    else:
        report = Report(
            category=category.code,
            source="sensor",
            asset_code=asset_code,
            device_id=None if asset_code else device_id,
            description=description,
        )
    on_site = _case_on_site(conn, catalog, case_subject, category)
    service = CaseService(conn, catalog)
    try:
        if on_site is not None:
            service.join(on_site, report)
            case_id, opened = on_site, 0
        else:
            receipt = service.report(report)
            assert receipt.case_id is not None  # the operator sees every case
            case_id, opened = receipt.case_id, 1 if receipt.created else 0
    except CaseError as exc:  # unroutable, contended, finished: the detection stays, caseless
        logger.warning(
            "detection %d (%s on %s) has no case yet: %s",
            detection_id,
            episode.kind,
            subject,
            exc,
        )
        return detection_id, 0
    conn.execute(
        "update detections set case_id = %s where detection_id = %s", (case_id, detection_id)
    )
    return detection_id, opened


def _case_on_site(
    conn: psycopg.Connection, catalog: Catalog, subject: str, category: Category
) -> int | None:
    """A case on ``subject`` a crew is working (dispatched or accepted) for the same party.

    A detection of another kind on it (the displaced cover now reads open) joins that case: the
    crew is on site. A category of another party (the sensor's maintainer, not the cover's
    owner) gets a case of its own.
    """
    rows = conn.execute(
        "select case_id, category, state from cases where subject = %s "
        "and state not in ('closed', 'cancelled') order by case_id",
        (subject,),
    ).fetchall()
    if any(code == category.code for _, code, _ in rows):
        return None  # its own category's open case takes the report (cases/service.py)
    known = {c.code: c for c in catalog.category}
    for case_id, code, state in rows:
        if state not in ("dispatched", "accepted"):
            continue
        other = known.get(code)
        if other is not None and other.responsible == category.responsible:
            return int(case_id)
    return None


def _keep_deadline(
    conn: psycopg.Connection, scene: str, device_id: str, due_at: float | None
) -> None:
    if due_at is None:
        conn.execute(
            "delete from scene_deadlines where scene = %s and device_id = %s", (scene, device_id)
        )
    else:
        conn.execute(
            "insert into scene_deadlines (scene, device_id, due_at) values (%s, %s, %s) "
            "on conflict (scene, device_id) do update set due_at = excluded.due_at",
            (scene, device_id, _at(due_at)),
        )


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)
