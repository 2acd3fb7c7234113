"""How fast `cityops ingest` drains a backlog, against a bare client and a naive ingester.

A private Mosquitto (config/mosquitto/cityops.conf) queues the same backlog for three offline
persistent sessions; then each contender, in its own process, drains its copy:
  bare     paho-mqtt, MQTT 5, QoS 1, manual ack every 5,000, no database work (the ceiling);
  cityops  `cityops ingest` as shipped (decode, validate, binary COPY, ack after commit);
  cityops_mqtt311  the same over MQTT 3.1.1 (mqtt.protocol = "3.1.1"; no MQTT 5 properties);
  naive    auto-ack, one INSERT per message, autocommit (what a quick script does).
Reported: messages/s, client CPU microseconds per message, peak RSS, RSS samples while draining,
and ratios against the bare client measured in the same run; time and CPU count from each
contender's first handled message to its last, so interpreter start-up is left out. The last
line is JSON.

Usage: python bench/ingest.py [--messages 200000] [--naive-messages 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cityops import db  # noqa: E402
from cityops.services import start_mosquitto  # noqa: E402
from cityops.settings import DatabaseSettings, MqttSettings  # noqa: E402

DEVICES = 1000
T0_MS = 1_764_000_000_000
TOPIC = "cityops/v1/#"


def payload(i: int) -> tuple[str, bytes]:
    device = f"bench-mh-{i % DEVICES:04d}"
    body = {
        "ts": T0_MS + (i // DEVICES) * 1000,
        "tilt_deg": (i % 900) / 10,
        "cover_open": False,
        "battery_pct": 87.5,
        "rssi_dbm": -91,
    }
    return f"cityops/v1/manhole/{device}/telemetry", json.dumps(body).encode()


def client_id(role: str, tag: str) -> str:
    """A session name within MQTT 3.1.1's 23 characters."""
    return f"b-{role[:16]}-{tag[:4]}"


def v5_client(client_id: str, *, manual_ack: bool) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
    )


def connect_props(receive_max: int = 20000) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_max
    return props


