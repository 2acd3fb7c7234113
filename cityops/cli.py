"""The ``cityops`` command line: settings check, migrations, registry imports, ingest."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from prometheus_client import CollectorRegistry, start_http_server
from rich.table import Table

from cityops import demo_database, services
from cityops.casescli import cases_app, catalog_of, serve, units_app
from cityops.demo import DemoScore, demo_settings, local_time, run_demo
from cityops.grafanacli import grafana_app
from cityops.identitycli import broker_app, credentials_app, pki_app, retire
from cityops.lightingcli import lighting_app
from cityops.modelscli import models_app
from cityops.quarantinecli import quarantine_app
from cityops.roadscli import roads_app
from cityops.scenescli import covers_app, print_scores, scenes_app
from cityops.settings import Settings, SettingsError, load_settings, resolve_config_path
from cityops.simulate import broker_protocol, sim_app
from cityops.terminal import (
    ConfigOption,
    err,
    fail,
    import_errors,
    out,
    run_cli,
    settings_from,
    setup_logging,
    stop_on_signals,
)
from devices import registry
from ingest.metrics import IngestMetrics
from ingest.worker import IngestWorker, ReceiverFailedError
from redaction import redact
from scenes.dictionary import cover_state
from simulator.publish import PublishError
from store import db
from store.settings import DatabaseSettings
from wire.contract import json_schema
from wire.mqtt import BrokerUnavailableError, MqttSettings
from wire.topics import topic_filter

app = typer.Typer(
    help="cityops: city operations telemetry, from MQTT to TimescaleDB and on to cases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check settings files.", no_args_is_help=True)
assets_app = typer.Typer(help="The component dictionary (16-digit codes).", no_args_is_help=True)
devices_app = typer.Typer(help="The device registry.", no_args_is_help=True)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Debug logs, and a traceback when a command fails.")
    ] = False,
) -> None:
    """Global options; main() has set up logging by them (INFO, or DEBUG with --debug)."""
    ctx.obj = debug


app.add_typer(config_app, name="config")
app.add_typer(assets_app, name="assets")
city_app = typer.Typer(help="A whole city's registry at once.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(city_app, name="city")
app.add_typer(sim_app, name="sim")
app.add_typer(cases_app, name="cases")
app.add_typer(units_app, name="units")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(scenes_app, name="scenes")
app.add_typer(grafana_app, name="grafana")
app.add_typer(covers_app, name="covers")
app.add_typer(lighting_app, name="lighting")
app.add_typer(roads_app, name="roads")
app.add_typer(models_app, name="models")
app.add_typer(broker_app, name="broker")
app.add_typer(pki_app, name="pki")
devices_app.add_typer(credentials_app, name="credentials")
devices_app.command("retire")(retire)


@config_app.command("check")
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="File to check (default as --config).")
    ] = None,
) -> None:
    """Validate a settings file plus the CITYOPS_* environment; print every error."""
    path = resolve_config_path(file)
    try:
        load_settings(path)
    except SettingsError as exc:
        for key, value, reason in exc.problems:
            line = f"{exc.source}: {key} = {value!r}: {reason}"
            err.print(redact(line), highlight=False, markup=False)
        raise typer.Exit(2) from None
    out.print(f"{path or 'defaults and environment'}: ok", highlight=False)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Create or upgrade the schema (creating the database if needed); report the storage path."""
    settings = settings_from(config)
    try:
        if db.ensure_database(settings.database):
            out.print(f"created database {redact(settings.database.url)}", highlight=False)
        report = db.migrate(settings.database)
    except (psycopg.OperationalError, db.MigrationError) as exc:
        fail(str(exc))
    applied = ", ".join(report.applied) or "nothing (schema is current)"
    out.print(f"storage path: {report.path.value}", highlight=False)
    out.print(f"applied: {applied}", highlight=False)
    if not report.timescaledb_available:
        out.print(
            "TimescaleDB is not available on this server: plain PostgreSQL tables, readings "
            "partitioned by week, expired weeks dropped by the ingest service",
            highlight=False,
        )


MetricsPortOption = Annotated[
    int | None, typer.Option(help="Prometheus port (overrides metrics.port; 0 disables).")
]


@app.command()
def ingest(config: ConfigOption = None, metrics_port: MetricsPortOption = None) -> None:
    """Move telemetry from MQTT into the database until SIGTERM or Ctrl-C, losing nothing."""
    _ingest(settings_from(config), metrics_port)


@app.command()
def run(
    config: ConfigOption = None,
    metrics_port: MetricsPortOption = None,
    workdir: Annotated[
        Path, typer.Option(help="Where embedded services keep their data.", file_okay=False)
    ] = Path(".cityops"),
) -> None:
    """Migrate, then ingest; where the default database or broker does not answer, embed one."""
    with found_services(settings_from(config), workdir.resolve()) as settings:
        try:
            db.ensure_database(settings.database)
            report = db.migrate(settings.database)
        except (psycopg.OperationalError, db.MigrationError) as exc:
            fail(str(exc))
        _show_services(settings, report.path)
        _ingest(settings, metrics_port)


