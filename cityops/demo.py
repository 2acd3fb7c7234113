"""The demo: a small simulated city, its fleet publishing, ingest and the scenes at work, live.

It imports a generated city into the database, replays the last hour of its fleet (one night
hour, with a few injected faults) at ``speed`` times real time through the broker, runs ingest
and the scenes service beside it, and shows readings per second, devices reporting, the
quarantine, and the newest detections with their cases and the units they went to, until
stopped; then it scores the detections against the run's ground truth.
``demo_settings`` keeps it apart from a deployment on the same services: a database of its own
(``cityops.demo_database``), and a client id, shared group and topic prefix of its own, with no
persistent session.

The replayed hour is last night's, so the scenes judge at the fleet's clock (``_FleetClock``:
the newest reading the run stored) instead of wall time: judged at wall time, every device
would be long silent, and offline.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from prometheus_client import CollectorRegistry
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cases.catalog import Catalog
from cityops.demo_identity import enforcing_broker
from cityops.settings import Settings
from devices import registry
from ingest.metrics import IngestMetrics
from ingest.worker import IngestWorker
from scenes.engine import SCENES, run_once
from scenes.outbound import OUT_ROOT
from scenes.score import ALLOWED_DELAY_S, KindScore, read_truth, score, stored_detections
from scenes.service import serve
from simulator.city import City, CitySpec, generate, write_bundle
from simulator.fleet import Publication, Run, RunOptions, simulate
from simulator.publish import PublishError, PublishOptions, publish
from simulator.scenario import Scenario
from store import db, rollups
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings, TlsFiles

logger = logging.getLogger(__name__)

DEMO_CITY = CitySpec(seed=1, districts=1, covers=200, lamps=120, sweepers_per_district=2)
DEMO_FAULTS = Scenario.model_validate(
    {
        "rates": {
            "cover_displaced": 0.02,
            "cover_loose": 0.01,
            "water_rising": 0.01,
            "lamp_out": 0.04,
            "lamp_degraded": 0.02,
            "cabinet_outage": 0.34,
            "sweeping_too_fast": 0.03,
            "brushes_up": 0.03,
            "gps_gap": 0.5,
        },
        # One the newcomer sees at once, whatever the rates drew: a storm-water cover open in
        # the hour's second minute (a second at the default speed), a case for its owner, the
        # drainage company. And a sweeper's GPS gap on its shift (the rate's may fall before
        # the shift begins at midnight, where no fix is there to hide), so every kind is scored.
        "fault": [
            {
                "kind": "cover_open",
                "subject": "mh-2101020103000001",
                "start_min": 1,
                "duration_min": 4,
            },
            {"kind": "gps_gap", "subject": "sw-d0-0", "start_min": 20, "duration_min": 3},
        ],
    }
)
_RUN_S = 3600.0
_LOCAL_UTC_OFFSET_S = 8 * 3600
_NIGHT_START_S = 23 * 3600 + 55 * 60  # 23:55 local: lamps on, sweeping starts at midnight
#: Detections the live view lists (the newest): with the rest it fits an 80 x 24 terminal.
_SHOWN_DETECTIONS = 8


@dataclass(frozen=True, slots=True)
class DemoScore:
    """The run's detections against its ground truth, as ``cityops scenes score`` scores them.

    ``scores`` covers the kinds some scene judges; ``unscored`` counts the faults of the others
    (every kind the demo injects has one now). ``cut_at``: the simulated time the fleet
    had reached when the run was stopped before the hour's end (None: it published it all);
    faults still going on then count as undetectable (neither found nor missed).
    """

    truth: Path
    scores: list[KindScore]
    unscored: dict[str, int]
    cut_at: float | None
    cut_faults: int


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What a demo did."""

    published: int
    stored: int
    quarantined: int
    faults: int
    detections: int
    cases: int
    score: DemoScore


