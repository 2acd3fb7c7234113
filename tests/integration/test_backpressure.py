"""Ingest as a process, through a long database outage under a flood of maximum-size payloads.

Memory stays within the stated bound (a process baseline plus ``ingest.buffer_max_bytes``), the
connection to the broker survives several keep-alive periods, and once the database takes
writes again every reading lands exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from cityops.services import free_port
from tests.plugin import Publisher, forget_session, refusing_inserts, register, wait_for

T0_MS = 1_764_000_000_000
MAX_PAYLOAD = 64 * 1024
BUFFER_MAX_BYTES = 24 * 1024 * 1024
KEEPALIVE_S = 5


def metrics(port: int) -> dict[str, float]:
    """The process's samples by name and labels; empty while its endpoint is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except urllib.error.URLError:
        return {}
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def rss_bytes(pid: int) -> int:
    """Resident memory of ingest: the writer process and its receiver."""
    writer = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [writer, *writer.children(recursive=True)])


def full_size_reading(device: str, i: int) -> tuple[str, bytes]:
    body = f'{{"ts": {T0_MS + i}, "tilt_deg": 1.5}}'.encode()
    return f"cityops/v1/manhole/{device}/telemetry", body + b" " * (MAX_PAYLOAD - len(body))


def test_a_flood_through_a_long_outage_stays_in_memory_bounds_and_keeps_the_connection(
    conn: psycopg.Connection,
    database_url: str,
    mosquitto_url: str,
    tag: str,
    tmp_path: Path,
) -> None:
    device = f"{tag}-mh"
    register(conn, {device: "manhole"})
    with refusing_inserts(conn, tag) as end_outage:
        port = free_port()
        env = {
            **os.environ,
            "CITYOPS_DATABASE_URL": database_url,
            "CITYOPS_MQTT_URL": mosquitto_url,
            "CITYOPS_MQTT_CLIENT_ID": f"flood-{tag}",
            "CITYOPS_MQTT_SHARED_GROUP": f"g{tag}",
            "CITYOPS_MQTT_KEEPALIVE_S": str(KEEPALIVE_S),
            "CITYOPS_METRICS_PORT": str(port),
            "CITYOPS_INGEST_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
            "CITYOPS_INGEST_BUFFER_MAX_BYTES": str(BUFFER_MAX_BYTES),
            "CITYOPS_INGEST_BATCH_MAX_ROWS": "100",
            "CITYOPS_INGEST_RETRY_MAX_S": "1",
        }
        window = BUFFER_MAX_BYTES // (MAX_PAYLOAD + 4096)
        with (tmp_path / "ingest.log").open("wb") as log:
            ingest = subprocess.Popen(
                [sys.executable, "-m", "cityops", "ingest"],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        publisher = Publisher(mosquitto_url, mqtt.MQTTProtocolVersion.MQTTv5)
        try:
            wait_for(
                lambda: metrics(port).get("cityops_ingest_mqtt_connected[]") == 1,
                what="ingest connected",
            )
            baseline = rss_bytes(ingest.pid)
            flood = [full_size_reading(device, i) for i in range(1_500)]  # 98 MB, 16 x the bound
            publisher.publish_many(flood)
            wait_for(
                lambda: metrics(port).get("cityops_ingest_buffered_messages[]") == window,
                what="a full receive window",
            )
            outage_ends = time.monotonic() + 3.5 * KEEPALIVE_S
            peak = 0
            while time.monotonic() < outage_ends:  # watched for 3.5 keep-alive periods
                peak = max(peak, rss_bytes(ingest.pid))
                now = metrics(port)
                assert now["cityops_ingest_mqtt_connected[]"] == 1
                assert now["cityops_ingest_buffered_messages[]"] <= window
                time.sleep(0.2)
            assert peak - baseline < 1.5 * BUFFER_MAX_BYTES, (peak, baseline)
            assert metrics(port)["cityops_ingest_database_errors_total[('kind', 'refused')]"] >= 3
            end_outage()
            wait_for(
                lambda: (
                    conn.execute(
                        "select count(*) from manhole_readings where device_id = %s", (device,)
                    ).fetchone()
                    == (1_500,)
                ),
                timeout_s=60,
                what="every reading of the flood",
            )
            final = metrics(port)
            assert final["cityops_ingest_mqtt_connections_total[]"] == 1  # never reconnected
            duplicates = "cityops_ingest_rows_total[('kind', 'manhole'), ('result', 'duplicate')]"
            assert final.get(duplicates, 0) == 0
        finally:
            publisher.close()
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(timeout=30)
            forget_session(mosquitto_url, f"flood-{tag}")
