"""``cityops cases``, ``cityops units`` and ``cityops api``: the closed loop from the terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.table import Table

from cases import evaluation
from cases.access import (
    CALLER_ACTIONS,
    OPERATOR,
    Caller,
    caller_for_unit,
    create_token,
    delete_tokens,
)
from cases.catalog import Catalog, CatalogError, load_catalog
from cases.evaluation import as_csv, as_json
from cases.lifecycle import Action
from cases.service import CaseError, CaseService, IllegalActionError, Report
from cityops.settings import Settings
from cityops.terminal import ConfigOption, fail, out, settings_from
from store import db

cases_app = typer.Typer(
    help="Cases: report, list, show, act, escalate, evaluate.", no_args_is_help=True
)
units_app = typer.Typer(help="Responsible units and their API tokens.", no_args_is_help=True)

AsOption = Annotated[
    str | None,
    typer.Option("--as", help="Act as this unit (its role follows its kind); default: operator."),
]


def catalog_of(settings: Settings) -> Catalog:
    """The problem catalog of the settings, or exit 2 listing its problems."""
    try:
        return load_catalog(settings.cases.catalog)
    except CatalogError as exc:
        fail(str(exc), 2)


@contextmanager
def _cases(config: Path | None) -> Iterator[tuple[CaseService, psycopg.Connection]]:
    settings = settings_from(config)
    catalog = catalog_of(settings)
    try:
        with db.connect(settings.database, autocommit=True) as conn:
            yield CaseService(conn, catalog), conn
    except IllegalActionError as exc:
        fail(f"{exc} (state: {exc.state})")
    except (CaseError, psycopg.OperationalError) as exc:
        fail(str(exc))


def _caller(conn: psycopg.Connection, unit: str | None) -> Caller:
    if unit is None:
        return OPERATOR
    caller = caller_for_unit(conn, unit)
    if caller is None:
        fail(f"no unit {unit!r}")
    return caller


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, ensure_ascii=False, indent=2))


@cases_app.command("catalog")
def catalog_command(config: ConfigOption = None) -> None:
    """Validate and print the problem catalog."""
    catalog = catalog_of(settings_from(config))
    table = Table("code", "name", "responsible", "deadline h", "severity", "sensor check")
    for c in catalog.category:
        table.add_row(
            c.code,
            f"{c.name} {c.name_zh or ''}",
            c.responsible,
            f"{c.deadline_h:g}",
            c.severity,
            "yes" if c.sensor_verification else "no",
        )
    out.print(table)


@cases_app.command("report")
def report_command(
    category: str,
    asset: Annotated[str | None, typer.Option(help="Component code.")] = None,
    lat: float | None = None,
    lon: float | None = None,
    description: str | None = None,
    photo_url: str | None = None,
    source: Annotated[str, typer.Option(help="inspector or citizen")] = "inspector",
    as_unit: AsOption = None,
    config: ConfigOption = None,
) -> None:
    """Report a problem (it waits at 'reported' for the coordinating office)."""
    if source not in ("inspector", "citizen"):
        fail("--source is inspector or citizen", 2)
    with _cases(config) as (cases, conn):
        receipt = cases.report(
            Report(
                category=category,
                source="citizen" if source == "citizen" else "inspector",
                asset_code=asset,
                lat=lat,
                lon=lon,
                description=description,
                photo_url=photo_url,
            ),
            _caller(conn, as_unit),
        )
    if receipt.case_id is None:
        said = f"report {receipt.report_id} (on a case {as_unit} may not see)"
    else:
        joined = "new" if receipt.created else "added to the open case"
        said = f"case {receipt.case_id} ({joined}), report {receipt.report_id}"
    out.print(said, highlight=False)


@cases_app.command("list")
def list_command(
    state: str | None = None,
    unit: str | None = None,
    district: str | None = None,
    category: str | None = None,
    overdue: Annotated[bool | None, typer.Option("--overdue/--not-overdue")] = None,
    limit: int = 50,
    as_unit: AsOption = None,
    config: ConfigOption = None,
) -> None:
    """Cases the caller may see, newest first."""
    with _cases(config) as (cases, conn):
        rows = cases.find(
            _caller(conn, as_unit),
            state=state,
            unit_id=unit,
            district_id=district,
            category=category,
            overdue=overdue,
            limit=limit,
        )
    table = Table("case", "category", "subject", "state", "unit", "deadline", "escalated")
    for r in rows:
        table.add_row(
            str(r["case_id"]),
            r["category"],
            r["subject"],
            r["state"],
            r["unit_id"] or "-",
            str(r["deadline"] or "-"),
            "yes" if r["escalated_at"] else "",
        )
    out.print(table)


@cases_app.command("show")
def show_command(case_id: int, as_unit: AsOption = None, config: ConfigOption = None) -> None:
    """One case with its history (JSON)."""
    with _cases(config) as (cases, conn):
        _print(cases.show(case_id, _caller(conn, as_unit)))


def _action_command(action: Action) -> None:
    def command(
        case_id: int,
        note: str | None = None,
        unit: Annotated[str | None, typer.Option(help="dispatch: the unit to send it to")] = None,
        photo_url: str | None = None,
        as_unit: AsOption = None,
        config: ConfigOption = None,
    ) -> None:
        with _cases(config) as (cases, conn):
            case = cases.act(
                case_id,
                action,
                _caller(conn, as_unit),
                note=note,
                unit_id=unit,
                photo_url=photo_url,
            )
        out.print(f"case {case_id}: {case['state']} ({case['unit_id']})", highlight=False)

    command.__doc__ = f"{action.value.capitalize()} a case."
    cases_app.command(action.value)(command)


for _action in CALLER_ACTIONS:
    _action_command(_action)


@cases_app.command("escalate")
def escalate_command(config: ConfigOption = None) -> None:
    """Escalate every unfinished case past its deadline (once each); run it every few minutes."""
    with _cases(config) as (cases, _):
        escalated = cases.escalate_overdue()
    out.print(
        f"escalated {len(escalated)} cases: {', '.join(map(str, escalated)) or '-'}",
        highlight=False,
    )


@cases_app.command("evaluate")
def evaluate_command(
    month: Annotated[str, typer.Option(help="YYYY-MM (city time).")],
    output: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    store: Annotated[
        bool,
        typer.Option(
            "--store", help="Also store them for the dashboards (as `cityops api` does hourly)."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Monthly indicators and ranking of every unit and district."""
    settings = settings_from(config)
    try:
        with db.connect(settings.database) as conn:
            results = evaluation.store(conn, month) if store else evaluation.evaluate(conn, month)
    except ValueError as exc:
        fail(str(exc), 2)
    if output == "csv":
        typer.echo(as_csv(results), nl=False)
    elif output == "json":
        typer.echo(as_json(results))
    else:
        table = Table(
            "rank",
            "scope",
            "name",
            "cases",
            "on-time closure",
            "closure",
            "disposal",
            "on-time disposal",
            "accurate dispatch",
            "rework",
            "mean disposal h",
            title=f"Evaluation {month}",
        )
        for r in results:
            table.add_row(
                str(r.rank),
                r.scope,
                r.name,
                str(r.cases),
                *(
                    _pct(v)
                    for v in (
                        r.on_time_closure_rate,
                        r.closure_rate,
                        r.disposal_rate,
                        r.on_time_disposal_rate,
                        r.accurate_dispatch_rate,
                        r.rework_rate,
                    )
                ),
                "-" if r.mean_disposal_hours is None else f"{r.mean_disposal_hours:g}",
            )
        out.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@units_app.command("token")