@contextlib.contextmanager
def found_services(settings: Settings, workdir: Path) -> Iterator[Settings]:
    """Settings naming the configured database and broker, else local or embedded ones."""
    given_db = None if settings.database.url == DatabaseSettings().url else settings.database.url
    given_mqtt = None if settings.mqtt.url == MqttSettings().url else settings.mqtt.url
    with (
        services.database_service(given_db, workdir) as server_url,
        services.broker_service(given_mqtt, workdir) as mqtt_url,
    ):
        database_url = given_db or db.with_database(server_url, "cityops")
        yield settings.model_copy(
            update={
                "database": settings.database.model_copy(update={"url": database_url}),
                "mqtt": settings.mqtt.model_copy(update={"url": mqtt_url}),
            }
        )


def _show_services(
    settings: Settings, path: db.StoragePath, *more: str, broker: str | None = None
) -> None:
    """One line: the database (and its storage path) and the broker in use, passwords redacted."""
    shown = [
        f"database {redact(settings.database.url)} ({path.value})",
        f"broker {broker or redact(settings.mqtt.url)}",
        *more,
    ]
    out.print(", ".join(shown), highlight=False)


def _ingest(settings: Settings, metrics_port: int | None) -> None:
    try:
        with db.connect(settings.database) as conn:
            db.storage_path(conn)
    except psycopg.OperationalError:
        pass  # the worker waits for the database itself
    except (db.MigrationError, psycopg.errors.UndefinedTable):
        fail("the schema is missing: run `cityops migrate` first")
    prometheus = CollectorRegistry()
    port = settings.metrics.port if metrics_port is None else metrics_port
    server = start_http_server(port, settings.metrics.host, prometheus) if port else None
    stop = stop_on_signals()
    worker = IngestWorker(
        database=settings.database,
        mqtt_settings=settings.mqtt,
        ingest=settings.ingest,
        metrics=IngestMetrics(prometheus),
    )
    try:
        worker.run(stop)
    except (BrokerUnavailableError, ReceiverFailedError) as exc:
        fail(str(exc))
    finally:
        if server is not None:
            server[0].shutdown()


@app.command()
def api(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Default: cases.api_host.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: cases.api_port.")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="Server processes (cases.api_workers).")
    ] = None,
) -> None:
    """Serve the API for units, offices and operators: cases, covers, detections (/docs)."""
    if config is not None:
        os.environ["CITYOPS_CONFIG"] = str(config)  # the worker processes read it too
    serve(settings_from(config), host, port, workers)


@app.command()
def contract() -> None:
    """Print the wire contract (topics and payloads) as JSON Schema."""
    sys.stdout.write(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")


def _import(kind: str, file: Path, config: Path | None) -> None:
    settings = settings_from(config)
    with import_errors(f"{file}: ", "nothing imported"), db.connect(settings.database) as conn:
        if kind == "assets":
            report = registry.import_assets(conn, file, settings.registry.scheme)
        else:
            report = registry.import_devices(conn, file)
    out.print(
        f"{file}: {report.rows} {kind} ({report.created} new, {report.updated} updated)",
        highlight=False,
    )


@assets_app.command("import")
def assets_import(
    file: Annotated[Path, typer.Argument(help="CSV or GeoJSON file of components.")],
    config: ConfigOption = None,
) -> None:
    """Import components (all rows or none): code, category, units, position, region."""
    _import("assets", file, config)


@assets_app.command("show")
def assets_show(code: str, config: ConfigOption = None) -> None:
    """Show one component with its units, bound devices, state and case history."""
    settings = settings_from(config)
    try:
        with db.connect(settings.database) as conn:
            asset = registry.show_asset(conn, code)
            state, cases = cover_state(conn, code)
    except psycopg.OperationalError as exc:
        fail(str(exc))
    if asset is None:
        fail(f"no component with code {code}")
    table = Table(show_header=False, box=None)
    for key, value in {**asset, "state": state}.items():
        table.add_row(key, _text(value))
    out.print(table)
    for case in cases:
        closed = f", closed {case.closed_at:%Y-%m-%d %H:%M}" if case.closed_at else ""
        out.print(
            f"case {case.case_id}: {case.category}, {case.state}, reported "
            f"{case.reported_at:%Y-%m-%d %H:%M}{closed}",
            highlight=False,
        )


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(help="CSV or GeoJSON file: device_id, type, ...")],
    config: ConfigOption = None,
) -> None:
    """Import devices (all rows or none); only device_id and type are required."""
    _import("devices", file, config)


