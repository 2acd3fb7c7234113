"""The demo's own database: never the deployment's, marked as demo data, refused when it is not.

``prepare`` takes, on the server the settings name, the database ``--database`` names, else the
configured one when it is already a demo database, else ``cityops_demo``. A demo database carries
the mark: the table ``cityops_demo``, made by the first demo that takes the database. A database
without the mark is taken (and marked) only while none of its tables holds a row; one that holds
anything is refused before anything in it changes. Each demo empties its database first
(``empty``): what a demo leaves is there to look at until the next one starts.
"""

from __future__ import annotations

import re
from typing import Final

import psycopg
from psycopg import sql

from redaction import redact
from store import db
from store.settings import DatabaseSettings

DEMO_DATABASE: Final = "cityops_demo"
_MARK_TABLE: Final = "cityops_demo"
# Any constant works; it only has to differ from the migration lock and be the same for every demo.
_CLAIM_LOCK_KEY: Final = 0x0C17_D3E0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
# Rows there say which schema is in place and that it is the demo's, not whose data it holds.
_BOOKKEEPING: Final = frozenset({"cityops_migrations", "cityops_storage", _MARK_TABLE})
# Every table that can hold data of its own: not the system's, not one an extension owns (PostGIS's
# spatial_ref_sys), not TimescaleDB's catalog, chunks or partitions (their parents show their rows).
_TABLES: Final = """
select n.nspname, c.relname
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p')
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_%'
  and n.nspname not like '\\_timescaledb%'
  and not exists (select from pg_inherits i where i.inhrelid = c.oid)
  and not exists (
    select from pg_depend d
    where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e'
  )
order by 1, 2
"""
_SHOWN_TABLES = 5


class DemoDatabaseError(Exception):
    """The demo cannot take the database asked for; the message says why and what to do."""


def is_demo_database(conn: psycopg.Connection) -> bool:
    """Whether the database carries the demo mark."""
    row = conn.execute("select to_regclass(%s) is not null", (f"public.{_MARK_TABLE}",)).fetchone()
    return bool(row and row[0])


def tables_with_rows(conn: psycopg.Connection) -> list[str]:
    """The tables (``schema.table``) that hold a row, the schema's bookkeeping aside."""
    held = []
    for schema, table in conn.execute(_TABLES).fetchall():
        if schema == "public" and table in _BOOKKEEPING:
            continue
        query = sql.SQL("select exists (select from {})").format(sql.Identifier(schema, table))
        row = conn.execute(query).fetchone()
        if row and row[0]:
            held.append(f"{schema}.{table}")
    return held


def choose(configured: DatabaseSettings, name: str | None) -> DatabaseSettings:
    """The demo's database: ``name``, else the configured one if a demo's, else the default."""
    if name is not None:
        if not _NAME.match(name):
            msg = (
                f"--database {name!r} is not a database name: up to 63 letters, digits, _ or -, "
                "starting with a letter or _"
            )
            raise DemoDatabaseError(msg)
        return configured.model_copy(update={"url": db.with_database(configured.url, name)})
    if db.database_exists(configured):
        with db.connect(configured) as conn:
            if is_demo_database(conn):
                return configured
    return configured.model_copy(update={"url": db.with_database(configured.url, DEMO_DATABASE)})


def claim(settings: DatabaseSettings) -> None:
    """Create the database if needed and mark it as the demo's; refuse one with other data."""
    db.ensure_database(settings)
    with db.connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
        if is_demo_database(conn):
            return
        held = tables_with_rows(conn)
        if held:
            shown = ", ".join(held[:_SHOWN_TABLES])
            if len(held) > _SHOWN_TABLES:
                shown += f" and {len(held) - _SHOWN_TABLES} more"
            msg = (
                f"the database {redact(settings.url)} holds data that is not the demo's (rows in "
                f"{shown}) and no demo mark: the demo writes only into a database of its own; "
                "give --database a new name, or one an earlier demo made"
            )
            raise DemoDatabaseError(msg)
        table = sql.Identifier(_MARK_TABLE)
        conn.execute(sql.SQL("create table {} (marked_at timestamptz not null)").format(table))
        conn.execute(
            sql.SQL("comment on table {} is {}").format(
                table, "this database holds cityops demo data: `cityops demo` writes here"
            )
        )
        conn.execute(sql.SQL("insert into {} values (now())").format(table))


def empty(settings: DatabaseSettings) -> None:
    """Empty a demo database of what an earlier demo left: every table but the bookkeeping.

    A demo replays last night's hour: two runs in one hour would be one city's readings to the
    scenes (one run's heartbeat in the middle of the other's open cover), and a run on another
    night would find every device silent for the day in between. Refuses a database without the
    demo mark.
    """
    with db.connect(settings) as conn:
        conn.execute("select pg_advisory_xact_lock(%s)", (_CLAIM_LOCK_KEY,))
        if not is_demo_database(conn):
            msg = f"the database {redact(settings.url)} is not a demo database: not emptied"
            raise DemoDatabaseError(msg)
        tables = [
            sql.Identifier(schema, table)
            for schema, table in conn.execute(_TABLES).fetchall()
            if not (schema == "public" and table in _BOOKKEEPING)
        ]
        if tables:
            conn.execute(
                sql.SQL("truncate {} restart identity cascade").format(sql.SQL(", ").join(tables))
            )


def prepare(
    configured: DatabaseSettings, name: str | None
) -> tuple[DatabaseSettings, db.MigrationReport]:
    """Choose, claim, migrate and empty the demo's database; return it and what the migration did.

    Each demo starts from an empty database of its own; what it leaves stays until the next.
    """
    database = choose(configured, name)
    claim(database)
    report = db.migrate(database)
    empty(database)
    return database, report
