"""A graceful Mosquitto restart in the middle of a QoS 1 stream loses no acknowledged reading.

The broker is a private Mosquitto from the shipped config/mosquitto/cityops.conf with its store in
the test's directory. SIGTERM makes it write the store and exit; it starts again on the same port
from the same store. The publisher reconnects within 0.2 s, ingest only after 1 s (its reconnect
delay), so readings reach the restarted broker before ingest is back, as devices' readings do.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityops.services import free_port, start_mosquitto
from cityops.settings import MqttSettings
from tests.integration.test_ingest import T0_MS
from tests.plugin import MOSQUITTO_CONF, RunningWorker, register, wait_for

N = 10_000  # readings in the stream
WINDOW = 100  # readings the publisher has awaiting their PUBACK at most


class RestartableMosquitto:
    """A private Mosquitto that stops (SIGTERM, waiting for it to exit) and starts again on the
    same port with the same persistence directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._running = contextlib.ExitStack()

    def start(self) -> None:
        self._running.enter_context(start_mosquitto(MOSQUITTO_CONF, self.workdir, self.port))

    def stop(self) -> None:
        self._running.close()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    if shutil.which("mosquitto") is None:
        pytest.skip("a broker restart needs mosquitto (Debian: apt-get install mosquitto)")
    broker = RestartableMosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


class AckRecordingPublisher:
    """QoS 1, a window of WINDOW readings at a time, each window once the broker has acknowledged
    the previous one; reconnects by itself within 0.2 s and sends again what was not acknowledged.
    ``acked`` holds the message ids the broker acknowledged."""

    def __init__(self, url: str) -> None:
        settings = MqttSettings(url=url)
        self.acked: set[int] = set()
        self.on_ack: Callable[[], None] = lambda: None
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_publish = self._on_publish
        self.client.max_inflight_messages_set(WINDOW)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.2)
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._cond:
            self.acked.add(mid)
            self._cond.notify_all()
        self.on_ack()

    def stream(self, messages: list[tuple[str, str]]) -> list[int]:
        """Publish ``messages`` window by window; return their message ids."""
        mids: list[int] = []
        for start in range(0, len(messages), WINDOW):
            window = [
                self.client.publish(topic, payload, qos=1).mid
                for topic, payload in messages[start : start + WINDOW]
            ]
            mids.extend(window)
            with self._cond:
                assert self._cond.wait_for(partial(self.acked.issuperset, window), timeout=30), (
                    f"the broker did not acknowledge readings {start}-{start + len(window) - 1}"
                )
        return mids

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def reading(device: str, i: int) -> tuple[str, str]:
    return f"cityops/v1/manhole/{device}/telemetry", json.dumps(
        {"ts": T0_MS + i * 1000, "tilt_deg": 1.5}
    )


def stored_indexes(conn: psycopg.Connection, table: str, device: str) -> set[int]:
    rows = conn.execute(
        f"select ((extract(epoch from ts) * 1000)::bigint - %s) / 1000 from {table} "
        "where device_id = %s",
        (T0_MS, device),
    ).fetchall()
    return {int(row[0]) for row in rows}


def test_graceful_broker_restart_mid_stream_loses_no_acknowledged_reading(
    mosquitto, conn, tag, make_settings, start_worker
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    shipped = make_settings().model_copy(
        update={"mqtt": MqttSettings(url=mosquitto.url, client_id=f"ingest-{tag}")}
    )
    running: RunningWorker = start_worker(shipped)
    publisher = AckRecordingPublisher(mosquitto.url)
    try:
        # Until ingest has subscribed, reading 0 reaches nobody: repeat it until it is stored.
        wait_for(
            lambda: (
                publisher.stream([reading(device, 0)])
                and 0 in stored_indexes(conn, "manhole_readings", device)
            ),
            what="ingest subscribed",
        )
        messages = [reading(device, i) for i in range(1, N + 1)]
        restarted = threading.Event()
        acked_while_ingest_away = 0

        def count_gap() -> None:
            nonlocal acked_while_ingest_away
            if restarted.is_set() and running.metric("cityops_ingest_mqtt_connected") == 0:
                acked_while_ingest_away += 1

        publisher.on_ack = count_gap
        mids: list[int] = []
        sender = threading.Thread(target=lambda: mids.extend(publisher.stream(messages)))
        sender.start()
        wait_for(lambda: len(publisher.acked) > N // 3, what="a third of the stream acknowledged")
        mosquitto.stop()
        assert (mosquitto.workdir / "mosquitto.db").stat().st_size > 0
        mosquitto.start()
        restarted.set()
        sender.join(timeout=60)
        assert not sender.is_alive(), "the stream did not finish"
        # A last reading, repeated until stored, went through the broker after every other one.
        wait_for(
            lambda: (
                publisher.stream([reading(device, N + 1)])
                and N + 1 in stored_indexes(conn, "manhole_readings", device)
            ),
            what="the last reading stored",
        )
    finally:
        publisher.close()
    acknowledged = {
        i for i, mid in zip(range(1, N + 1), mids, strict=True) if mid in publisher.acked
    }
    assert len(acknowledged) == N
    stored = stored_indexes(conn, "manhole_readings", device) - {0, N + 1}
    assert acked_while_ingest_away > 0, "no reading reached the broker while ingest was away"
    lost = sorted(acknowledged - stored)
    assert not lost, (
        f"{len(lost)} of {N} acknowledged readings lost ({acked_while_ingest_away} acknowledged "
        f"while ingest was away), first {lost[:5]}"
    )
    assert stored == acknowledged
