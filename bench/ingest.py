"""How fast `cityops ingest` drains a backlog, against bare clients and a naive ingester.

A private Mosquitto (config/mosquitto/cityops.conf) queues the same backlog for one offline
persistent session per contender process (each contender has its own shared group); then each
contender drains its copy:
  bare             paho-mqtt, MQTT 5, QoS 1, manual ack every 5,000, no database work (the
                   MQTT 5 ceiling);
  bare_mqtt311     the same over MQTT 3.1.1 (the MQTT 3.1.1 ceiling);
  cityops          `cityops ingest` as shipped over MQTT 5 (decode, validate, binary COPY, ack
                   after commit);
  cityops_mqtt311  the same over MQTT 3.1.1 (mqtt.protocol = "3.1.1");
  cityops_xN, cityops_mqtt311_xN (with --workers N > 1)  N `cityops ingest` processes with
                   distinct client ids on one shared group, each with its own session, which
                   the broker filled round-robin;
  naive            auto-ack, one INSERT per message, autocommit (what a quick script does).
Reported: messages/s, client CPU microseconds per message (all processes of a contender, with
their children: `cityops ingest` receives in a child process), the broker's and the database
backends' CPU per message, cores busy while draining, peak RSS (the largest contender process with
its children, summed), RSS samples, and ratios: each cityops figure against the bare client of the
same protocol and against one process of the same protocol, all measured in the same run. Time
and CPU count from a contender's first handled message to its last, so interpreter start-up is
left out.

--kill-one instead measures a kill -9 of one of two workers mid-drain (MQTT 5): what the
survivor drains alone, what waits in the dead worker's session (its in-flight and queued share,
and half of what is published while it is down), and when its session delivers them after a
restart; it checks that the stored rows are exactly the published ones and reports the duplicate
count from the restarted worker's metrics.

The last line of output is JSON.

--identity instead measures what device identity costs (config/mosquitto/identity.conf: TLS, a
login per device, the ACL) against the open broker (cityops.conf), both in the same run: each of
--devices devices publishes its readings on its own connection (publish rate and broker CPU),
then `cityops ingest` drains the backlog (over TLS with its service account, against plain);
and --reconnect devices connect at once, a city after a broker restart, in plain, with passwords
over TLS, and with certificates (connections per second and CPU per connection); then, with
`broker sync --watch` running, --revocations devices of each kind are revoked one by one: the
seconds from the revocation's commit until the broker has closed the device's connection.

Usage: python bench/ingest.py [--messages 200000] [--naive-messages 20000] [--workers 2]
       python bench/ingest.py --kill-one [--messages 200000]
       python bench/ingest.py --identity [--messages 200000] [--reconnect 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cityops  # noqa: E402
from cityops.services import (  # noqa: E402
    IdentityFiles,
    free_port,
    start_identity_mosquitto,
    start_mosquitto,
)
from devices import credentials  # noqa: E402
from devices.broker import sync as broker_sync  # noqa: E402
from devices.broker import watch as broker_watch  # noqa: E402
from devices.pki import write_certificate  # noqa: E402
from devices.settings import BrokerSettings  # noqa: E402
from simulator.connections import DeviceLinks, DeviceLogin  # noqa: E402
from store import db  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402
from wire.mqtt import BrokerAddress, MqttSettings, TlsFiles, make_client  # noqa: E402

# Odd, so that each of N workers on a shared group gets readings of every device, as in a city
# (the broker deals messages round-robin): with 1,000 devices and 2 workers, each worker would
# only ever see every other device, and the workers would never touch the same devices rows.
DEVICES = 1001
T0_MS = 1_764_000_000_000
TOPIC = "cityops/v1/#"
MOSQUITTO_CONF = ROOT / "config/mosquitto/cityops.conf"
# Children import cityops from this tree, not from wherever the virtualenv's editable install
# points (a worktree's bench must measure the worktree's code).
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}

V5, V311 = "5", "3.1.1"
SUBSCRIBED = "subscribed to $share/"  # what `cityops ingest` logs once it has connected


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # bare, cityops or naive
    protocol: str  # V5 or V311
    workers: int = 1
    short: str = ""  # in client ids, which MQTT 3.1.1 limits to 23 characters

    def client_ids(self, tag: str) -> list[str]:
        return [f"b-{self.short}-{k}-{tag}" for k in range(1, self.workers + 1)]

    def group(self, tag: str) -> str:
        return f"{self.short}{tag}"


def payload(i: int, devices: int) -> tuple[str, bytes]:
    device = f"bench-mh-{i % devices:04d}"
    body = {
        "ts": T0_MS + (i // devices) * 1000,
        "tilt_deg": (i % 900) / 10,
        "cover_open": False,
        "battery_pct": 87.5,
        "rssi_dbm": -91,
    }
    return f"cityops/v1/manhole/{device}/telemetry", json.dumps(body).encode()


def expected_rows(n: int, devices: int) -> set[tuple[str, int, float]]:
    """(device, ts in epoch ms, tilt) of readings 0..n-1."""
    rows = set()
    for i in range(n):
        device = f"bench-mh-{i % devices:04d}"
        rows.add((device, T0_MS + (i // devices) * 1000, round((i % 900) / 10, 1)))
    return rows


def mqtt_client(client_id: str, protocol: str, *, manual_ack: bool) -> mqtt.Client:
    if protocol == V5:
        return mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTProtocolVersion.MQTTv311,
        clean_session=False,
        manual_ack=manual_ack,
    )


def connect_props(receive_max: int = 20000) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = receive_max
    return props


def connect(client: mqtt.Client, url: str, protocol: str, *, clean_start: bool = False) -> None:
    s = MqttSettings(url=url)
    if protocol == V5:
        client.connect(s.host, s.port, clean_start=clean_start, properties=connect_props())
    else:
        # MQTT 3.1.1 has no Receive Maximum: the broker's max_inflight_messages (20,000 in
        # cityops.conf) is the window, as for `cityops ingest` over 3.1.1.
        client.connect(s.host, s.port)


def make_session(url: str, client_id: str, group: str, protocol: str) -> None:
    """Create an offline persistent session subscribed (shared group) to the contract topics."""
    client = mqtt_client(client_id, protocol, manual_ack=True)
    connect(client, url, protocol, clean_start=True)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.loop_start()
    if protocol == V5:
        client.subscribe(f"$share/{group}/{TOPIC}", options=SubscribeOptions(qos=1))
    else:
        client.subscribe(f"$share/{group}/{TOPIC}", qos=1)
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def publish_backlog(url: str, n: int, devices: int, start: int = 0) -> float:
    """Publish readings start..start+n-1 at QoS 1, in order; return the seconds it took."""
    s = MqttSettings(url=url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(5000)
    client.max_queued_messages_set(0)
    client.connect(s.host, s.port)
    client.loop_start()
    started = time.perf_counter()
    last = None
    for i in range(start, start + n):
        topic, body = payload(i, devices)
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


def role_bare(url: str, client_id: str, n: int, progress: Path, protocol: str) -> None:
    client = mqtt_client(client_id, protocol, manual_ack=True)
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
    connect(client, url, protocol)
    client.loop_forever()


def role_naive(url: str, client_id: str, n: int, database_url: str) -> None:
    conn = psycopg.connect(database_url, autocommit=True)
    client = mqtt_client(client_id, V5, manual_ack=False)
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
    connect(client, url, V5)
    client.loop_forever()


# -- measuring ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_kib(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB; 0 for a process that has ended."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (`cityops ingest` runs its MQTT receiver as a child)."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def pid_running(config_file: Path) -> int:
    """The pid of the process whose command line names ``config_file`` (our Mosquitto)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(config_file).encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    msg = f"no process runs with {config_file}"
    raise RuntimeError(msg)


