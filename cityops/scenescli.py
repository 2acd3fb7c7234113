"""``cityops scenes``: the scene engine from the terminal."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from prometheus_client import CollectorRegistry, start_http_server

from cityops.casescli import catalog_of
from cityops.terminal import ConfigOption, fail, out, settings_from, stop_on_signals
from scenes.detections import (
    KINDS,
    AlreadyAcknowledgedError,
    Detection,
    DetectionNotFoundError,
    acknowledge,
    list_detections,
)
from scenes.dictionary import covers_summary
from scenes.engine import ANOMALIES, PartitionResult, run_once
from scenes.metrics import CityState, ScenesMetrics
from scenes.score import (
    ALLOWED_DELAY_S,
    KindScore,
    TruthError,
    read_truth,
    score,
    stored_detections,
)
from scenes.service import serve
from store import db, rollups

FormatOption = Annotated[Literal["table", "json"], typer.Option("--format", help="table or json")]

covers_app = typer.Typer(
    help="The manhole-cover dictionary: covers by district, owner and state.",
    no_args_is_help=True,
)
scenes_app = typer.Typer(
    help="Scenes: telemetry into detections and cases (manhole covers, device health, street "
    "lighting, clean roads); "
    "the detections listed and acknowledged.",
    no_args_is_help=True,
)


@scenes_app.command("run")
def run_command(
    once: Annotated[
        bool,
        typer.Option("--once", help="Process everything pending once, then exit (cron, tests)."),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus port (overrides metrics.scenes_port; 0 disables)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the scene partitions this process can claim until stopped (or once, with --once).

    A run starts at once when ingest commits an alarm, when a deadline comes, and every
    scenes.interval_s. The service also publishes every detection change and case transition
    on cityops/v1/out/... (retained current state; docs/scenes.md); --once does not publish.
    On plain PostgreSQL it keeps the hourly rollups the dashboards read (TimescaleDB keeps
    them itself). Every scenes.anomaly_interval_s (an hour) each device type's active model
    scores the devices' latest windows (`cityops models`), apart from the alarm path.
    It serves Prometheus metrics (its runs, and the city's state read at each scrape: devices
    online, active detections, open and overdue cases, last night's lighting and sweeping).
    """
    settings = settings_from(config)
    catalog = catalog_of(settings)
    if not once:
        registry = CollectorRegistry()
        metrics = ScenesMetrics(registry)
        registry.register(CityState(lambda: db.connect(settings.database)))
        port = settings.metrics.scenes_port if metrics_port is None else metrics_port
        server = start_http_server(port, settings.metrics.host, registry) if port else None
        try:
            serve(
                settings.database,
                settings.mqtt,
                settings.scenes,
                catalog,
                stop_on_signals(),
                metrics=metrics,
            )
        finally:
            if server is not None:
                server[0].shutdown()
        return
    with db.connect(settings.database) as conn:
        _report(run_once(conn, settings.scenes, catalog))
        rollups.refresh(conn)
        _report(run_once(conn, settings.scenes, catalog, scenes=(ANOMALIES,)))


def _report(results: list[PartitionResult]) -> None:
    for r in results:
        out.print(
            f"{r.scene} {r.district or '(no district)'}: {r.devices} devices judged, "
            f"{r.detections} detections written, {r.cases_opened} cases opened, "
            f"{r.cases_verified} verified by sensor",
            highlight=False,
        )


@scenes_app.command("score")
def score_command(
    *,
    truth: Annotated[
        Path, typer.Option(help="Ground truth (JSON Lines) that `cityops sim run` wrote.")
    ],
    since: Annotated[
        datetime | None, typer.Option(help="Only faults and detections from this time on.")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="... and before this time.")] = None,
    allowed_delay_s: Annotated[
        float,
        typer.Option(
            help="A detection may begin this long after its fault ended (offline is judged "
            "after 1.5 heartbeats)."
        ),
    ] = ALLOWED_DELAY_S,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Precision, recall and delay per kind: detections against a simulated run's faults."""
    settings = settings_from(config)
    try:
        faults = read_truth(truth)
    except (OSError, TruthError) as exc:
        fail(f"cannot read the ground truth: {exc}")
    lo = since.timestamp() if since else float("-inf")
    hi = until.timestamp() if until else float("inf")
    faults = [f for f in faults if lo <= f.start < hi]
    with db.connect(settings.database) as conn:
        detections = stored_detections(conn, since, until)
    scores = score(faults, detections, allowed_delay_s=allowed_delay_s)
    if output == "json":
        out.print_json(json.dumps([asdict(s) for s in scores]))
        return
    print_scores(scores)