def demo_settings(settings: Settings, *, database: DatabaseSettings, run_id: str) -> Settings:
    """The settings with the demo's database and MQTT identity, so it reaches no deployment.

    The client id, shared group and topic prefix carry ``run_id``: the demo's ingest neither takes
    over a deployment's session nor joins its group, and the demo's simulator publishes, and its
    ingest subscribes, only under ``demo-<run_id>/cityops/v1``. Without a persistent session the
    broker keeps nothing for the demo once it has gone.
    """
    name = f"demo-{run_id}"
    mqtt = MqttSettings.model_validate(
        {
            **settings.mqtt.model_dump(),
            "client_id": f"cityops-{name}",
            "shared_group": name,
            "topic_prefix": name,
            "session_expiry_s": 0,
        }
    )
    return settings.model_copy(update={"database": database, "mqtt": mqtt})


def last_night_start(now: float) -> float:
    """The latest 23:55 local whose following hour has already passed (timestamps stay past)."""
    day = math.floor((now + _LOCAL_UTC_OFFSET_S) / 86400) * 86400 - _LOCAL_UTC_OFFSET_S
    start = day + _NIGHT_START_S
    while start + _RUN_S > now:
        start -= 86400
    return start


def local_time(epoch_s: float) -> str:
    """``epoch_s`` as the demo city's wall clock shows it (UTC+8): HH:MM:SS."""
    return datetime.fromtimestamp(epoch_s + _LOCAL_UTC_OFFSET_S, tz=UTC).strftime("%H:%M:%S")


def _counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from manhole_readings) + (select count(*) from light_readings)"
        " + (select count(*) from sweeper_readings), "
        "(select count(*) from devices where last_seen is not null), "
        "(select count(*) from quarantine)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@dataclass(frozen=True, slots=True)
class _Scenes:
    """What the scenes made of the run so far: counts and the newest detections."""

    active: int
    detections: int
    open_cases: int
    cases: int
    newest: list[tuple[Any, ...]]


def _scenes(conn: psycopg.Connection) -> _Scenes:
    row = conn.execute(
        "select (select count(*) filter (where cleared_at is null) from detections), "
        "(select count(*) from detections), "
        "(select count(*) filter (where state not in ('closed', 'cancelled')) from cases), "
        "(select count(*) from cases)"
    ).fetchone()
    assert row is not None
    newest = conn.execute(
        "select extract(epoch from d.first_seen)::float8, d.kind, d.subject, d.severity, "
        "c.case_id, c.state, c.unit_id, u.name from detections d "
        "left join cases c on c.case_id = d.case_id "
        "left join units u on u.unit_id = c.unit_id "
        "order by d.detection_id desc limit %s",
        (_SHOWN_DETECTIONS,),
    ).fetchall()
    return _Scenes(int(row[0]), int(row[1]), int(row[2]), int(row[3]), newest)


