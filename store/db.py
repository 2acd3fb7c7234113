"""Database connections, schema migrations and the storage path (TimescaleDB or plain PostgreSQL).

The two paths differ only here and in migrations named ``*.<path>.sql``, which only that path
runs: the TimescaleDB path turns each readings table into a hypertable with compression and
retention policies right after the migration that creates them (statements checked in
shared/design/TIMESCALEDB.md), and keeps hourly rollups as continuous aggregates; the plain path
partitions each readings table by week (the ingest service creates and drops the partitions,
store/partitions.py) and keeps the same rollups as tables that the scenes service refreshes
(store/rollups.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from redaction import error_line, redact
from store.partitions import create_ahead
from store.settings import DatabaseSettings
from wire.contract import READING_KINDS

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process running migrations.
_MIGRATION_LOCK_KEY = 0x0C17_0975
#: The migration that creates the readings tables: a new schema takes its storage path after it.
_READINGS_CREATED: Final = "0001_base"


#: The notification channel on which ingest wakes the scenes when it commits an alarm (the
#: payload: the readings table).
SCENES_CHANNEL: Final = "cityops_scenes"
#: The channel on which the outbound triggers (migration 0008) announce changes to publish.
OUTBOUND_CHANNEL: Final = "cityops_outbound"


class StoragePath(StrEnum):
    """Which storage the schema was built on."""

    TIMESCALEDB = "timescaledb"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``migrate`` did."""

    path: StoragePath
    applied: tuple[str, ...]
    timescaledb_available: bool


class MigrationError(Exception):
    """A migration failed; the transaction was rolled back."""