class Database:
    """One connection to a contender's database: rows stored, and its backends' CPU."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        self._cpu_by_pid: dict[int, float] = {}

    def stored(self, table: str = "manhole_readings") -> int:
        row = self.conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])

    def backend_cpu_s(self) -> float:
        """CPU of the server processes serving this database, our own connection left out.

        A backend that has ended counts with the last figure read (the naive contender's ends
        with its last message).
        """
        pids = self.conn.execute(
            "select pid from pg_stat_activity where datname = %s and pid <> pg_backend_pid()",
            (self.name,),
        ).fetchall()
        for (pid,) in pids:
            with contextlib.suppress(OSError):  # a backend that just ended
                self._cpu_by_pid[pid] = proc_cpu_s(pid)
        return sum(self._cpu_by_pid.values())

    def rows(self) -> set[tuple[str, int, float]]:
        got = self.conn.execute(
            "select device_id, (extract(epoch from ts) * 1000)::bigint, tilt_deg "
            "from manhole_readings"
        ).fetchall()
        return {(d, ts, round(tilt, 1)) for d, ts, tilt in got}

    def close(self) -> None:
        self.conn.close()


def measure(
    name: str,
    procs: list[subprocess.Popen[bytes]],
    n: int,
    progress: Callable[[], int],
    others: dict[str, Callable[[], float]],
    ready: Callable[[], bool] = lambda: True,
) -> dict[str, object]:
    """Time and CPU from the first message handled to the n-th, so start-up does not count.

    ``others`` are CPU-second counters of processes that are not the contender's (the broker,
    the database backends), reported per message over the same window. With several processes,
    the window opens once all of them are ``ready`` (past interpreter start-up) and one has
    handled a message.
    """
    first: tuple[float, float, int, dict[str, float]] | None = None
    cpu_by_pid: dict[int, float] = {}
    hwm_kib = 0
    rss_samples: list[int] = []
    while True:
        done = progress()
        now = time.perf_counter()
        for proc in procs:
            if proc.poll() is None:
                tree = process_tree(proc.pid)
                for pid in tree:
                    with contextlib.suppress(OSError):  # a child that just ended
                        cpu_by_pid[pid] = proc_cpu_s(pid)
                hwm_kib = max(hwm_kib, sum(proc_kib(pid, "VmHWM") for pid in tree))
                rss_kib = sum(proc_kib(pid, "VmRSS") for pid in tree)
                if first is not None and rss_kib:  # none once the process is a zombie
                    rss_samples.append(rss_kib)
            elif done < n:
                msg = f"{name} exited with {proc.returncode} after {done} of {n} messages"
                raise RuntimeError(msg)
        cpu_s = sum(cpu_by_pid.values())
        other_cpu = {key: counter() for key, counter in others.items()}
        if first is None and done > 0 and ready():
            first = (now, cpu_s, done, other_cpu)
        if done >= n:
            break
        time.sleep(0.1)
    assert first is not None
    t0, cpu0, done0, other0 = first
    drained = n - done0
    if drained == 0:
        msg = f"{name} handled all {n} messages at once: too few to time, use more --messages"
        raise RuntimeError(msg)
    elapsed = now - t0
    quarter = max(1, len(rss_samples) // 4)
    result: dict[str, object] = {
        "messages": drained,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(drained / elapsed),
        "cpu_us_per_msg": round((cpu_s - cpu0) / drained * 1e6, 1),
    }
    busy_s = cpu_s - cpu0
    for key, value in other_cpu.items():
        result[f"{key}_cpu_us_per_msg"] = round((value - other0[key]) / drained * 1e6, 1)
        busy_s += value - other0[key]
    result["cores_busy"] = round(busy_s / elapsed, 2)
    result["peak_rss_mib"] = round(hwm_kib / 1024, 1)
    result["rss_mib_quartiles"] = [round(s / 1024, 1) for s in rss_samples[quarter - 1 :: quarter]][
        :4
    ]
    return result


def ingest_env(
    database_url: str, broker: str, protocol: str, client_id: str, group: str, metrics_port: int
) -> dict[str, str]:
    return {
        **CHILD_ENV,
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": broker,
        "CITYOPS_MQTT_PROTOCOL": protocol,
        "CITYOPS_MQTT_CLIENT_ID": client_id,
        "CITYOPS_MQTT_SHARED_GROUP": group,
        "CITYOPS_METRICS_PORT": str(metrics_port),
    }


def start_ingest(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cityops", "ingest"], env=env, stderr=log, cwd=ROOT
        )


@contextlib.contextmanager
def stopping(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> Iterator[None]:
    """Stop every process on the way out; show their logs when the body failed."""
    try:
        yield
    except RuntimeError:
        for log in logs:
            sys.stderr.write(log.read_text())
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(30)


def run_cityops(
    contender: Contender,
    *,
    broker: str,
    database: Database,
    n: int,
    tag: str,
    tmp: Path,
    others: dict[str, Callable[[], float]],
) -> dict[str, object]:
    """Run `cityops ingest` as shipped, in contender.workers processes, until all is stored."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with stopping(procs, logs):
        for cid in contender.client_ids(tag):
            env = ingest_env(database.url, broker, contender.protocol, cid, contender.group(tag), 0)
            logs.append(tmp / f"{cid}.log")
            procs.append(start_ingest(env, logs[-1]))
        result = measure(
            contender.name,
            procs,
            n,
            database.stored,
            {**others, "db": database.backend_cpu_s},
            ready=lambda: all(SUBSCRIBED in log.read_text(errors="replace") for log in logs),
        )
    result["warnings"] = warnings_in(logs)
    return result


