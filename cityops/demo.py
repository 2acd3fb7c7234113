"""The demo: a small simulated city, its fleet publishing, ingest storing, progress live.

It imports a generated city into the database, replays the last hour of its fleet (one night
hour, with a few injected faults) at ``speed`` times real time through the broker, runs ingest
beside it, and shows readings per second, devices reporting and the quarantine until stopped.
``demo_settings`` keeps it apart from a deployment on the same services: a database of its own
(``cityops.demo_database``), and a client id, shared group and topic prefix of its own, with no
persistent session.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cityops.settings import Settings
from devices import registry
from ingest.metrics import IngestMetrics
from ingest.worker import IngestWorker
from simulator.city import City, CitySpec, generate, write_bundle
from simulator.fleet import Publication, Run, RunOptions, simulate
from simulator.publish import PublishOptions, publish
from simulator.scenario import Scenario
from store import db
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings

logger = logging.getLogger(__name__)

DEMO_CITY = CitySpec(seed=1, districts=1, covers=200, lamps=120, sweepers_per_district=2)
DEMO_FAULTS = Scenario(
    rates={
        "cover_displaced": 0.02,
        "cover_loose": 0.01,
        "water_rising": 0.01,
        "lamp_out": 0.04,
        "lamp_degraded": 0.02,
        "cabinet_outage": 0.34,
        "sweeping_too_fast": 0.03,
        "brushes_up": 0.03,
        "gps_gap": 0.5,
    }
)
_RUN_S = 3600.0
_LOCAL_UTC_OFFSET_S = 8 * 3600
_NIGHT_START_S = 23 * 3600 + 55 * 60  # 23:55 local: lamps on, sweeping starts at midnight


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What a demo did."""

    published: int
    stored: int
    quarantined: int
    faults: int


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


def _counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from manhole_readings) + (select count(*) from light_readings)"
        " + (select count(*) from sweeper_readings), "
        "(select count(*) from devices where last_seen is not null), "
        "(select count(*) from quarantine)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _view(
    elapsed: float,
    stored: int,
    rate: float,
    reporting: int,
    devices: int,
    quarantined: int,
    faults: int,
    published: int,
) -> Table:
    table = Table(title=f"cityops demo: {DEMO_CITY.name}", show_header=False, min_width=48)
    table.add_row("running", f"{elapsed:.0f} s (Ctrl-C stops)")
    table.add_row("messages published", f"{published:,}")
    table.add_row("readings stored", f"{stored:,}")
    table.add_row("readings per second", f"{rate:,.0f}")
    table.add_row("devices reporting", f"{reporting} of {devices}")
    table.add_row("quarantined", f"{quarantined:,}")
    table.add_row("faults injected", f"{faults} (ground truth in the city folder)")
    return table


def _thread(
    name: str, work: Callable[[], object], failures: list[Exception], stop: threading.Event
) -> threading.Thread:
    """A thread of the demo whose failure stops it, for the command to report in one line."""

    def run() -> None:
        try:
            work()
        except Exception as exc:  # not printed by the thread: the command reports it
            failures.append(exc)
            stop.set()

    return threading.Thread(target=run, name=name)


@dataclass(frozen=True)
class _Stage:
    """The demo's city and fleet, and what the database held before it started."""

    city: City
    fleet: Run
    stored: int
    quarantined: int


def run_demo(
    settings: Settings,
    *,
    workdir: Path,
    speed: float,
    protocol: Literal["5", "3.1.1"],
    duration_s: float | None,
    stop: threading.Event,
    console: Console,
) -> DemoSummary:
    """Run the demo until ``stop`` or ``duration_s``; stop everything cleanly."""
    stage = _set_stage(settings, workdir)
    worker = IngestWorker(
        database=settings.database,
        mqtt_settings=settings.mqtt,
        ingest=settings.ingest,
        metrics=IngestMetrics(CollectorRegistry()),
    )
    published: list[int] = []
    failures: list[Exception] = []  # the first ends the demo, raised once both threads stopped
    options = PublishOptions(
        url=settings.mqtt.url,
        protocol=protocol,
        speed=speed,
        topic_prefix=settings.mqtt.topic_prefix,
    )
    ingest_thread = _thread("ingest", lambda: worker.run(stop), failures, stop)
    publisher = _thread(
        "fleet",
        lambda: published.append(publish(stage.fleet.publications, options, stop).messages),
        failures,
        stop,
    )
    ingest_thread.start()
    publisher.start()
    try:
        _watch(settings.database, stage, published, speed, duration_s, stop, console)
    finally:
        stop.set()
        publisher.join()
        ingest_thread.join()
        console.print()
    if failures:
        raise failures[0]
    with db.connect(settings.database) as conn:  # what ingest committed before it stopped
        total, _, q_total = _counts(conn)
    return DemoSummary(
        published[0] if published else 0,
        total - stage.stored,
        q_total - stage.quarantined,
        len(stage.fleet.faults),
    )


def _set_stage(settings: Settings, workdir: Path) -> _Stage:
    """Generate the demo city, register it, and simulate tonight's fleet with its faults."""
    city = generate(DEMO_CITY)
    bundle = workdir / "city"
    write_bundle(city, bundle)
    with db.connect(settings.database) as conn:
        registry.import_bundle(conn, bundle, settings.registry.scheme)
        stored, _, quarantined = _counts(conn)
    # A new behaviour seed each run: heartbeats and faults fall at other times, so a second
    # demo on the same database stores new readings instead of duplicates of the first.
    run = RunOptions(
        start=last_night_start(time.time()), duration_s=_RUN_S, seed=time.time_ns() % 1_000_000
    )
    fleet = simulate(city, DEMO_FAULTS, run)
    (bundle / "ground_truth.jsonl").write_text(
        "".join(f.truth_line() + "\n" for f in fleet.faults), encoding="utf-8"
    )
    return _Stage(city, fleet, stored, quarantined)


def _watch(
    database: DatabaseSettings,
    stage: _Stage,
    published: list[int],
    speed: float,
    duration_s: float | None,
    stop: threading.Event,
    console: Console,
) -> None:
    """Show progress twice a second until ``stop``, or set it once ``duration_s`` has passed."""
    started = time.monotonic()
    with (
        db.connect(database, autocommit=True) as conn,
        Live(console=console, refresh_per_second=2) as live,
    ):
        last = (started, stage.stored)
        while not stop.wait(0.5):
            total, reporting, q_total = _counts(conn)
            now = time.monotonic()
            rate = (total - last[1]) / max(now - last[0], 1e-3)
            last = (now, total)
            sent = (
                published[0]
                if published
                else _estimate(stage.fleet.publications, speed, now - started)
            )
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
                )
            )
            if duration_s is not None and now - started >= duration_s:
                stop.set()


def _estimate(publications: list[Publication], speed: float, elapsed_s: float) -> int:
    """Messages due by now at ``speed`` (the publisher reports its total only at the end)."""
    if not publications or speed <= 0:
        return len(publications)
    horizon = publications[0].t + elapsed_s * speed
    return bisect.bisect_right(publications, horizon, key=lambda p: p.t)
