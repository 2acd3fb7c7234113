"""The quarantine allows recovery: list, show, replay after the cause is fixed, purge."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import psycopg
import pytest
from typer.testing import CliRunner

from cityops.cli import app
from tests.plugin import (
    Publisher,
    migrated_database,
    register,
    wait_for,
)

T0_MS = 1_764_000_000_000


@pytest.fixture(scope="module")
def database_url(server_url: str) -> Iterator[str]:
    """A database of this module's own: replay by reason takes every entry of that reason."""
    with migrated_database(server_url) as url:
        yield url


@pytest.fixture
def cli(database_url: str):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), env={"CITYOPS_DATABASE_URL": database_url})

    return invoke


def entries(conn: psycopg.Connection, device: str) -> list[tuple[str, bytes]]:
    rows = conn.execute(
        "select reason, payload from quarantine where topic like %s order by id",
        (f"%/{device}/%",),
    ).fetchall()
    return [(reason, bytes(payload)) for reason, payload in rows]


def stored(conn: psycopg.Connection, device: str) -> list[tuple[int, float]]:
    rows = conn.execute(
        "select (extract(epoch from ts) * 1000)::bigint, tilt_deg from manhole_readings "
        "where device_id = %s order by ts",
        (device,),
    ).fetchall()
    return [(int(ts), tilt) for ts, tilt in rows]


def test_readings_of_a_device_registered_late_are_replayed_once(
    cli, conn, tag, make_settings, start_worker, publisher: Publisher
) -> None:
    late, other = f"{tag}-late", f"{tag}-other"
    register(conn, {other: "manhole"})
    start_worker(make_settings(max_payload_bytes=1024))
    topic = f"cityops/v1/manhole/{late}/telemetry"
    good = [json.dumps({"ts": T0_MS + i, "tilt_deg": i}).encode() for i in range(3)]
    # One array: its first reading is fine once the device exists, its second never will be.
    mixed = json.dumps([{"ts": T0_MS + 10, "tilt_deg": 10}, {"ts": T0_MS + 11, "tilt_deg": 999}])
    oversized = json.dumps({"ts": T0_MS + 20, "tilt_deg": 1, "pad": "x" * 2000}).encode()
    publisher.publish_many([(topic, p) for p in [*good, mixed.encode(), oversized]])
    publisher.publish(f"cityops/v1/manhole/{other}/telemetry", b'{"tilt": 1}')
    wait_for(lambda: len(entries(conn, late)) == 5, what="5 quarantine entries")
    assert [reason for reason, _ in entries(conn, late)] == ["unknown_device"] * 4 + ["oversized"]

    listed = cli("quarantine", "list", "--reason", "unknown_device", "--since", "1h")
    assert listed.exit_code == 0, listed.output
    assert listed.output.count(f"/{late}/telemetry") == 4
    assert other not in listed.output
    first_id = conn.execute("select min(id) from quarantine where topic = %s", (topic,)).fetchone()[
        0
    ]  # type: ignore[index]
    shown = cli("quarantine", "show", str(first_id))
    assert shown.exit_code == 0, shown.output
    assert good[0].decode() in shown.output
    assert "reason: unknown_device" in shown.output

    register(conn, {late: "manhole"})
    replayed = cli("quarantine", "replay", "--reason", "unknown_device")
    assert replayed.exit_code == 0, replayed.output
    assert re.search(r"replayed 4 messages: 4 readings stored, 0 already stored", replayed.output)
    assert "back in quarantine: out_of_range 1" in replayed.output
    assert stored(conn, late) == [
        (T0_MS, 0.0),
        (T0_MS + 1, 1.0),
        (T0_MS + 2, 2.0),
        (T0_MS + 10, 10.0),
    ]
    # The mixed message left one entry with today's reason; the oversized one is untouched.
    assert entries(conn, late) == [
        ("oversized", oversized[:1024]),
        ("out_of_range", mixed.encode()),
    ]
    assert [r for r, _ in entries(conn, other)] == ["unknown_field"]

    again = cli("quarantine", "replay", "--reason", "out_of_range")
    assert again.exit_code == 0, again.output
    assert "replayed 1 messages: 0 readings stored, 1 already stored" in again.output
    assert len(stored(conn, late)) == 4

    oversized_id = conn.execute(
        "select id from quarantine where topic = %s and reason = 'oversized'", (topic,)
    ).fetchone()[0]  # type: ignore[index]
    kept = cli("quarantine", "replay", str(oversized_id))
    assert "1 entries not replayable" in kept.output
    assert ("oversized", oversized[:1024]) in entries(conn, late)


def test_purge_deletes_only_entries_older_than_the_given_time(cli, conn, tag) -> None:
    device = f"{tag}-old"
    conn.execute(
        "insert into quarantine (received_at, topic, reason, detail, payload, payload_bytes) "
        "values (now() - interval '40 days', %s, 'bad_topic', 'x', 'a', 1), "
        "(now() - interval '2 days', %s, 'bad_topic', 'x', 'b', 1)",
        (f"cityops/v1/manhole/{device}/x", f"cityops/v1/manhole/{device}/y"),
    )
    purged = cli("quarantine", "purge", "--before", "30d")
    assert purged.exit_code == 0, purged.output
    assert re.search(r"deleted [1-9]\d* entries", purged.output)
    assert entries(conn, device) == [("bad_topic", b"b")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay",), "name entry ids or --reason"),
        (("replay", "1", "--reason", "bad_topic"), "name entry ids or --reason"),
        (("list", "--reason", "nonsense"), "no quarantine reason 'nonsense'"),
        (("purge", "--before", "last week"), "not a time: 'last week'"),
        (("show", "999999999"), "no quarantine entry 999999999"),
    ],
)
def test_bad_arguments_end_in_one_line_and_exit_2(cli, args, message) -> None:
    result = cli("quarantine", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_replay_leaves_entries_under_another_topic_prefix_as_they_are(cli, conn, tag) -> None:
    device = f"{tag}-site-b"
    register(conn, {device: "manhole"})
    topic = f"site-b/cityops/v1/manhole/{device}/telemetry"
    entry_id = conn.execute(
        "insert into quarantine (received_at, topic, reason, detail, payload, payload_bytes) "
        "values (now(), %s, 'unknown_device', 'x', %s, 15) returning id",
        (topic, b'{"tilt_deg": 1}'),
    ).fetchone()[0]  # type: ignore[index]
    replayed = cli("quarantine", "replay", str(entry_id))
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 0 messages" in replayed.output
    kept = conn.execute("select topic, reason from quarantine where id = %s", (entry_id,))
    assert kept.fetchone() == (topic, "unknown_device")