def print_scores(scores: list[KindScore]) -> None:
    """The score table, 80 columns wide: per kind, faults, detections, precision, recall, delay."""
    out.print(
        f"{'kind':16} {'faults':>6} {'undetectable':>12} {'found':>6} {'precision':>9} "
        f"{'recall':>7} {'delay p50':>9} {'p99':>8}",
        highlight=False,
    )
    for s in scores:
        out.print(
            f"{s.kind:16} {s.faults:>6} {s.undetectable:>12} {s.detections:>6} "
            f"{_ratio(s.precision):>9} "
            f"{_ratio(s.recall):>7} {_seconds(s.delay_p50_s):>9} {_seconds(s.delay_p99_s):>8}",
            highlight=False,
        )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


@scenes_app.command("detections")
def detections_command(
    *,
    everything: Annotated[
        bool, typer.Option("--all", help="Cleared detections too, not only the active ones.")
    ] = False,
    district: Annotated[
        str | None, typer.Option(help="Only this district ('' for devices outside any).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(KINDS)}.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """List the active detections (all with --all), with their case and acknowledgement.

    The most recently begun first.
    """
    if kind is not None and kind not in KINDS:
        fail(f"no detection kind {kind!r}: use one of {', '.join(KINDS)}")
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        rows = list_detections(
            conn, active_only=not everything, district=district, kind=kind, limit=limit
        )
    if output == "json":
        out.print_json(json.dumps([asdict(d) for d in rows], default=_iso))
        return
    out.print(
        f"{'id':>8} {'kind':16} {'subject':20} {'district':8} {'severity':8} {'first seen':16} "
        f"{'cleared':16} {'case':>8}  acknowledged",
        highlight=False,
    )
    for d in rows:
        out.print(
            f"{d.detection_id:>8} {d.kind:16} {d.subject:20} {d.district or '-':8} "
            f"{d.severity:8} {_minute(d.first_seen):16} {_minute(d.cleared_at) or 'active':16} "
            f"{d.case_id or '-':>8}  {_acknowledgement(d)}",
            highlight=False,
        )


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _minute(at: datetime | None) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M}"


def _acknowledgement(d: Detection) -> str:
    if d.acknowledged_at is None:
        return "-"
    note = f": {d.acknowledged_note}" if d.acknowledged_note else ""
    return f"{d.acknowledged_by} {_minute(d.acknowledged_at)}{note}"


@scenes_app.command("ack")
def ack_command(
    detection_id: Annotated[
        int, typer.Argument(help="The detection's id (`cityops scenes detections` lists them).")
    ],
    *,
    by: Annotated[str, typer.Option("--by", help="Who acknowledges (recorded with it).")],
    note: Annotated[str | None, typer.Option(help="What was seen or done.")] = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge a detection: record who has seen it, when, and a note.

    It stays active until its scene clears it, and its case is left as it is. Acknowledging
    again with the same --by changes nothing; one acknowledged by someone else is refused.
    """
    settings = settings_from(config)
    try:
        with db.connect(settings.database, autocommit=True) as conn:
            done = acknowledge(conn, detection_id, by, note)
    except ValueError:
        fail("--by is empty: name who acknowledges the detection")
    except DetectionNotFoundError as exc:
        fail(f"{exc}: `cityops scenes detections --all` lists the detections and their ids")
    except AlreadyAcknowledgedError as exc:
        case = exc.detection.case_id
        more = f"`cityops cases comment {case} --note TEXT`" if case else "its case"
        fail(f"{exc}, which stands; to add to it, comment on its case: {more}")
    out.print(
        f"detection {done.detection_id} ({done.kind} on {done.subject}): acknowledged "
        f"by {done.acknowledged_by} at {_minute(done.acknowledged_at)}",
        highlight=False,
    )


@covers_app.command("summary")
def covers_summary_command(
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Monitored covers per district and owner unit, counted by state (normal, displaced, ...)."""
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        rows = covers_summary(conn, district)
    if output == "json":
        out.print_json(json.dumps(rows))
        return
    out.print(f"{'district':10} {'owner unit':24} {'state':32} {'covers':>7}", highlight=False)
    for row in rows:
        out.print(
            f"{row['district'] or '-':10} {row['owner_unit_id'] or '-':24} {row['state']:32} "
            f"{row['covers']:>7}",
            highlight=False,
        )