class _FleetClock:
    """The scenes' clock in the demo: the time of the newest reading ingest stored.

    The demo replays a past hour at many times real time; judged at wall time, every device
    would be long silent. Judged at the replay's own time, a device is offline when the replay
    says so, and the hour stands still once it has all arrived.
    """

    def __init__(self, database: DatabaseSettings, start: float) -> None:
        self._database = database
        self._time = start
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The newest reading's time, epoch seconds (the run's start before any)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self._database, autocommit=True)
            row = self._conn.execute(
                "select extract(epoch from max(max_ts))::float8 from reading_batches"
            ).fetchone()
            if row is not None and row[0] is not None:
                self._time = max(self._time, float(row[0]))
            return self._time

    def close(self) -> None:
        """Close its connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def _view(
    elapsed: float,
    stored: int,
    rate: float,
    reporting: int,
    devices: int,
    quarantined: int,
    faults: int,
    published: int,
    start: float,
    speed: float,
    simulated: float,
    scenes: _Scenes,
    width: int,
) -> Group:
    summary = Table(
        title=f"cityops demo: {DEMO_CITY.name}", show_header=False, box=None, min_width=60
    )
    summary.add_row("running", f"{elapsed:.0f} s (Ctrl-C stops)")
    night = datetime.fromtimestamp(start + _LOCAL_UTC_OFFSET_S, tz=UTC)
    summary.add_row(
        "simulated time",
        f"{local_time(simulated)[:5]}, night of {night:%d %b} (23:55 to 00:55) at {speed:g}x",
    )
    summary.add_row(
        "fleet", f"{published:,} messages published, {faults} faults injected (ground truth)"
    )
    summary.add_row("readings", f"{stored:,} stored ({rate:,.0f}/s), {quarantined:,} quarantined")
    summary.add_row("devices reporting", f"{reporting} of {devices}")
    summary.add_row(
        "scenes",
        f"{scenes.active} detections active of {scenes.detections}, "
        f"{scenes.open_cases} cases open of {scenes.cases}",
    )
    return Group(summary, "", _detections_table(scenes.newest, width))


def _detections_table(newest: list[tuple[Any, ...]], width: int) -> Table:
    """The newest detections, one line each in ``width`` columns: the unit's name only if it fits.

    In 80 columns the unit's id fits, not its name as well.
    """
    rows = [
        [
            local_time(seen)[:5],
            kind,
            subject,
            severity,
            "-" if case_id is None else str(case_id),
            state or "-",
        ]
        for seen, kind, subject, severity, case_id, state, _, _ in newest
    ]
    names = ["seen", "kind", "subject", "severity", "case", "state"]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]
    room = width - sum(widths) - len(widths)  # one space between columns
    units = ["-" if unit_id is None else unit_id for *_, unit_id, _ in newest]
    named = [
        f"{unit_id} {unit_name}"
        for *_, unit_id, unit_name in newest
        if unit_id is not None and unit_name
    ]
    if all(len(unit) <= room for unit in named):  # all or none: the column reads evenly
        units = ["-" if u is None else f"{u} {n or ''}".rstrip() for *_, u, n in newest]
    table = Table(
        title="newest detections and their cases (simulated time)",
        title_justify="left",
        box=None,
        collapse_padding=True,
        pad_edge=False,
    )
    for name, least in zip(names, widths, strict=True):
        justify: Literal["left", "right"] = "right" if name == "case" else "left"
        table.add_column(name, no_wrap=True, min_width=least, justify=justify)
    table.add_column("unit", no_wrap=True, overflow="ellipsis")
    for row, unit in zip(rows, units, strict=True):
        table.add_row(*row, unit)
    return table


def _thread(
    name: str, work: Callable[[], object], failures: list[Exception], stop: threading.Event
) -> threading.Thread:
    """A thread of the demo whose failure stops it, for the command to report in one line."""

    def run() -> None:
        try:
            work()
        except Exception as exc:  # not printed by the thread: the command reports it
            while isinstance(exc, ExceptionGroup):  # the scenes' task group: its first cause
                exc = exc.exceptions[0]
            failures.append(exc)
            stop.set()

    return threading.Thread(target=run, name=name)


@dataclass(frozen=True)
class _Stage:
    """The demo's city and fleet, and what the database held before it started."""

    city: City
    fleet: Run
    start: float
    truth: Path
    stored: int
    quarantined: int


def run_demo(
    settings: Settings,
    *,
    catalog: Catalog,
    workdir: Path,
    speed: float,
    protocol: Literal["5", "3.1.1"],
    duration_s: float | None,
    stop: threading.Event,
    console: Console,
    identity: bool = False,
) -> DemoSummary:
    """Run the demo until ``stop`` or ``duration_s``; stop everything cleanly; score the run.

    With ``identity`` the demo runs on a private Mosquitto that enforces device identity
    (``cityops.demo_identity``): a connection and a password per device, TLS, service accounts.
    """
    stage = _set_stage(settings, workdir)
    with contextlib.ExitStack() as stack:
        ingest_mqtt = scenes_mqtt = settings.mqtt
        options = PublishOptions(
            url=settings.mqtt.url,
            protocol=protocol,
            speed=speed,
            topic_prefix=settings.mqtt.topic_prefix,
        )
        take_back = options  # what the scenes retained is taken back with the scenes' rights
        if identity:
            devices = [d["device_id"] for d in stage.city.devices]
            secured = stack.enter_context(enforcing_broker(settings, devices, workdir / "identity"))
            ingest_mqtt, scenes_mqtt = secured.ingest, secured.scenes
            options = replace(
                options,
                url=secured.devices_url,
                protocol="5",
                tls=TlsFiles(secured.ca_file),
                logins=secured.logins,
            )
            take_back = replace(options, url=scenes_mqtt.url, logins=None)
        return _run(
            settings,
            stage,
            ingest_mqtt,
            scenes_mqtt,
            options,
            take_back,
            catalog=catalog,
            speed=speed,
            duration_s=duration_s,
            stop=stop,
            console=console,
        )


