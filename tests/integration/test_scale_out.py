"""Two `cityops ingest` processes on one shared subscription, one of them killed with -9.

Each worker has its own persistent session; the broker (Mosquitto) fills them round-robin and
does not hand a dead member's in-flight or queued messages to the survivor: they wait in the dead
worker's session until it reconnects. The figures (throughput, how long the share waits) are in
bench/ingest.py --workers 2 and --kill-one; this checks that nothing is lost or stored twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cityops.services import free_port
from tests.integration.test_crash import expected, readings, stored
from tests.integration.test_ingest import T0_MS, count
from tests.plugin import Publisher, forget_session, register, wait_for

N = 20_000
# Two readings published while one worker is dead: Mosquitto's round-robin gives one to each
# session, so the survivor is idle once its one is stored.
TAIL = 2


class Worker:
    """One `python -m cityops ingest` process with its own client id and metrics port."""

    def __init__(
        self, database_url: str, broker_url: str, client_id: str, group: str, log: Path
    ) -> None:
        self.client_id = client_id
        self.port = free_port()
        self.log = log
        self.env = {
            **os.environ,
            "CITYOPS_DATABASE_URL": database_url,
            "CITYOPS_MQTT_URL": broker_url,
            "CITYOPS_MQTT_CLIENT_ID": client_id,
            "CITYOPS_MQTT_SHARED_GROUP": group,
            "CITYOPS_METRICS_PORT": str(self.port),
            "CITYOPS_INGEST_BATCH_MAX_ROWS": "1000",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cityops", "ingest"], env=self.env, stdout=out, stderr=out
            )

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def metrics(self) -> dict[str, float]:
        """Samples summed over labels; rows are keyed ``rows:inserted`` and ``rows:duplicate``."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except OSError:
            return {}  # not listening yet
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cityops_ingest_messages_total":
                    key = "messages"
                elif sample.name == "cityops_ingest_rows_total":
                    key = f"rows:{sample.labels['result']}"
                else:
                    key = sample.name
                sums[key] = sums.get(key, 0.0) + sample.value
        return sums

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")


@pytest.fixture
def workers(
    database_url: str, mosquitto_url: str, tag: str, tmp_path: Path
) -> Iterator[list[Worker]]:
    """Two workers, a and b, on one shared group; stopped and their sessions removed after."""
    made = [
        Worker(database_url, mosquitto_url, f"ingest-{tag}-{k}", f"g{tag}", tmp_path / f"{k}.log")
        for k in ("a", "b")
    ]
    yield made
    for worker in made:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.stop()
        forget_session(mosquitto_url, worker.client_id)


def stored_from(conn: psycopg.Connection, device: str, first: int) -> int:
    """Rows of ``device`` from reading ``first`` on (readings are one second apart)."""
    row = conn.execute(
        "select count(*) from manhole_readings where device_id = %s and ts >= to_timestamp(%s)",
        (device, (T0_MS + first * 1000) / 1000),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_kill_9_of_one_of_two_shared_workers_loses_and_duplicates_nothing_and_its_share_waits(
    conn, tag, workers: list[Worker], publisher: Publisher
) -> None:
    a, b = workers
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    # Each worker's session joins the group, then goes offline: the backlog is split between
    # the two sessions while both are down.
    for worker in workers:
        worker.start()
    wait_for(
        lambda: all(w.logged(f"subscribed to $share/g{tag}/") for w in workers),
        what="both workers subscribed",
    )
    assert [w.stop() for w in workers] == [0, 0]
    messages = readings(N + TAIL, device)
    publisher.publish_many(messages[:N])

    for worker in workers:
        worker.start()
    wait_for(lambda: b.metrics().get("messages", 0) >= 1_000, what="b under way")
    b.kill()
    assert count(conn, "manhole_readings", device) < N, "the kill came too late to test anything"

    # Published after the kill, behind the whole backlog: once a tail reading is stored, the
    # survivor has committed everything its session held before it (one session delivers in
    # order and ingest commits in order). The dead worker's unacknowledged and queued share is
    # not among it, and neither is its part of the tail.
    publisher.publish_many(messages[N:])
    wait_for(lambda: stored_from(conn, device, N) > 0, what="a tail reading via the survivor")
    survivor = wait_for(
        lambda: (m := a.metrics()).get("cityops_ingest_buffered_messages", 1) == 0 and m,
        what="the survivor idle",
    )
    before_restart = count(conn, "manhole_readings", device)
    tail_while_dead = stored_from(conn, device, N)
    assert before_restart - tail_while_dead < N, (
        "the survivor got the dead worker's share (or b had finished before the kill)"
    )
    assert tail_while_dead < TAIL, "the survivor got the dead worker's part of the tail"

    b.start()
    wait_for(
        lambda: count(conn, "manhole_readings", device) == N + TAIL,
        timeout_s=60,
        what=f"all {N + TAIL} readings after the restart",
    )
    assert stored(conn, device) == expected(N + TAIL)
    restarted = wait_for(
        lambda: (m := b.metrics()).get("rows:inserted", 0) == N + TAIL - before_restart and m,
        what="the restarted worker's metrics",
    )
    # The restarted session delivered exactly what was missing, plus (counted as duplicates,
    # not stored) whatever b had committed but not yet acknowledged when it was killed.
    assert restarted["messages"] == restarted["rows:inserted"] + restarted["rows:duplicate"]
    assert a.metrics()["messages"] == survivor["messages"], "the survivor got more after restart"
    assert b.stop() == 0