def connect(settings: DatabaseSettings, *, autocommit: bool = False) -> psycopg.Connection:
    """Open one connection, with a message the operator can act on when it fails."""
    try:
        return psycopg.connect(settings.url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(_cannot_connect("the database", settings.url, exc)) from exc


async def connect_async(
    settings: DatabaseSettings, *, autocommit: bool = False
) -> psycopg.AsyncConnection:
    """``connect``, for asyncio."""
    try:
        return await psycopg.AsyncConnection.connect(
            settings.url, autocommit=autocommit, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(_cannot_connect("the database", settings.url, exc)) from exc


def _cannot_connect(what: str, url: str, exc: psycopg.Error) -> str:
    """One line: which server, why (libpq's first line), and where to fix it."""
    why = error_line(exc)
    return redact(
        f"cannot connect to {what} at {url}: {why}; "
        "check database.url (or CITYOPS_DATABASE_URL) and that PostgreSQL runs"
    )


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    """The name of the database a URL names (PostgreSQL's default: ``postgres``)."""
    return str(conninfo_to_dict(url).get("dbname") or "postgres")


@contextlib.contextmanager
def _server(settings: DatabaseSettings) -> Iterator[psycopg.Connection]:
    """A connection to the server's maintenance database ``postgres``."""
    maintenance = make_conninfo(settings.url, dbname="postgres")
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        msg = _cannot_connect("the database server", settings.url, exc)
        raise psycopg.OperationalError(msg) from exc


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return (
        conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None
    )


def database_exists(settings: DatabaseSettings) -> bool:
    """Whether the database the URL names exists on its server."""
    with _server(settings) as conn:
        return _exists(conn, database_name(settings.url))


def ensure_database(settings: DatabaseSettings) -> bool:
    """Create the database the URL names if it does not exist; return whether it was created."""
    name = database_name(settings.url)
    with _server(settings) as conn:
        if _exists(conn, name):
            return False
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return True


def _migration_files(path: StoragePath) -> list[tuple[str, str]]:
    """Migrations for ``path`` in order: ``NNNN_x.sql`` for both, ``NNNN_x.<path>.sql`` for one."""
    folder = resources.files("store") / "migrations"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [
        (name.removesuffix(".sql"), (folder / name).read_text(encoding="utf-8"))
        for name in names
        if name.count(".") == 1 or name.endswith(f".{path.value}.sql")
    ]


def timescaledb_statements(settings: DatabaseSettings) -> list[sql.Composed]:
    """Turn each readings table into a hypertable with compression and retention policies."""
    statements = [sql.SQL("create extension if not exists timescaledb").format()]
    compress_after = sql.Literal(f"{settings.compress_after_days} days")
    drop_after = sql.Literal(f"{settings.retention_days} days")
    for kind in READING_KINDS:
        table = sql.Literal(kind.table)
        statements += [
            sql.SQL("select create_hypertable({}, by_range('ts', interval '1 day'))").format(table),
            sql.SQL(
                "alter table {} set (timescaledb.compress, "
                "timescaledb.compress_segmentby = 'device_id', "
                "timescaledb.compress_orderby = 'ts desc')"
            ).format(sql.Identifier(kind.table)),
            sql.SQL("select add_compression_policy({}, compress_after => interval {})").format(
                table, compress_after
            ),
            sql.SQL("select add_retention_policy({}, drop_after => interval {})").format(
                table, drop_after
            ),
        ]
    return statements


class TimescaleDBState(StrEnum):
    """What the server offers of TimescaleDB."""

    ABSENT = "absent"  # the extension is not installed
    NOT_PRELOADED = "not_preloaded"  # installed, but not in shared_preload_libraries
    READY = "ready"


def timescaledb_state(conn: psycopg.Connection) -> TimescaleDBState:
    """Whether the server can load the TimescaleDB extension, and if not, why."""
    row = conn.execute(
        "select 1 from pg_available_extensions where name = 'timescaledb'"
    ).fetchone()
    if row is None:
        return TimescaleDBState.ABSENT
    preload = conn.execute("select current_setting('shared_preload_libraries')").fetchone()
    libraries = {name.strip() for name in (preload[0] if preload else "").split(",")}
    return TimescaleDBState.READY if "timescaledb" in libraries else TimescaleDBState.NOT_PRELOADED


def choose_storage_path(wanted: str, state: TimescaleDBState) -> StoragePath:
    """The path a new schema takes for ``database.timescaledb`` = ``wanted`` on this server."""
    if wanted == "off":
        return StoragePath.POSTGRESQL
    if state is TimescaleDBState.READY:
        return StoragePath.TIMESCALEDB
    if state is TimescaleDBState.NOT_PRELOADED:
        msg = (
            "TimescaleDB is installed on the database server but not preloaded: add "
            "shared_preload_libraries = 'timescaledb' to postgresql.conf and restart PostgreSQL, "
            'or set database.timescaledb = "off" to build plain PostgreSQL tables'
        )
        raise MigrationError(msg)
    if wanted == "required":
        msg = (
            'database.timescaledb = "required" but the database server has no TimescaleDB: '
            'install it (package timescaledb-2-postgresql-15), or set it to "auto" or "off"'
        )
        raise MigrationError(msg)
    return StoragePath.POSTGRESQL


def storage_path(conn: psycopg.Connection) -> StoragePath:
    """The storage path the schema was built on."""
    row = conn.execute("select path from cityops_storage").fetchone()
    if row is None:
        msg = "the schema has no storage path: run `cityops migrate` first"
        raise MigrationError(msg)
    return StoragePath(row[0])


def migrate(settings: DatabaseSettings) -> MigrationReport:
    """Create or upgrade the schema; safe to run again and from several processes at once."""
    with connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            "create table if not exists cityops_migrations ("
            " name text primary key, applied_at timestamptz not null default now())"
        )
        conn.execute(
            "create table if not exists cityops_storage ("
            " path text not null, chosen_at timestamptz not null default now())"
        )
        state = timescaledb_state(conn)
        chosen = conn.execute("select path from cityops_storage").fetchone()
        if chosen:
            path, new_path = StoragePath(chosen[0]), None
        else:
            # Decided before anything is applied, so a server that cannot serve the wanted path
            # fails with nothing changed.
            path = new_path = choose_storage_path(settings.timescaledb, state)
        done = {row[0] for row in conn.execute("select name from cityops_migrations")}
        pending = [(name, text) for name, text in _migration_files(path) if name not in done]
        applied = []
        for name, text in pending:
            logger.info("applying migration %s", name)
            _execute(conn, name, text.encode())
            conn.execute("insert into cityops_migrations (name) values (%s)", (name,))
            applied.append(name)
            if new_path is not None and name == _READINGS_CREATED:
                # before the migrations after it: the rollups are continuous aggregates of
                # hypertables (0012)
                if new_path is StoragePath.TIMESCALEDB:
                    for statement in timescaledb_statements(settings):
                        _execute(conn, "storage:timescaledb", statement)
                conn.execute("insert into cityops_storage (path) values (%s)", (new_path.value,))
                applied.append(f"storage:{new_path.value}")
        if path is StoragePath.POSTGRESQL:
            try:
                applied.extend(f"partition:{name}" for name in create_ahead(conn))
            except psycopg.Error as exc:
                msg = f"creating partitions ahead failed: {error_line(exc)}"
                raise MigrationError(msg) from exc
    available = state is TimescaleDBState.READY
    if path is StoragePath.POSTGRESQL and available and settings.timescaledb != "off":
        logger.warning(
            "TimescaleDB is available but the schema was built on plain PostgreSQL; "
            "converting existing tables is a manual step (docs/operations.md)"
        )
    return MigrationReport(path=path, applied=tuple(applied), timescaledb_available=available)


def _execute(conn: psycopg.Connection, step: str, statement: bytes | sql.Composed) -> None:
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        msg = f"migration {step} failed: {error_line(exc)}"
        raise MigrationError(msg) from exc
