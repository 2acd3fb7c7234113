"""``cityops roads``: what the sweepers did to each road segment, night by night."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from cityops.terminal import (
    ConfigOption,
    TableFormatOption,
    fail,
    import_errors,
    out,
    settings_from,
)
from devices import roadmap
from scenes.sweeping import coverage_of
from store import db

roads_app = typer.Typer(
    help="Clean roads: road segments from a street map, each night's coverage of them, and "
    "what each sweeper did.",
    no_args_is_help=True,
)


@roads_app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="A street map: GeoJSON lines, or an OpenStreetMap extract (.osm, .osm.pbf).",
            exists=True,
            dir_okay=False,
        ),
    ],
    plans: Annotated[
        Path,
        typer.Option(
            help="Sweep plans by road class (TOML; config/sweep-plans.toml is an example).",
            exists=True,
            dir_okay=False,
        ),
    ],
    min_length: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Metres: shorter pieces between junctions stay with their neighbours, shorter "
            "roads are left out.",
        ),
    ] = 20.0,
    config: ConfigOption = None,
) -> None:
    """Import a street map's roads of the planned classes as road segments, all or none.

    Lines are joined where a map splits one street and cut at junctions; each segment takes
    its class's plan and the deepest region covering its midpoint (so its cases go to that
    district's sanitation unit). Import the city's regions first (cityops city import).
    """
    settings = settings_from(config)
    with import_errors(f"{file}: ", "nothing imported"):
        chosen = roadmap.load_plans(plans)
        with db.connect(settings.database) as conn:
            report = roadmap.import_road_map(conn, file, chosen, min_length_m=min_length)
    stored = report.stored
    out.print(
        f"{file}: {stored.rows} road segments ({stored.created} new, {stored.updated} updated)",
        highlight=False,
    )
    for why, n in report.left_out.items():
        out.print(f"left out: {n} {why}", highlight=False)


@roads_app.command("coverage")
def coverage_command(
    night: Annotated[
        datetime,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="The night (its evening's local date; a 00:00-06:30 window is the next day's).",
        ),
    ],
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    output: TableFormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """A night's sweeping: per segment, district and sweeper.

    Per segment its coverage, valid passes against the plan, passes too fast or idle; per
    district the planned length swept; per sweeper the km swept and driven. The scenes judge a
    night once its plans' windows are over (and its sweepers reported).
    """
    settings = settings_from(config)
    day: date = night.date()
    with db.connect(settings.database) as conn:
        segments, sweepers = coverage_of(conn, day, district)
    if not segments:
        fail(
            f"no coverage stored for the night of {day}"
            f"{f' in district {district}' if district else ''}: the scenes judge a night once "
            "its plans' windows are over and its sweepers reported (cityops scenes run)"
        )
    if output == "json":
        document = {
            "segments": [asdict(s) for s in segments],
            "sweepers": [asdict(v) for v in sweepers],
        }
        out.print_json(json.dumps(document))
        return
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(list(asdict(segments[0])))
        writer.writerows([list(asdict(s).values()) for s in segments])
        return
    out.print(
        f"{'segment':16} {'district':10} {'length m':>9} {'coverage':>9} {'passes':>7} "
        f"{'fast':>5} {'idle':>5}",
        highlight=False,
    )
    for s in segments:
        out.print(
            f"{s.segment_id:16} {s.district or '-':10} {s.length_m:>9.0f} {s.coverage:>9.1%} "
            f"{f'{s.passes}/{s.required}':>7} {s.fast_passes:>5} {s.idle_passes:>5}",
            highlight=False,
        )
    planned = [s for s in segments if s.required > 0]
    for where in sorted({s.district for s in planned}):
        mine = [s for s in planned if s.district == where]
        length = sum(s.length_m for s in mine)
        swept = sum(s.length_m * s.coverage for s in mine)
        done = sum(s.passes >= s.required for s in mine)
        out.print(
            f"district {where or '-'}: {swept / 1000:.1f} of {length / 1000:.1f} km planned "
            f"swept ({swept / length:.1%}), {done} of {len(mine)} segments as planned",
            highlight=False,
        )
    for v in sweepers:
        share = "-" if v.sweeping_share is None else f"{v.sweeping_share:.0%}"
        out.print(
            f"sweeper {v.device_id}: swept {v.swept_km:.1f} km of {v.driven_km:.1f} km driven "
            f"({share}), {v.over_limit_s / 60:.0f} min brushing over the speed limit",
            highlight=False,
        )
