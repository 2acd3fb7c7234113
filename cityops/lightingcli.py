"""``cityops lighting``: the street-lighting indicators of a night."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated

import typer

from cityops.terminal import ConfigOption, TableFormatOption, fail, out, settings_from
from scenes import nights
from store import db

lighting_app = typer.Typer(
    help="Street lighting: lighting rate, energy and day burning per night, district and street.",
    no_args_is_help=True,
)


@lighting_app.command("report")
def report_command(
    night: Annotated[
        datetime,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="The night (its evening's local date): local noon to the next local noon.",
        ),
    ],
    district: Annotated[str | None, typer.Option(help="Per street of this district.")] = None,
    recompute: Annotated[
        bool, typer.Option(help="Compute it again from the readings (late readings came).")
    ] = False,
    output: TableFormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """The night's lighting rate, energy and day-burner waste, per district (or street).

    A night the scenes have not stored yet (they store each one once it is over) is computed
    here, once it is over.
    """
    settings = settings_from(config)
    scenes = settings.scenes
    day: date = night.date()
    _, ends = nights.day_of(day, scenes)
    with db.connect(settings.database) as conn:
        stored = conn.execute(
            "select exists (select from lighting_nights where night = %s "
            "and (%s::text is null or district = %s))",
            (day, district, district),
        ).fetchone()
        if recompute or not (stored and stored[0]):
            if ends > time.time():
                until = datetime.fromtimestamp(ends, tz=scenes.zone)
                fail(f"night {day} is not over until {until:%Y-%m-%d %H:%M %Z}; ask again then")
            nights.store(conn, scenes, day, district)
        rows = nights.report(conn, day, district)
    if not rows:
        fail(f"no street lamps{f' in district {district}' if district else ''}; import the city")
    if output == "json":
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(list(asdict(rows[0])))
        writer.writerows([list(asdict(r).values()) for r in rows])
        return
    where = "street" if district else "district"
    out.print(
        f"night {day} ({scenes.timezone}): lighting rate = lamp-time lit / lamp-time the plan "
        "wanted lit, as far as readings tell",
        highlight=False,
    )
    out.print(
        f"{where:20} {'lamps':>6} {'observed':>9} {'lit rate':>9} {'energy kWh':>11} "
        f"{'day burn h':>11} {'day burn kWh':>13}",
        highlight=False,
    )
    for r in rows:
        name = (r.street if district else r.district) if r is not rows[-1] else "total"
        out.print(
            f"{name or '-':20} {r.lamps:>6} {_pct(r.observed):>9} {_pct(r.lighting_rate):>9} "
            f"{r.energy_kwh:>11.1f} {r.day_burn_h:>11.1f} {r.day_burn_kwh:>13.2f}",
            highlight=False,
        )


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.2%}"