def make_session(url: str, client_id: str, group: str) -> None:
    """Create an offline persistent session subscribed (shared group) to the contract topics."""
    s = MqttSettings(url=url)
    client = v5_client(client_id, manual_ack=True)
    client.connect(s.host, s.port, clean_start=True, properties=connect_props())
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.loop_start()
    client.subscribe(f"$share/{group}/{TOPIC}", options=SubscribeOptions(qos=1))
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def publish_backlog(url: str, n: int) -> float:
    s = MqttSettings(url=url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(5000)
    client.max_queued_messages_set(0)
    client.connect(s.host, s.port)
    client.loop_start()
    started = time.perf_counter()
    last = None
    for i in range(n):
        topic, body = payload(i)
        last = client.publish(topic, body, qos=1)
        if i % 5000 == 4999:
            last.wait_for_publish(60)
    assert last is not None
    last.wait_for_publish(60)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


# -- contenders run in child processes: python bench/ingest.py --role ROLE ... ----------------


def role_bare(url: str, client_id: str, n: int, progress: Path) -> None:
    s = MqttSettings(url=url)
    client = v5_client(client_id, manual_ack=True)
    state = {"count": 0, "mids": []}

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        state["mids"].append(msg.mid)
        state["count"] += 1
        if state["count"] == 1 or len(state["mids"]) >= 5000 or state["count"] >= n:
            for mid in state["mids"]:
                c.ack(mid, 1)
            state["mids"].clear()
            progress.write_text(str(state["count"]))
        if state["count"] >= n:
            c.disconnect()

    client.on_message = on_message
    client.connect(s.host, s.port, clean_start=False, properties=connect_props())
    client.loop_forever()


def role_naive(url: str, client_id: str, n: int, database_url: str) -> None:
    s = MqttSettings(url=url)
    conn = psycopg.connect(database_url, autocommit=True)
    client = v5_client(client_id, manual_ack=False)
    state = {"count": 0}

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        reading = json.loads(msg.payload)
        device = msg.topic.split("/")[3]
        conn.execute(
            "insert into manhole_readings (device_id, ts, tilt_deg, cover_open, battery_pct, "
            "rssi_dbm) values (%s, to_timestamp(%s / 1000.0), %s, %s, %s, %s) "
            "on conflict do nothing",
            (
                device,
                reading["ts"],
                reading["tilt_deg"],
                reading["cover_open"],
                reading["battery_pct"],
                reading["rssi_dbm"],
            ),
        )
        state["count"] += 1
        if state["count"] >= n:
            c.disconnect()

    client.on_message = on_message
    client.connect(s.host, s.port, clean_start=False, properties=connect_props())
    client.loop_forever()


# -- measuring ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def stored(database_url: str, table: str = "manhole_readings") -> int:
    """Rows stored so far: the progress of the contenders that write."""
    with psycopg.connect(database_url) as conn:
        return int(conn.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]


def measure(name: str, proc: subprocess.Popen[bytes], n: int, progress) -> dict[str, object]:
    """Time and CPU from the first message handled to the n-th, so start-up does not count."""
    first: tuple[float, float, int] | None = None
    rss_samples: list[int] = []
    while True:
        done = progress()
        now = time.perf_counter()
        if proc.poll() is None:
            cpu_s = proc_cpu_s(proc.pid)
            hwm = proc_kib(proc.pid, "VmHWM")
            if first is not None:
                rss_samples.append(proc_kib(proc.pid, "VmRSS"))
        elif done < n:
            msg = f"{name} exited with {proc.returncode} after {done} of {n} messages"
            raise RuntimeError(msg)
        if first is None and done > 0:
            first = (now, cpu_s, done)
        if done >= n:
            break
        time.sleep(0.1)
    assert first is not None
    t0, cpu0, done0 = first
    drained = n - done0
    elapsed = now - t0
    quarter = max(1, len(rss_samples) // 4)
    return {
        "messages": drained,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(drained / elapsed),
        "cpu_us_per_msg": round((cpu_s - cpu0) / drained * 1e6, 1),
        "peak_rss_mib": round(hwm / 1024, 1),
        "rss_mib_quartiles": [round(s / 1024, 1) for s in rss_samples[quarter - 1 :: quarter]][:4],
    }


def run_cityops(
    name: str, *, protocol: str, broker: str, database_url: str, n: int, tag: str, tmp: Path
) -> dict[str, object]:
    """Run `cityops ingest` as shipped until it has stored the whole backlog."""
    env = {
        **os.environ,
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": broker,
        "CITYOPS_MQTT_PROTOCOL": protocol,
        "CITYOPS_MQTT_CLIENT_ID": client_id(name, tag),
        "CITYOPS_MQTT_SHARED_GROUP": f"{name}{tag}",
        "CITYOPS_METRICS_PORT": "0",
    }
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "cityops", "ingest"], env=env, stderr=log, cwd=ROOT
        )
        try:
            return measure(name, ingest, n, lambda: stored(database_url))
        except RuntimeError:
            sys.stderr.write(log_path.read_text())
            raise
        finally:
            ingest.terminate()
            ingest.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--role", choices=["bare", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--progress", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bare":
        return role_bare(args.url, args.client_id, args.messages, Path(args.progress))
    if args.role == "naive":
        return role_naive(args.url, args.client_id, args.messages, args.database_url)

    n, n_naive = args.messages, min(args.naive_messages, args.messages)
    tag = uuid.uuid4().hex[:6]
    urls = {
        name: db.with_database(args.database_server, f"bench_{name}_{tag}")
        for name in ("cityops", "cityops_mqtt311", "naive")
    }
    for url in urls.values():
        db.ensure_database(DatabaseSettings(url=url))
        db.migrate(DatabaseSettings(url=url))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.cursor().executemany(
                "insert into devices (device_id, type) values (%s, 'manhole')",
                [(f"bench-mh-{i:04d}",) for i in range(DEVICES)],
            )
    results: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_mosquitto(ROOT / "config/mosquitto/cityops.conf", Path(tmp)) as broker,
    ):
        for role in ("bare", "cityops", "cityops_mqtt311", "naive"):
            make_session(broker, client_id(role, tag), f"{role}{tag}")
        publish_s = publish_backlog(broker, n)
        print(f"queued {n} readings for 4 offline sessions in {publish_s:.1f} s", flush=True)
        me = [sys.executable, str(Path(__file__).resolve())]

        progress = Path(tmp) / "bare.progress"
        progress.write_text("0")
        bare = subprocess.Popen(
            [
                *me,
                "--role",
                "bare",
                "--url",
                broker,
                "--client-id",
                client_id("bare", tag),
                "--messages",
                str(n),
                "--progress",
                str(progress),
            ]
        )
        results["bare"] = measure("bare", bare, n, lambda: int(progress.read_text() or 0))
        print("bare    ", results["bare"], flush=True)

        for name, protocol in (("cityops", "5"), ("cityops_mqtt311", "3.1.1")):
            results[name] = run_cityops(
                name,
                protocol=protocol,
                broker=broker,
                database_url=urls[name],
                n=n,
                tag=tag,
                tmp=Path(tmp),
            )
            print(f"{name:8}", results[name], flush=True)

        naive = subprocess.Popen(
            [
                *me,
                "--role",
                "naive",
                "--url",
                broker,
                "--client-id",
                client_id("naive", tag),
                "--messages",
                str(n_naive),
                "--database-url",
                urls["naive"],
            ]
        )
        results["naive"] = measure("naive", naive, n_naive, lambda: stored(urls["naive"]))
        print("naive   ", results["naive"], flush=True)

    for name in ("cityops", "cityops_mqtt311"):
        assert stored(urls[name]) == n, f"{name} stored a different number of rows"
    with psycopg.connect(args.database_server, autocommit=True) as conn:
        for url in urls.values():
            name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
            conn.execute(f'drop database "{name}" with (force)')
    rate = {k: v["msgs_per_s"] for k, v in results.items()}  # type: ignore[index]
    results["ratios"] = {
        "cityops_vs_bare": round(rate["cityops"] / rate["bare"], 3),
        "cityops_vs_naive": round(rate["cityops"] / rate["naive"], 1),
        "cityops_mqtt311_vs_bare": round(rate["cityops_mqtt311"] / rate["bare"], 3),
        "cityops_mqtt311_vs_naive": round(rate["cityops_mqtt311"] / rate["naive"], 1),
        "naive_vs_bare": round(rate["naive"] / rate["bare"], 3),
    }
    print(
        f"cityops (MQTT 5) = {results['ratios']['cityops_vs_bare']} x bare, "  # type: ignore[index]
        f"{results['ratios']['cityops_vs_naive']} x naive"
    )  # type: ignore[index]
    print(json.dumps({"bench": "ingest", **results}))
    return None


if __name__ == "__main__":
    main()