def _run(
    settings: Settings,
    stage: _Stage,
    ingest_mqtt: MqttSettings,
    scenes_mqtt: MqttSettings,
    options: PublishOptions,
    take_back: PublishOptions,
    *,
    catalog: Catalog,
    speed: float,
    duration_s: float | None,
    stop: threading.Event,
    console: Console,
) -> DemoSummary:
    worker = IngestWorker(
        database=settings.database,
        mqtt_settings=ingest_mqtt,
        ingest=settings.ingest,
        metrics=IngestMetrics(CollectorRegistry()),
    )
    clock = _FleetClock(settings.database, stage.start)
    progress = _FleetProgress()
    failures: list[Exception] = []  # the first ends the demo, raised once every thread stopped
    threads = [
        _thread("ingest", lambda: worker.run(stop), failures, stop),
        _thread(
            "scenes",
            lambda: serve(
                settings.database, scenes_mqtt, settings.scenes, catalog, stop, clock=clock
            ),
            failures,
            stop,
        ),
        _thread(
            "fleet",
            lambda: _publish_once_subscribed(worker, stage.fleet, options, stop, progress),
            failures,
            stop,
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        _watch(settings.database, stage, progress, speed, duration_s, stop, clock, console)
    finally:
        stop.set()
        for thread in reversed(threads):
            thread.join()
        console.print()
    try:
        if failures:
            raise failures[0]
        with db.connect(settings.database) as conn:  # what ingest committed before it stopped
            # a last pass over what the scenes had not judged yet, so the score sees it all
            run_once(conn, settings.scenes, catalog, now=clock())
            rollups.refresh(conn)
            total, _, q_total = _counts(conn)
            scenes = _scenes(conn)
            sent = progress.sent or 0
            cut_at = None if sent >= len(stage.fleet.publications) else _reached(stage, sent)
            result = _score(conn, stage, cut_at)
            _take_back_retained(conn, take_back)
    finally:
        clock.close()
    return DemoSummary(
        sent,
        total - stage.stored,
        q_total - stage.quarantined,
        len(stage.fleet.faults),
        scenes.detections,
        scenes.cases,
        result,
    )


@dataclass
class _FleetProgress:
    """When the fleet began to publish (monotonic), and what it published once it has ended."""

    started: float | None = None
    sent: int | None = None


def _publish_once_subscribed(
    worker: IngestWorker,
    fleet: Run,
    options: PublishOptions,
    stop: threading.Event,
    progress: _FleetProgress,
) -> None:
    """Publish the fleet's hour once ingest has subscribed (it keeps no session to queue it)."""
    while not worker.subscribed.wait(0.1):
        if stop.is_set():
            return
    progress.started = time.monotonic()
    progress.sent = publish(fleet.publications, options, stop).messages


def _take_back_retained(conn: psycopg.Connection, options: PublishOptions) -> None:
    """Remove what the scenes service retained on the broker: the demo leaves nothing there.

    Under the demo's prefix, the latest detection of each subject and kind, and each open case
    (``scenes.outbound``); an empty retained message removes one, and is harmless where there
    was none.
    """
    refs = conn.execute(
        "select distinct 'detections/' || kind || '/' || subject from detections "
        "union all select 'cases/' || case_id from cases"
    ).fetchall()
    empty = [Publication(0.0, f"{OUT_ROOT}/{ref}", b"", retain=True) for (ref,) in refs]
    try:
        publish(empty, replace(options, speed=0.0), threading.Event())
    except PublishError as exc:  # the run is over and scored: say so, and show the score
        logger.warning("the demo's retained detections and cases stay on the broker: %s", exc)


def _reached(stage: _Stage, sent: int) -> float:
    """The simulated time of the last message the fleet published (the run's start: none)."""
    return stage.fleet.publications[sent - 1].t if sent else stage.start


def _score(conn: psycopg.Connection, stage: _Stage, cut_at: float | None) -> DemoScore:
    """The run's detections against its ground truth, through ``cityops scenes score``'s code.

    Only the run's own: its devices, its hour (detections may begin ``ALLOWED_DELAY_S`` after
    it). Faults of kinds no scene judges are counted apart, and faults not over where the
    fleet was stopped (or not begun) count as undetectable: no scene could have told them yet.
    """
    judged = {kind for scene in SCENES for kind in scene.category_of}
    faults = read_truth(stage.truth)
    unscored = Counter(f.kind for f in faults if f.kind not in judged)
    faults = [f for f in faults if f.kind in judged]
    cut = []
    if cut_at is not None:
        cut = [f for f in faults if f.detectable and (f.end is None or f.end > cut_at)]
        faults = [replace(f, detectable=False) if f in cut else f for f in faults]
    detections = stored_detections(
        conn,
        datetime.fromtimestamp(stage.start, tz=UTC),
        datetime.fromtimestamp(stage.start + _RUN_S + ALLOWED_DELAY_S, tz=UTC),
        devices={d["device_id"] for d in stage.city.devices},
    )
    return DemoScore(
        stage.truth,
        score(faults, detections, allowed_delay_s=ALLOWED_DELAY_S),
        dict(sorted(unscored.items())),
        cut_at,
        len(cut),
    )


def _set_stage(settings: Settings, workdir: Path) -> _Stage:
    """Generate the demo city, register it, and simulate tonight's fleet with its faults."""
    city = generate(DEMO_CITY)
    bundle = workdir / "city"
    write_bundle(city, bundle)
    with db.connect(settings.database) as conn:
        registry.import_bundle(conn, bundle, settings.registry.scheme)
        stored, _, quarantined = _counts(conn)
    # A new behaviour seed each run: heartbeats and faults fall at other times.
    run = RunOptions(
        start=last_night_start(time.time()), duration_s=_RUN_S, seed=time.time_ns() % 1_000_000
    )
    fleet = simulate(city, DEMO_FAULTS, run)
    truth = bundle / "ground_truth.jsonl"
    truth.write_text("".join(f.truth_line() + "\n" for f in fleet.faults), encoding="utf-8")
    return _Stage(city, fleet, run.start, truth, stored, quarantined)


def _watch(
    database: DatabaseSettings,
    stage: _Stage,
    progress: _FleetProgress,
    speed: float,
    duration_s: float | None,
    stop: threading.Event,
    clock: _FleetClock,
    console: Console,
) -> None:
    """Show progress twice a second until ``stop``, or set it once ``duration_s`` has passed.

    The last frame is drawn after ``stop``, so it shows what was there when the demo stopped.
    """
    started = time.monotonic()
    with (
        db.connect(database, autocommit=True) as conn,
        Live(console=console, refresh_per_second=2) as live,
    ):
        last, rate = (started, stage.stored), 0.0
        while True:
            stopping = stop.wait(0.5)
            total, reporting, q_total = _counts(conn)
            now = time.monotonic()
            if not stopping:  # the last frame keeps the rate of the one before
                rate = (total - last[1]) / max(now - last[0], 1e-3)
            last = (now, total)
            if progress.sent is not None:
                sent = progress.sent
            elif progress.started is None:
                sent = 0
            else:
                sent = _estimate(stage.fleet.publications, speed, now - progress.started)
            live.update(
                _view(
                    now - started,
                    total - stage.stored,
                    rate,
                    reporting,
                    len(stage.city.devices),
                    q_total - stage.quarantined,
                    len(stage.fleet.faults),
                    sent,
                    stage.start,
                    speed,
                    clock(),
                    _scenes(conn),
                    console.width,
                )
            )
            if stopping:
                return
            if duration_s is not None and now - started >= duration_s:
                stop.set()


def _estimate(publications: list[Publication], speed: float, elapsed_s: float) -> int:
    """Messages due by now at ``speed`` (the publisher reports its total only at the end)."""
    if not publications or speed <= 0:
        return len(publications)
    horizon = publications[0].t + elapsed_s * speed
    return bisect.bisect_right(publications, horizon, key=lambda p: p.t)
