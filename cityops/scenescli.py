"""``cityops scenes``: the scene engine from the terminal."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer

from cityops.casescli import catalog_of
from cityops.terminal import ConfigOption, fail, out, settings_from, stop_on_signals
from scenes.dictionary import covers_summary
from scenes.engine import PartitionResult, run_once
from scenes.score import (
    ALLOWED_DELAY_S,
    KindScore,
    TruthError,
    read_truth,
    score,
    stored_detections,
)
from scenes.service import serve
from store import db

FormatOption = Annotated[Literal["table", "json"], typer.Option("--format", help="table or json")]

covers_app = typer.Typer(
    help="The manhole-cover dictionary: covers by district, owner and state.",
    no_args_is_help=True,
)
scenes_app = typer.Typer(
    help="Scenes: telemetry into detections and cases (manhole covers and device health so far).",
    no_args_is_help=True,
)


@scenes_app.command("run")
def run_command(
    once: Annotated[
        bool,
        typer.Option("--once", help="Process everything pending once, then exit (cron, tests)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the scene partitions this process can claim until stopped (or once, with --once).

    A run starts at once when ingest commits an alarm, when a deadline comes, and every
    scenes.interval_s. The service also publishes every detection change and case transition
    on cityops/v1/out/... (retained current state; docs/scenes.md); --once does not publish.
    """
    settings = settings_from(config)
    catalog = catalog_of(settings)
    if not once:
        serve(settings.database, settings.mqtt, settings.scenes, catalog, stop_on_signals())
        return
    with db.connect(settings.database) as conn:
        _report(run_once(conn, settings.scenes, catalog))


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
