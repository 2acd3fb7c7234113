"""``cityops scenes``: the scene engine from the terminal."""

from __future__ import annotations

from typing import Annotated

import typer

from cityops.casescli import catalog_of
from cityops.terminal import ConfigOption, out, settings_from, stop_on_signals
from scenes.engine import PartitionResult, run_once
from store import db

scenes_app = typer.Typer(
    help="Scenes: telemetry into detections and cases (the manhole-cover scene so far).",
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
    """Run every scene partition this process can claim, every scenes.interval_s until stopped."""
    settings = settings_from(config)
    catalog = catalog_of(settings)
    stop = stop_on_signals()
    with db.connect(settings.database) as conn:
        while True:
            results = run_once(conn, settings.scenes, catalog)
            if once:
                _report(results)
                return
            if stop.wait(settings.scenes.interval_s):
                return


def _report(results: list[PartitionResult]) -> None:
    for r in results:
        out.print(
            f"{r.scene} {r.district or '(no district)'}: {r.devices} devices judged, "
            f"{r.detections} detections written, {r.cases_opened} cases opened",
            highlight=False,
        )