def warnings_in(logs: list[Path]) -> list[str]:
    """The WARNING lines of ingest logs (a database outage, a refused batch): none expected."""
    return [
        line.split(" WARNING ", 1)[1]
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if " WARNING " in line
    ]


def run_child(
    contender: Contender,
    broker: str,
    n: int,
    tag: str,
    tmp: Path,
    database: Database | None,
    others: dict[str, Callable[[], float]],
) -> dict[str, object]:
    """Run a bare or naive contender in a child process of this script."""
    me = [sys.executable, str(Path(__file__).resolve())]
    (cid,) = contender.client_ids(tag)
    command = [*me, "--role", contender.kind, "--url", broker, "--client-id", cid]
    command += ["--messages", str(n), "--protocol", contender.protocol]
    if database is None:
        progress_file = tmp / f"{contender.name}.progress"
        progress_file.write_text("0")
        command += ["--progress", str(progress_file)]
        progress = lambda: int(progress_file.read_text() or 0)  # noqa: E731
    else:
        command += ["--database-url", database.url]
        progress = database.stored
        others = {**others, "db": database.backend_cpu_s}
    proc = subprocess.Popen(command, env=CHILD_ENV)
    with stopping([proc], []):
        return measure(contender.name, [proc], n, progress, others)


def contenders(workers: int) -> list[Contender]:
    """In the order they run: each cityops contender right after the ceiling it is divided by."""
    chosen = [
        Contender("bare", "bare", V5, short="bare5"),
        Contender("cityops", "cityops", V5, short="co5"),
    ]
    if workers > 1:
        chosen.append(Contender(f"cityops_x{workers}", "cityops", V5, workers, f"co5x{workers}"))
    chosen += [
        Contender("bare_mqtt311", "bare", V311, short="bare3"),
        Contender("cityops_mqtt311", "cityops", V311, short="co3"),
    ]
    if workers > 1:
        chosen.append(
            Contender(f"cityops_mqtt311_x{workers}", "cityops", V311, workers, f"co3x{workers}")
        )
    chosen.append(Contender("naive", "naive", V5, short="naive"))
    return chosen


