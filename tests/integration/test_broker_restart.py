"""A graceful Mosquitto restart in the middle of a QoS 1 stream loses no acknowledged reading.

The broker is a private Mosquitto from the shipped config/mosquitto/cityops.conf with its store in
the test's directory. SIGTERM makes it write the store and exit; it starts again on the same port
from the same store. The publisher reconnects within 0.2 s, ingest only after 1 s (its reconnect
delay), so readings reach the restarted broker before ingest is back, as devices' readings do.
Nothing is lost with the shipped plain subscription, nor with workers on disjoint topic filters;
a shared subscription loses what arrives before its members subscribe again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityops.services import free_port, start_mosquitto
from tests.integration.test_ingest import T0_MS
from tests.plugin import MOSQUITTO_CONF, RunningWorker, register, wait_for
from wire.mqtt import MqttSettings

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


KINDS = {
    "manhole": ("manhole_readings", {"tilt_deg": 1.5}),
    "light": ("light_readings", {"lamp_on": True}),
}


def reading(device_type: str, device: str, i: int) -> tuple[str, str]:
    values = KINDS[device_type][1]
    return f"cityops/v1/{device_type}/{device}/telemetry", json.dumps(
        {"ts": T0_MS + i * 1000, **values}
    )


def stored_indexes(conn: psycopg.Connection, device_type: str, device: str) -> set[int]:
    rows = conn.execute(
        "select ((extract(epoch from ts) * 1000)::bigint - %s) / 1000 "
        f"from {KINDS[device_type][0]} where device_id = %s",
        (T0_MS, device),
    ).fetchall()
    return {int(row[0]) for row in rows}


def publish_until_stored(
    publisher: AckRecordingPublisher,
    conn: psycopg.Connection,
    device_type: str,
    device: str,
    i: int,
) -> None:
    wait_for(
        lambda: (
            publisher.stream([reading(device_type, device, i)])
            and i in stored_indexes(conn, device_type, device)
        ),
        what=f"{device_type} reading {i} stored",
    )


@dataclass
class Outcome:
    """Per device, the readings the broker acknowledged and those stored (indexes 1..n)."""

    acknowledged: dict[str, set[int]]
    stored: dict[str, set[int]]
    acked_while_ingest_away: int

    @property
    def lost(self) -> list[tuple[str, int]]:
        return sorted(
            (device, i)
            for device, acked in self.acknowledged.items()
            for i in acked - self.stored[device]
        )


def stream_through_restart(
    conn: psycopg.Connection,
    broker: RestartableMosquitto,
    workers: list[RunningWorker],
    devices: dict[str, str],
) -> Outcome:
    """Stream N readings over ``devices`` (id -> type) and restart ``broker`` a third of the way."""
    per_device = N // len(devices)
    publisher = AckRecordingPublisher(broker.url)
    try:
        # Until ingest has subscribed, reading 0 reaches nobody: repeat it until it is stored.
        for device, device_type in devices.items():
            publish_until_stored(publisher, conn, device_type, device, 0)
        order = [(device, i) for i in range(1, per_device + 1) for device in devices]
        restarted = threading.Event()
        acked_while_ingest_away = 0

        def count_gap() -> None:
            nonlocal acked_while_ingest_away
            if restarted.is_set() and not any(
                worker.metric("cityops_ingest_mqtt_connected") for worker in workers
            ):
                acked_while_ingest_away += 1

        publisher.on_ack = count_gap
        mids: list[int] = []
        messages = [reading(devices[device], device, i) for device, i in order]
        sender = threading.Thread(target=lambda: mids.extend(publisher.stream(messages)))
        sender.start()
        wait_for(lambda: len(publisher.acked) > N // 3, what="a third of the stream acknowledged")
        broker.stop()
        assert (broker.workdir / "mosquitto.db").stat().st_size > 0, "Mosquitto saved no store"
        broker.start()
        restarted.set()
        sender.join(timeout=60)
        assert not sender.is_alive(), "the stream did not finish"
        # A last reading per device, repeated until stored, went through the broker after every
        # other one, and each worker handles its messages in the order the broker sent them.
        for device, device_type in devices.items():
            publish_until_stored(publisher, conn, device_type, device, per_device + 1)
    finally:
        publisher.close()
    acknowledged: dict[str, set[int]] = {device: set() for device in devices}
    for (device, i), mid in zip(order, mids, strict=True):
        if mid in publisher.acked:
            acknowledged[device].add(i)
    stored = {
        device: stored_indexes(conn, device_type, device) - {0, per_device + 1}
        for device, device_type in devices.items()
    }
    return Outcome(acknowledged, stored, acked_while_ingest_away)


def ingest_settings(make_settings, broker: RestartableMosquitto, client_id: str, **mqtt: object):
    """The shipped mqtt settings (but the URL and client id), with ``mqtt`` changed."""
    return make_settings().model_copy(
        update={"mqtt": MqttSettings(url=broker.url, client_id=client_id, **mqtt)}
    )


@pytest.mark.parametrize("protocol", ["auto", "3.1.1"])
def test_graceful_broker_restart_mid_stream_loses_no_acknowledged_reading(
    mosquitto, conn, tag, make_settings, start_worker, protocol
) -> None:
    devices = {f"{tag}-mh": "manhole"}
    register(conn, devices)
    worker = start_worker(
        ingest_settings(make_settings, mosquitto, f"ingest-{tag}", protocol=protocol)
    )
    outcome = stream_through_restart(conn, mosquitto, [worker], devices)
    assert outcome.acked_while_ingest_away > 0, (
        "no reading reached the broker while ingest was away"
    )
    assert [len(acked) for acked in outcome.acknowledged.values()] == [N]
    assert not outcome.lost, (
        f"{len(outcome.lost)} of {N} acknowledged readings lost "
        f"({outcome.acked_while_ingest_away} acknowledged while ingest was away)"
    )
    assert outcome.stored == outcome.acknowledged


def test_workers_on_disjoint_topic_filters_lose_nothing_across_a_broker_restart(
    mosquitto, conn, tag, make_settings, start_worker
) -> None:
    devices = {f"{tag}-mh": "manhole", f"{tag}-lt": "light"}
    register(conn, devices)
    workers = [
        start_worker(
            ingest_settings(
                make_settings,
                mosquitto,
                f"ingest-{tag}-{device_type}",
                topic_filters=(f"cityops/v1/{device_type}/#",),
            )
        )
        for device_type in devices.values()
    ]
    outcome = stream_through_restart(conn, mosquitto, workers, devices)
    assert outcome.acked_while_ingest_away > 0, (
        "no reading reached the broker while ingest was away"
    )
    assert not outcome.lost, f"{len(outcome.lost)} of {N} acknowledged readings lost"
    assert outcome.stored == outcome.acknowledged
    # Each worker received only its own part.
    for worker, device_type in zip(workers, devices.values(), strict=True):
        other = "light" if device_type == "manhole" else "manhole"
        assert worker.metric("cityops_ingest_rows_total", kind=device_type, result="inserted") > 0
        assert worker.metric("cityops_ingest_rows_total", kind=other, result="inserted") == 0


def test_a_shared_subscription_on_mosquitto_loses_what_arrives_before_the_workers_resubscribe(
    mosquitto, conn, tag, make_settings, start_worker
) -> None:
    devices = {f"{tag}-mh": "manhole"}
    register(conn, devices)
    workers = [
        start_worker(
            ingest_settings(make_settings, mosquitto, f"ingest-{tag}-{k}", shared_group=f"g{tag}")
        )
        for k in range(2)
    ]
    outcome = stream_through_restart(conn, mosquitto, workers, devices)
    # What the restarted broker acknowledged before a member subscribed again matched nobody
    # (Mosquitto's store holds no shared subscription) and was dropped; only readings it had
    # delivered before it stopped and that the publisher sent again (at most a window) survive.
    assert outcome.acked_while_ingest_away > WINDOW
    assert len(outcome.lost) >= outcome.acked_while_ingest_away - WINDOW
