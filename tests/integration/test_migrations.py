"""Migrations on a real server: idempotent, path chosen by what the server offers."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from store import db
from store.settings import DatabaseSettings
from tests.plugin import create_database, drop_database
from wire.contract import READING_KINDS


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    url = create_database(server_url)
    yield url
    drop_database(server_url, url)


def schema(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select table_name, column_name, data_type from information_schema.columns "
            "where table_schema = 'public' order by 1, 2"
        ).fetchall()


def test_migrate_twice_changes_nothing_the_second_time(empty_database: str) -> None:
    settings = DatabaseSettings(url=empty_database)
    first = db.migrate(settings)
    before = schema(empty_database)
    second = db.migrate(settings)
    assert first.applied[0] == "0001_base"
    assert second.applied == ()
    assert schema(empty_database) == before
    tables = {row[0] for row in before}
    assert {
        "units",
        "regions",
        "assets",
        "devices",
        "quarantine",
        *(k.table for k in READING_KINDS),
    } <= tables


def test_storage_path_follows_whether_the_server_has_timescaledb(empty_database: str) -> None:
    report = db.migrate(DatabaseSettings(url=empty_database))
    with psycopg.connect(empty_database) as conn:
        available = db.timescaledb_state(conn) is db.TimescaleDBState.READY
        extensions = conn.execute(
            "select count(*) from pg_extension where extname = 'timescaledb'"
        ).fetchone()
    assert report.timescaledb_available is available
    if available:
        assert report.path is db.StoragePath.TIMESCALEDB
        assert extensions == (1,)
    else:
        assert report.path is db.StoragePath.POSTGRESQL
        assert extensions == (0,)


def test_ensure_database_creates_it_once(server_url: str) -> None:
    url = db.with_database(server_url, "cityops_test_ensure")
    try:
        assert db.ensure_database(DatabaseSettings(url=url)) is True
        assert db.ensure_database(DatabaseSettings(url=url)) is False
    finally:
        drop_database(server_url, url)


def test_concurrent_migrations_do_not_collide(empty_database: str) -> None:
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            db.migrate(DatabaseSettings(url=empty_database))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("select count(*) from cityops_storage").fetchone() == (1,)