def ratios(results: dict[str, dict[str, object]], workers: int) -> dict[str, float]:
    rate = {name: float(r["msgs_per_s"]) for name, r in results.items()}  # type: ignore[arg-type]
    out = {
        "cityops_vs_bare": round(rate["cityops"] / rate["bare"], 3),
        "cityops_mqtt311_vs_bare_mqtt311": round(rate["cityops_mqtt311"] / rate["bare_mqtt311"], 3),
        "cityops_vs_naive": round(rate["cityops"] / rate["naive"], 1),
        "cityops_mqtt311_vs_naive": round(rate["cityops_mqtt311"] / rate["naive"], 1),
        "bare_mqtt311_vs_bare": round(rate["bare_mqtt311"] / rate["bare"], 3),
        "naive_vs_bare": round(rate["naive"] / rate["bare"], 3),
    }
    if workers > 1:
        for base, ceiling in (("cityops", "bare"), ("cityops_mqtt311", "bare_mqtt311")):
            scaled = f"{base}_x{workers}"
            out[f"{scaled}_vs_{base}"] = round(rate[scaled] / rate[base], 3)
            out[f"{scaled}_vs_{ceiling}"] = round(rate[scaled] / rate[ceiling], 3)
    return out


def prepare_database(server: str, name: str, devices: int) -> str:
    url = db.with_database(server, name)
    db.ensure_database(DatabaseSettings(url=url))
    db.migrate(DatabaseSettings(url=url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.cursor().executemany(
            "insert into devices (device_id, type) values (%s, 'manhole')",
            [(f"bench-mh-{i:04d}",) for i in range(devices)],
        )
    return url


def drop_databases(server: str, urls: list[str]) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        for url in urls:
            name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
            conn.execute(f'drop database if exists "{name}" with (force)')


def compare(args: argparse.Namespace) -> dict[str, object]:
    n, n_naive, workers = args.messages, min(args.naive_messages, args.messages), args.workers
    tag = uuid.uuid4().hex[:6]
    chosen = contenders(workers)
    urls = {
        c.name: prepare_database(args.database_server, f"bench_{c.name}_{tag}", args.devices)
        for c in chosen
        if c.kind != "bare"
    }
    results: dict[str, dict[str, object]] = {}
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            start_mosquitto(MOSQUITTO_CONF, Path(tmp)) as broker,
        ):
            mosquitto = pid_running(Path(tmp) / "mosquitto.conf")
            others = {"broker": lambda: proc_cpu_s(mosquitto)}
            sessions = 0
            for c in chosen:
                for cid in c.client_ids(tag):
                    make_session(broker, cid, c.group(tag), c.protocol)
                    sessions += 1
            publish_s = publish_backlog(broker, n, args.devices)
            print(
                f"queued {n} readings for {sessions} offline sessions in {len(chosen)} groups "
                f"in {publish_s:.1f} s",
                flush=True,
            )
            for c in chosen:
                database = Database(urls[c.name]) if c.name in urls else None
                try:
                    if c.kind == "cityops":
                        assert database is not None
                        results[c.name] = run_cityops(
                            c,
                            broker=broker,
                            database=database,
                            n=n,
                            tag=tag,
                            tmp=Path(tmp),
                            others=others,
                        )
                        assert database.stored() == n, f"{c.name} stored a different number of rows"
                    else:
                        results[c.name] = run_child(
                            c,
                            broker,
                            n_naive if c.kind == "naive" else n,
                            tag,
                            Path(tmp),
                            database,
                            others,
                        )
                finally:
                    if database is not None:
                        database.close()
                print(f"{c.name:18}", results[c.name], flush=True)
    finally:
        drop_databases(args.database_server, list(urls.values()))
    r = ratios(results, workers)
    print(
        f"cityops = {r['cityops_vs_bare']} x bare (MQTT 5), cityops_mqtt311 = "
        f"{r['cityops_mqtt311_vs_bare_mqtt311']} x bare_mqtt311"
        + (
            f"; {workers} processes = {r[f'cityops_x{workers}_vs_cityops']} x one (MQTT 5), "
            f"{r[f'cityops_mqtt311_x{workers}_vs_cityops_mqtt311']} x one (MQTT 3.1.1)"
            if workers > 1
            else ""
        )
    )
    return {
        "bench": "ingest",
        "messages": n,
        "devices": args.devices,
        "workers": workers,
        **results,
        "ratios": r,
    }


# -- kill -9 of one of two workers ----------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """A worker's metrics, each sample summed over its labels (by name and chosen labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "result" in sample.labels:
                key += ":" + sample.labels["result"]
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def messages_of(metrics: dict[str, float]) -> int:
    """Messages a worker has committed (stored, partial or quarantined)."""
    return int(sum(v for k, v in metrics.items() if k.startswith("cityops_ingest_messages_total")))


def until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:.0f} s waiting for {what}"
            raise RuntimeError(msg)
        time.sleep(0.05)


