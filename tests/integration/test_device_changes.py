"""Reading the registry's changes on a real server: each change once, none missed."""

from __future__ import annotations

import psycopg

from devices import credentials
from devices.changes import DeviceChanges, Registration, read_device_changes
from tests.plugin import register


def types(changes: DeviceChanges) -> dict[str, str | None]:
    return {d: r.type if r else None for d, r in changes.registrations.items()}


def test_each_registration_retype_and_deletion_is_read_once(
    conn: psycopg.Connection, tag: str
) -> None:
    device = f"{tag}-a"
    everything = read_device_changes(conn, None)
    registered = dict(conn.execute("select device_id, type from devices").fetchall())
    assert types(everything) == registered

    register(conn, {device: "manhole"})
    registration = read_device_changes(conn, everything.seen)
    assert types(registration) == {device: "manhole"}
    assert types(read_device_changes(conn, registration.seen)) == {}

    # What ingest writes with every batch, and a re-import with the same type: no change to read.
    conn.execute("update devices set last_seen = now() where device_id = %s", (device,))
    conn.execute(
        "insert into devices (device_id, type, firmware) values (%s, 'manhole', '2.1') "
        "on conflict (device_id) do update set type = excluded.type, firmware = excluded.firmware",
        (device,),
    )
    unchanged = read_device_changes(conn, registration.seen)
    assert types(unchanged) == {}

    conn.execute("update devices set type = 'light' where device_id = %s", (device,))
    retyped = read_device_changes(conn, unchanged.seen)
    assert types(retyped) == {device: "light"}

    conn.execute("delete from devices where device_id = %s", (device,))
    deleted = read_device_changes(conn, retyped.seen)
    assert types(deleted) == {device: None}

    register(conn, {device: "sweeper"})
    back = read_device_changes(conn, deleted.seen)
    assert types(back) == {device: "sweeper"}
    assert types(read_device_changes(conn, back.seen)) == {}


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
        assert types(before_commit) == {fast: "light"}
        other.commit()
    after_commit = read_device_changes(conn, before_commit.seen)
    assert types(after_commit) == {slow: "manhole"}
    assert types(read_device_changes(conn, after_commit.seen)) == {}


def test_a_new_gateway_retirement_or_revocation_is_a_change(
    conn: psycopg.Connection, tag: str
) -> None:
    device, gateway = f"{tag}-lt", f"{tag}-gw"
    register(conn, {gateway: "gateway", device: "light"})
    start = read_device_changes(conn, None)
    assert start.registrations[device] == Registration("light")

    conn.execute("update devices set gateway_id = %s where device_id = %s", (gateway, device))
    moved = read_device_changes(conn, start.seen)
    assert moved.registrations == {device: Registration("light", gateway)}

    credentials.issue(conn, [device])
    issued = read_device_changes(conn, moved.seen)
    assert issued.registrations == {}  # a credential changes nothing ingest checks
    credentials.revoke(conn, [device])
    revoked = read_device_changes(conn, issued.seen)
    assert revoked.registrations == {device: Registration("light", gateway, may_speak=False)}
    credentials.issue(conn, [device])
    speaks_again = read_device_changes(conn, revoked.seen)
    assert speaks_again.registrations == {device: Registration("light", gateway)}

    credentials.retire(conn, [device])
    retired = read_device_changes(conn, speaks_again.seen)
    assert retired.registrations == {device: Registration("light", gateway, may_speak=False)}