def token_command(
    unit: str,
    role: Annotated[
        str | None,
        typer.Option(
            help="unit, coordinator or operator; default: coordinator for coordinating offices"
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create an API token for a unit; it is shown once and stored hashed."""
    settings = settings_from(config)
    with db.connect(settings.database, autocommit=True) as conn:
        row = conn.execute("select kind from units where unit_id = %s", (unit,)).fetchone()
        if row is None:
            fail(f"no unit {unit!r}")
        chosen = role or ("coordinator" if row[0] == "coordinating" else "unit")
        if chosen not in ("unit", "coordinator", "operator"):
            fail("--role is unit, coordinator or operator", 2)
        token = create_token(conn, unit, chosen)  # type: ignore[arg-type]
    typer.echo(token)


@units_app.command("revoke")
def revoke_command(unit: str, config: ConfigOption = None) -> None:
    """Delete every API token of a unit: a running API refuses them within 5 s."""
    settings = settings_from(config)
    with db.connect(settings.database, autocommit=True) as conn:
        if conn.execute("select 1 from units where unit_id = %s", (unit,)).fetchone() is None:
            fail(f"no unit {unit!r}")
        count = delete_tokens(conn, unit)
    typer.echo(f"{count} tokens of {unit} deleted")


def serve(settings: Settings, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the case API with uvicorn until Ctrl-C (``workers`` processes share the port)."""
    import uvicorn

    catalog_of(settings)  # fail here, before the workers start, if the catalog is bad
    uvicorn.run(
        "cityops.api:app_from_settings",
        factory=True,
        host=host or settings.cases.api_host,
        port=port or settings.cases.api_port,
        workers=workers or settings.cases.api_workers,
        log_level="warning",
    )