def wait_quiet(port: int, quiet_s: float, timeout_s: float) -> tuple[int, float]:
    """Wait until a worker has buffered nothing and committed nothing new for ``quiet_s``.

    Returns its committed message count and when that count last changed (perf_counter).
    """
    deadline = time.monotonic() + timeout_s
    last = messages_of(scrape(port))
    changed = time.perf_counter()
    while True:
        time.sleep(0.05)
        metrics = scrape(port)
        now_count = messages_of(metrics)
        if now_count != last:
            last, changed = now_count, time.perf_counter()
        elif (
            metrics.get("cityops_ingest_buffered_messages", 0) == 0
            and time.perf_counter() - changed >= quiet_s
        ):
            return last, changed
        if time.monotonic() > deadline:
            msg = f"the survivor did not go quiet within {timeout_s:.0f} s"
            raise RuntimeError(msg)


def kill_one(args: argparse.Namespace) -> dict[str, object]:
    n = args.messages
    tail = max(2, n // 20)
    tag = uuid.uuid4().hex[:6]
    c = Contender("kill", "cityops", V5, 2, "kill")
    url = prepare_database(args.database_server, f"bench_kill_{tag}", args.devices)
    database = Database(url)
    report: dict[str, object] = {
        "bench": "ingest_kill_one",
        "messages": n,
        "devices": args.devices,
        "tail_messages": tail,
    }
    try:
        with (
            tempfile.TemporaryDirectory() as tmp_name,
            start_mosquitto(MOSQUITTO_CONF, Path(tmp_name)) as broker,
        ):
            tmp = Path(tmp_name)
            ids = c.client_ids(tag)
            for cid in ids:
                make_session(broker, cid, c.group(tag), V5)
            publish_backlog(broker, n, args.devices)
            ports = [free_port(), free_port()]
            envs = [
                ingest_env(url, broker, V5, cid, c.group(tag), p)
                for cid, p in zip(ids, ports, strict=True)
            ]
            logs = [tmp / f"{cid}.log" for cid in ids]
            procs = [start_ingest(env, log) for env, log in zip(envs, logs, strict=True)]
            with stopping(procs, logs):
                survivor, victim = ports
                share = n // 2
                # Kill the second worker a quarter into its share of the backlog.
                victim_at_kill = 0

                def victim_quarter_done() -> bool:
                    nonlocal victim_at_kill
                    try:
                        victim_at_kill = messages_of(scrape(victim))
                    except OSError:
                        return False  # not listening yet
                    return victim_at_kill >= share // 4

                until(victim_quarter_done, 120, "the second worker a quarter into its share")
                survivor_at_kill = messages_of(scrape(survivor))
                procs[1].send_signal(signal.SIGKILL)
                procs[1].wait()
                t_kill = time.perf_counter()
                stored_at_kill = database.stored()

                survivor_done, survivor_last = wait_quiet(survivor, args.quiet_s, 300)
                stored_dead = database.stored()
                publish_s = publish_backlog(broker, tail, args.devices, start=n)
                survivor_tail, _ = wait_quiet(survivor, args.quiet_s, 300)
                stored_before_restart = database.stored()

                procs.append(start_ingest(envs[1], logs[1]))
                t_restart = time.perf_counter()
                first_new_row: list[float] = []

                def all_stored() -> bool:
                    count = database.stored()
                    if not first_new_row and count > stored_before_restart:
                        first_new_row.append(time.perf_counter())
                    return count >= n + tail

                until(all_stored, 300, "every reading after the restart")
                t_complete = time.perf_counter()
                restarted = scrape(victim)
                survivor_after = messages_of(scrape(survivor))
            survivor_warnings, restarted_warnings = warnings_in(logs[:1]), warnings_in(logs[1:])
            rows = database.rows()
            missing = len(expected_rows(n + tail, args.devices) - rows)
            extra = len(rows - expected_rows(n + tail, args.devices))
    finally:
        database.close()
        drop_databases(args.database_server, [url])
    report.update(
        {
            "victim_committed_at_kill": victim_at_kill,
            "survivor_committed_at_kill": survivor_at_kill,
            "rows_at_kill": stored_at_kill,
            "survivor_rate_alone_msgs_per_s": round(
                (survivor_done - survivor_at_kill) / max(survivor_last - t_kill, 1e-9)
            ),
            "survivor_committed_when_quiet": survivor_done,
            "rows_missing_while_dead": n - stored_dead,
            "tail_published_s": round(publish_s, 2),
            "tail_stored_by_survivor": survivor_tail - survivor_done,
            "tail_waiting_for_dead_session": tail - (stored_before_restart - stored_dead),
            "restart_to_first_new_row_s": round(first_new_row[0] - t_restart, 2),
            "restart_to_complete_s": round(t_complete - t_restart, 2),
            "restarted_committed": messages_of(restarted),
            "restarted_inserted": int(restarted.get("cityops_ingest_rows_total:inserted", 0)),
            "restarted_duplicates": int(restarted.get("cityops_ingest_rows_total:duplicate", 0)),
            "survivor_committed_after_restart": survivor_after - survivor_tail,
            # What the survivor said about its peer's death: nothing is expected.
            "survivor_warnings": survivor_warnings,
            "restarted_warnings": restarted_warnings,
            "rows_stored": len(rows),
            "rows_missing": missing,
            "rows_not_published": extra,
        }
    )
    print(
        f"killed a worker after it committed {victim_at_kill} of its {share}; the survivor "
        f"drained alone at {report['survivor_rate_alone_msgs_per_s']} msgs/s; "
        f"{report['rows_missing_while_dead']} backlog rows and "
        f"{report['tail_waiting_for_dead_session']} of {tail} new ones waited in the dead "
        f"worker's session; after the restart: first row in {report['restart_to_first_new_row_s']}"
        f" s, all in {report['restart_to_complete_s']} s, {report['restarted_duplicates']} "
        f"duplicates; {missing} missing, {extra} extra"
    )
    if missing or extra:
        msg = f"stored rows differ from the published ones: {missing} missing, {extra} extra"
        raise SystemExit(msg)
    return report


# -- identity: TLS and a login per device, against the open broker -----------------------

IDENTITY_CONF = ROOT / "config/mosquitto/identity.conf"


@dataclass(frozen=True)
class Variant:
    """One way of connecting: the devices' URL and logins, ingest's URL, the broker's pid."""

    name: str
    devices_url: str
    logins: dict[str, DeviceLogin]
    ingest_url: str
    database: str
    broker_pid: int
    ca_file: Path | None = None


def ingest_session(variant: Variant, client_id: str) -> None:
    """An offline persistent session of ingest's, subscribed to the contract topics."""
    tls = TlsFiles(variant.ca_file) if variant.ca_file else None
    client = make_client(variant.ingest_url, mqtt.MQTTProtocolVersion.MQTTv5, client_id, tls=tls)
    address = BrokerAddress.of(variant.ingest_url)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(TOPIC, options=SubscribeOptions(qos=1))
    client.connect(address.host, address.port, clean_start=True, properties=connect_props())
    client.loop_start()
    assert subscribed.wait(10), f"{variant.name}: no SUBACK for ingest's session"
    client.disconnect()
    client.loop_stop()


def fleet_backlog(variant: Variant, n: int, devices: int) -> dict[str, object]:
    """Each device publishes its own readings on its own connection; rate and broker CPU."""
    links = DeviceLinks(variant.devices_url, variant.logins, ca_file=variant.ca_file)
    ids = [f"bench-mh-{i:04d}" for i in range(devices)]
    try:
        connect_s = links.open(ids, timeout_s=300)
        cpu0, started = proc_cpu_s(variant.broker_pid), time.perf_counter()
        window: list[mqtt.MQTTMessageInfo] = []
        for i in range(n):
            topic, body = payload(i, devices)
            window.append(links.publish(topic.split("/")[3], topic, body, qos=1))
            if len(window) >= 2000:
                for info in window:
                    info.wait_for_publish(60)
                window.clear()
        for info in window:
            info.wait_for_publish(60)
        elapsed = time.perf_counter() - started
        broker_cpu = proc_cpu_s(variant.broker_pid) - cpu0
    finally:
        links.close()
    return {
        "devices": devices,
        "connect_s": round(connect_s, 2),
        "msgs_per_s": round(n / elapsed),
        "broker_cpu_us_per_msg": round(broker_cpu / n * 1e6, 1),
    }


def drain(variant: Variant, n: int, client_id: str, tmp: Path) -> dict[str, object]:
    """`cityops ingest` drains its session's backlog over the variant's connection."""
    env = ingest_env(variant.database, variant.ingest_url, V5, client_id, "", 0)
    if variant.ca_file is not None:
        env["CITYOPS_MQTT_CA_FILE"] = str(variant.ca_file)
    database = Database(variant.database)
    log = tmp / f"{client_id}.log"
    procs = [start_ingest(env, log)]
    try:
        with stopping(procs, [log]):
            result = measure(
                variant.name,
                procs,
                n,
                database.stored,
                {
                    "broker": lambda: proc_cpu_s(variant.broker_pid),
                    "db": database.backend_cpu_s,
                },
                ready=lambda: "subscribed to " in log.read_text(errors="replace"),
            )
        assert database.stored() == n, f"{variant.name}: stored a different number of rows"
    finally:
        database.close()
    result["warnings"] = warnings_in([log])
    return result


def reconnect(
    name: str, url: str, logins: dict[str, DeviceLogin], ca_file: Path | None, broker_pid: int
) -> dict[str, object]:
    """Every device in ``logins`` connects at once (a city after a broker restart)."""
    links = DeviceLinks(url, logins, ca_file=ca_file)
    cpu0 = proc_cpu_s(broker_pid)
    client0 = time.process_time()
    try:
        seconds = links.open(logins, timeout_s=600, connectors=8)
        broker_cpu = proc_cpu_s(broker_pid) - cpu0
        client_cpu = time.process_time() - client0
    finally:
        links.close(timeout_s=60)
    count = len(logins)
    result = {
        "connections": count,
        "seconds": round(seconds, 2),
        "connections_per_s": round(count / seconds),
        "broker_cpu_us_per_connection": round(broker_cpu / count * 1e6),
        "client_cpu_us_per_connection": round(client_cpu / count * 1e6),
    }
    print(f"reconnect {name:12}", result, flush=True)
    return result


def revocation_latency(
    database_url: str,
    settings: BrokerSettings,
    url: str,
    logins: dict[str, DeviceLogin],
    ca_file: Path,
) -> dict[str, object]:
    """Seconds from a revocation's commit until the broker has closed the device's connection.

    `broker sync --watch` runs as it would beside the broker; the devices are revoked one by one.
    """
    stop = threading.Event()
    watcher = threading.Thread(
        target=broker_watch,
        args=(lambda: psycopg.connect(database_url), settings, stop),
    )
    watcher.start()
    links = DeviceLinks(url, logins, ca_file=ca_file)
    latencies = []
    try:
        links.open(logins, timeout_s=60)
        with psycopg.connect(database_url, autocommit=True) as conn:
            for device_id in logins:
                began = time.perf_counter()
                credentials.revoke(conn, [device_id])
                closed = lambda d=device_id: not links.is_connected(d)  # noqa: E731
                until(closed, 30, f"{device_id} disconnected")
                latencies.append(time.perf_counter() - began)
    finally:
        links.close()
        stop.set()
        watcher.join(timeout=30)
    latencies.sort()
    return {
        "devices": len(latencies),
        "p50_s": round(latencies[len(latencies) // 2], 3),
        "max_s": round(latencies[-1], 3),
    }


def identity_compare(args: argparse.Namespace) -> dict[str, object]:
    n, devices, count = args.messages, args.devices, args.reconnect
    tag = uuid.uuid4().hex[:6]
    urls = {
        name: prepare_database(args.database_server, f"bench_{name}_{tag}", devices)
        for name in ("plain", "identity")
    }
    reconnecting = [f"bench-rc-{i:05d}" for i in range(count)]
    results: dict[str, object] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            files = IdentityFiles.lay_out(tmp)
            ca, ca_file = files.ca, files.ca_file
            began = time.perf_counter()
            with psycopg.connect(urls["identity"], autocommit=True) as conn:
                conn.cursor().executemany(
                    "insert into devices (device_id, type) values (%s, 'manhole')",
                    [(d,) for d in reconnecting],
                )
                fleet = credentials.issue(conn, [f"bench-mh-{i:04d}" for i in range(devices)])
                passwords = credentials.issue(conn, reconnecting)
                certificates = credentials.issue(conn, reconnecting, "certificate", ca=ca)
                ingest = credentials.issue_service(conn, f"ingest-{tag}", "ingest")
                control = credentials.issue_service(conn, f"control-{tag}", "control")
                settings = files.broker_settings()
                broker_sync(conn, settings, reload=False)
            print(
                f"issued {devices + 2 * count + 1} credentials and wrote the broker's files in "
                f"{time.perf_counter() - began:.1f} s",
                flush=True,
            )
            cert_logins = {}
            for issued in certificates:
                assert issued.certificate is not None
                crt, key = write_certificate(tmp / "devices", issued.username, issued.certificate)
                cert_logins[issued.username] = DeviceLogin(issued.username, None, crt, key)
            with (
                start_mosquitto(MOSQUITTO_CONF, tmp / "plain") as plain_url,
                start_identity_mosquitto(
                    MOSQUITTO_CONF, IDENTITY_CONF, tmp / "identity", files
                ) as secure,
            ):
                plain_pid = pid_running(tmp / "plain" / "mosquitto.conf")
                secure_pid = pid_running(tmp / "identity" / "mosquitto.conf")
                variants = [
                    Variant(
                        "plain",
                        plain_url,
                        {d: DeviceLogin(d) for d in (f"bench-mh-{i:04d}" for i in range(devices))},
                        plain_url,
                        urls["plain"],
                        plain_pid,
                    ),
                    Variant(
                        "identity",
                        secure.url(secure.password_port),
                        {c.username: DeviceLogin(c.username, c.password) for c in fleet},
                        secure.url(secure.service_port, ingest.username, ingest.password),
                        urls["identity"],
                        secure_pid,
                        ca_file,
                    ),
                ]
                for variant in variants:
                    client_id = f"ingest-{variant.name}-{tag}"
                    ingest_session(variant, client_id)
                    published = fleet_backlog(variant, n, devices)
                    print(f"publish {variant.name:9}", published, flush=True)
                    drained = drain(variant, n, client_id, tmp)
                    print(f"drain   {variant.name:9}", drained, flush=True)
                    results[variant.name] = {"publish": published, "drain": drained}
                results["reconnect"] = {
                    "plain": reconnect(
                        "plain",
                        plain_url,
                        {d: DeviceLogin(d) for d in reconnecting},
                        None,
                        plain_pid,
                    ),
                    "password_tls": reconnect(
                        "password_tls",
                        secure.url(secure.password_port),
                        {c.username: DeviceLogin(c.username, c.password) for c in passwords},
                        ca_file,
                        secure_pid,
                    ),
                    "certificate_tls": reconnect(
                        "certificate_tls",
                        secure.url(secure.certificate_port),
                        cert_logins,
                        ca_file,
                        secure_pid,
                    ),
                }
                watching = settings.model_copy(
                    update={
                        "pid_file": secure.pid_file,
                        "control_url": secure.url(
                            secure.service_port, control.username, control.password
                        ),
                    }
                )
                revoked = reconnecting[: args.revocations]
                results["revocation"] = {
                    "password_tls": revocation_latency(
                        urls["identity"],
                        watching,
                        secure.url(secure.password_port),
                        {
                            c.username: DeviceLogin(c.username, c.password)
                            for c in passwords
                            if c.username in revoked
                        },
                        ca_file,
                    ),
                    "certificate_tls": revocation_latency(
                        urls["identity"],
                        watching,
                        secure.url(secure.certificate_port),
                        {d: cert_logins[d] for d in reconnecting[-args.revocations :]},
                        ca_file,
                    ),
                }
                print("revocation", results["revocation"], flush=True)
    finally:
        drop_databases(args.database_server, list(urls.values()))

    def rate(*path: str) -> float:
        value: object = results
        for key in path:
            value = value[key]  # type: ignore[index]
        return float(value)  # type: ignore[arg-type]

    ratios = {
        "publish_identity_vs_plain": round(
            rate("identity", "publish", "msgs_per_s") / rate("plain", "publish", "msgs_per_s"), 3
        ),
        "drain_identity_vs_plain": round(
            rate("identity", "drain", "msgs_per_s") / rate("plain", "drain", "msgs_per_s"), 3
        ),
        "reconnect_password_tls_vs_plain": round(
            rate("reconnect", "password_tls", "connections_per_s")
            / rate("reconnect", "plain", "connections_per_s"),
            3,
        ),
        "reconnect_certificate_tls_vs_plain": round(
            rate("reconnect", "certificate_tls", "connections_per_s")
            / rate("reconnect", "plain", "connections_per_s"),
            3,
        ),
    }
    print(
        f"identity = {ratios['publish_identity_vs_plain']} x plain publishing, "
        f"{ratios['drain_identity_vs_plain']} x plain draining; {count} devices reconnect at "
        f"{ratios['reconnect_password_tls_vs_plain']} x (passwords over TLS) and "
        f"{ratios['reconnect_certificate_tls_vs_plain']} x (certificates) the plain rate"
    )
    return {
        "bench": "ingest_identity",
        "messages": n,
        "devices": devices,
        "reconnecting": count,
        **results,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--naive-messages", type=int, default=20_000)
    parser.add_argument(
        "--devices",
        type=int,
        default=DEVICES,
        help="readings go to this many devices in turn (an even number with --workers 2 gives "
        "each worker half of the devices)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="also drain with this many `cityops ingest` processes on one shared group (per "
        "protocol), against one process in the same run",
    )
    parser.add_argument(
        "--kill-one",
        action="store_true",
        help="instead: kill -9 one of two workers mid-drain, restart it, check the rows",
    )
    parser.add_argument(
        "--identity",
        action="store_true",
        help="instead: the fleet over TLS with a login per device (config/mosquitto/"
        "identity.conf) against the open broker: publishing, draining, and --reconnect devices "
        "connecting at once with passwords and with certificates",
    )
    parser.add_argument(
        "--reconnect",
        type=int,
        default=10_000,
        help="--identity: devices that reconnect at once",
    )
    parser.add_argument(
        "--revocations",
        type=int,
        default=20,
        help="--identity: devices revoked one by one with `broker sync --watch` running",
    )
    parser.add_argument(
        "--quiet-s",
        type=float,
        default=2.0,
        help="--kill-one: the survivor counts as done after committing nothing for this long",
    )
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--role", choices=["bare", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=[V5, V311], default=V5, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--progress", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bare":
        return role_bare(
            args.url, args.client_id, args.messages, Path(args.progress), args.protocol
        )
    if args.role == "naive":
        return role_naive(args.url, args.client_id, args.messages, args.database_url)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not Path(cityops.__file__).resolve().is_relative_to(ROOT):
        parser.error(f"cityops is imported from {cityops.__file__}, not from {ROOT}")
    print(f"cityops from {ROOT}; load average {os.getloadavg()}", flush=True)
    if args.identity:
        report = identity_compare(args)
    else:
        report = kill_one(args) if args.kill_one else compare(args)
    print(json.dumps(report))
    return None


if __name__ == "__main__":
    main()
