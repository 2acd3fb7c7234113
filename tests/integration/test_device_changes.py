"""Reading the registry's changes on a real server: each change once, none missed."""

from __future__ import annotations

import psycopg

from devices.changes import read_device_changes
from tests.plugin import register


def test_each_registration_retype_and_deletion_is_read_once(
    conn: psycopg.Connection, tag: str
) -> None:
    device = f"{tag}-a"
    everything = read_device_changes(conn, None)
    registered = dict(conn.execute("select device_id, type from devices").fetchall())
    assert everything.types == registered

    register(conn, {device: "manhole"})
    registration = read_device_changes(conn, everything.seen)
    assert registration.types == {device: "manhole"}
    assert read_device_changes(conn, registration.seen).types == {}

    # What ingest writes with every batch, and a re-import with the same type: no change to read.
    conn.execute("update devices set last_seen = now() where device_id = %s", (device,))
    conn.execute(
        "insert into devices (device_id, type, firmware) values (%s, 'manhole', '2.1') "
        "on conflict (device_id) do update set type = excluded.type, firmware = excluded.firmware",
        (device,),
    )
    unchanged = read_device_changes(conn, registration.seen)
    assert unchanged.types == {}

    conn.execute("update devices set type = 'light' where device_id = %s", (device,))
    retyped = read_device_changes(conn, unchanged.seen)
    assert retyped.types == {device: "light"}

    conn.execute("delete from devices where device_id = %s", (device,))
    deleted = read_device_changes(conn, retyped.seen)
    assert deleted.types == {device: None}

    register(conn, {device: "sweeper"})
    back = read_device_changes(conn, deleted.seen)
    assert back.types == {device: "sweeper"}
    assert read_device_changes(conn, back.seen).types == {}


def test_a_change_uncommitted_at_a_read_is_read_by_the_next_one_after_its_commit(
    conn: psycopg.Connection, database_url: str, tag: str
) -> None:
    slow, fast = f"{tag}-slow", f"{tag}-fast"
    start = read_device_changes(conn, None)
    with psycopg.connect(database_url) as other:
        # Its transaction starts (and takes its id) first, and commits last: a mark such as
        # "changed after the newest change read" would pass over it.
        other.execute("insert into devices (device_id, type) values (%s, 'manhole')", (slow,))
        register(conn, {fast: "light"})
        before_commit = read_device_changes(conn, start.seen)
        assert before_commit.types == {fast: "light"}
        other.commit()
    after_commit = read_device_changes(conn, before_commit.seen)
    assert after_commit.types == {slow: "manhole"}
    assert read_device_changes(conn, after_commit.seen).types == {}