@app.command()
def demo(
    ctx: typer.Context,
    config: ConfigOption = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: at Ctrl-C), then score."),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Simulated seconds per second (60: the hour in a minute).", min=1)
    ] = 60.0,
    database: Annotated[
        str | None,
        typer.Option(
            help="The demo's database on the database server (default: "
            f"{demo_database.DEMO_DATABASE}, or database.url's own when an earlier demo made it); "
            "emptied at each start; one holding other data is refused.",
        ),
    ] = None,
    workdir: Annotated[
        Path,
        typer.Option(
            help="Embedded services' data and the demo city (city/ground_truth.jsonl: its faults).",
            file_okay=False,
        ),
    ] = Path(".cityops"),
    identity: Annotated[
        bool,
        typer.Option(
            help="On a private Mosquitto that enforces device identity (docs/security.md): "
            "TLS, a password and a connection per device, accounts for ingest and the scenes, "
            "broker sync --watch beside it. Needs mosquitto installed.",
        ),
    ] = False,
) -> None:
    """Run a simulated city end to end: fleet with faults, ingest, scenes, cases, live view, score.

    Replays last night's 23:55-00:55 of a small city (an hour in a minute at the default speed)
    through MQTT; ingest stores it, and the scenes turn it into detections and cases on the
    responsible units' desks. The live view shows the newest detections with their cases and
    units (the first: a cover opened in the hour's second minute); on exit (Ctrl-C, or
    --duration) the demo prints the score against the run's ground truth, as `cityops scenes
    score` does.

    Uses the database server and broker of the settings, or embedded ones where the defaults do
    not answer, and keeps apart from any deployment on them: a database of its own, marked as
    demo data and emptied at each start (it refuses one that holds anything else), and an MQTT
    client id, shared group and topic prefix (demo-<id>/cityops/v1/...) of its own, with no
    session and no retained message left behind. Ctrl-C stops everything cleanly.
    """
    if not ctx.obj:  # the live view is the output; logs only for what goes wrong
        logging.getLogger().setLevel(logging.WARNING)
    stop = stop_on_signals()
    workdir = workdir.resolve()
    configured = settings_from(config)
    catalog = catalog_of(configured)
    with found_services(configured, workdir) as found:
        try:
            demo_db, report = demo_database.prepare(found.database, database)
        except (
            psycopg.OperationalError,
            db.MigrationError,
            demo_database.DemoDatabaseError,
        ) as exc:
            fail(str(exc))
        settings = demo_settings(found, database=demo_db, run_id=uuid.uuid4().hex[:8])
        _show_services(
            settings,
            report.path,
            f"topics {topic_filter(settings.mqtt.topic_prefix)}",
            f"client id {settings.mqtt.client_id}",
            broker=f"Mosquitto enforcing identity ({workdir / 'identity'})" if identity else None,
        )
        try:
            summary = run_demo(
                settings,
                catalog=catalog,
                workdir=workdir,
                speed=speed,
                protocol="5" if identity else broker_protocol(settings.mqtt, "auto"),
                duration_s=duration,
                stop=stop,
                console=out,
                identity=identity,
            )
        except (PublishError, BrokerUnavailableError, services.ServiceStartError) as exc:
            fail(str(exc))
    out.print(
        f"stopped: {summary.published:,} messages published, {summary.stored:,} readings stored, "
        f"{summary.quarantined:,} quarantined, {summary.faults} faults injected, "
        f"{summary.detections} detections, {summary.cases} cases opened",
        highlight=False,
    )
    _show_score(summary.score)


def _show_score(result: DemoScore) -> None:
    """The demo's score, as `cityops scenes score` prints it, and what it leaves out."""
    out.print(f"\nscore against the ground truth ({result.truth}):", highlight=False)
    print_scores(result.scores)
    if result.cut_at is not None:
        out.print(
            f"stopped at {local_time(result.cut_at)[:5]}: {result.cut_faults} faults not over "
            "(or not begun) by then count as undetectable",
            highlight=False,
            soft_wrap=False,
        )
    if result.unscored:
        # wrapped between the kinds, never between a kind and its count
        kinds = ", ".join(f"{kind}\N{NO-BREAK SPACE}{n}" for kind, n in result.unscored.items())
        lines = textwrap.fill(f"not scored, no scene yet: {kinds}", width=out.width)
        out.print(lines.replace("\N{NO-BREAK SPACE}", " "), highlight=False)


@city_app.command("import")
def city_import(
    folder: Annotated[
        Path,
        typer.Argument(
            help="A bundle: regions.geojson, units.csv, assets.csv, devices.csv, roads.geojson.",
            exists=True,
            file_okay=False,
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Import a city bundle in dependency order; each file all or nothing."""
    settings = settings_from(config)
    after = "that file and the ones after it were not imported"
    with import_errors("", after), db.connect(settings.database) as conn:
        reports = registry.import_bundle(conn, folder, settings.registry.scheme)
    for part, report in reports.items():
        out.print(
            f"{part}: {report.rows} ({report.created} new, {report.updated} updated)",
            highlight=False,
        )


def main() -> None:
    """Entry point of the console script: one line per failure, a traceback with --debug."""
    debug = "--debug" in sys.argv[1:]
    setup_logging(logging.DEBUG if debug else logging.INFO)
    run_cli(app, debug=debug)
