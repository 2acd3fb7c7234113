"""The simulator against real services: import, accelerated run with faults, abuse, prefix."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cityops.cli import app
from cityops.settings import Settings
from ingest.settings import IngestSettings
from simulator.city import read_bundle
from simulator.fleet import RunOptions, simulate
from simulator.scenario import Scenario
from store.settings import DatabaseSettings
from tests.plugin import wait_for
from wire.mqtt import MqttSettings

SCENARIO = """
[rates]
cover_displaced = 0.05
sensor_offline = 0.5
cabinet_outage = 0.5
"""
START = "2026-11-25T23:55:00+08:00"


@pytest.fixture
def cli(database_url: str, broker_url: str):
    runner = CliRunner()

    def invoke(*args: str, **extra_env: str):
        env = {
            "CITYOPS_DATABASE_URL": database_url,
            "CITYOPS_MQTT_URL": broker_url,
            "CITYOPS_METRICS_PORT": "0",
            **extra_env,
        }
        return runner.invoke(app, list(args), env=env)

    return invoke


@pytest.fixture
def bundle(cli, tmp_path: Path, tag: str) -> Path:
    """A small generated city, imported; its seed is unique so its codes do not collide."""
    folder = tmp_path / "city"
    seed = int(tag, 16) % 10_000
    created = cli(
        "sim", "city", "--out", str(folder), "--seed", str(seed), "--covers", "60", "--lamps", "80"
    )
    assert created.exit_code == 0, created.output
    return folder


def test_a_generated_city_imports_with_no_rejected_row(cli, conn, bundle: Path) -> None:
    manifest = json.loads((bundle / "city.json").read_text())
    result = cli("city", "import", str(bundle))
    assert result.exit_code == 0, result.output
    for part in ("regions", "units", "assets", "devices", "roads"):
        assert re.search(rf"^{part}: {manifest['counts'][part]} \(", result.output, re.M), part
    devices = json.loads((bundle / "city.json").read_text())["counts"]["devices"]
    assert devices == 60 + 80 + 2 + 2  # covers, lamps, cabinets (gateways), sweepers


def test_accelerated_run_lands_every_device_type_and_faults_match_what_was_published(
    cli, conn, bundle: Path, tmp_path: Path, make_settings, start_worker
) -> None:
    assert cli("city", "import", str(bundle)).exit_code == 0
    running = start_worker(make_settings())
    scenario = tmp_path / "faults.toml"
    scenario.write_text(SCENARIO)
    truth = tmp_path / "truth.jsonl"
    result = cli(
        "sim",
        "run",
        "--city",
        str(bundle),
        "--scenario",
        str(scenario),
        "--duration",
        "20",
        "--start",
        START,
        "--seed",
        "1",
        "--speed",
        "0",
        "--truth",
        str(truth),
    )
    assert result.exit_code == 0, result.output
    published = json.loads(result.output.strip().splitlines()[-1])["messages"]
    wait_for(
        lambda: (
            running.metric("cityops_ingest_messages_total", device_type="manhole", result="stored")
            + running.metric(
                "cityops_ingest_messages_total", device_type="sweeper", result="stored"
            )
            + running.metric(
                "cityops_ingest_messages_total", device_type="gateway", result="stored"
            )
            == published
        ),
        what=f"all {published} messages stored",
    )
    devices = tuple(d.split(",")[0] for d in (bundle / "devices.csv").read_text().splitlines()[1:])
    for table in ("manhole_readings", "light_readings", "sweeper_readings"):
        got = conn.execute(
            f"select count(*) from {table} where device_id = any(%s)", (list(devices),)
        ).fetchone()
        assert got[0] > 0, table
    faults = [json.loads(line) for line in truth.read_text().splitlines()]
    kinds = {f["kind"] for f in faults}
    # hourly heartbeats: about a third of the offline covers miss one in 20 minutes
    assert {"cover_displaced", "sensor_offline", "cabinet_outage"} <= kinds
    options = RunOptions(start=datetime.fromisoformat(START).timestamp(), duration_s=1200, seed=1)
    healthy = simulate(read_bundle(bundle), Scenario(), options).publications
    for fault in faults:
        start, end = (datetime.fromisoformat(fault[k]) for k in ("start", "end"))
        if fault["kind"] == "cover_displaced":
            alarm = conn.execute(
                "select ts from manhole_readings where device_id = %s and event = 'tilt_alarm'",
                (fault["subject"],),
            ).fetchall()
            assert alarm == [(start,)]
        elif fault["kind"] == "sensor_offline":
            # what the cover would have sent in the window without the fault: none of it landed
            expected = [
                p.t
                for p in healthy
                if p.topic.split("/")[3] == fault["subject"]
                and start.timestamp() <= p.t < end.timestamp()
            ]
            assert expected, fault
            inside = conn.execute(
                "select count(*) from manhole_readings where device_id = %s "
                "and ts >= %s and ts < %s",
                (fault["subject"], start, end),
            )
            assert inside.fetchone() == (0,)
        elif fault["kind"] == "cabinet_outage":
            cut = conn.execute(
                "select min(r.ts), max(r.ts), count(*) from light_readings r join devices d "
                "using (device_id) where d.gateway_id = %s and r.fault_code = 64",
                (fault["subject"],),
            ).fetchone()
            assert cut[2] > 0
            assert start <= cut[0]
            assert cut[1] < end
            lit = conn.execute(  # and every reading of its lamps in the window is cut
                "select count(*) from light_readings r join devices d using (device_id) "
                "where d.gateway_id = %s and r.ts >= %s and r.ts < %s "
                "and r.fault_code is distinct from 64",
                (fault["subject"], start, end),
            )
            assert lit.fetchone() == (0,)


def test_abuse_mode_produces_exactly_the_quarantine_it_announced(
    cli, conn, bundle: Path, make_settings, start_worker
) -> None:
    assert cli("city", "import", str(bundle)).exit_code == 0
    running = start_worker(make_settings())
    before = dict(conn.execute("select reason, count(*) from quarantine group by 1").fetchall())
    result = cli("sim", "abuse", "--city", str(bundle), "--count", "2")
    assert result.exit_code == 0, result.output
    announced = json.loads(result.output.strip().splitlines()[-1])
    total = announced["messages"]
    wait_for(
        lambda: (
            sum(
                running.metric("cityops_ingest_messages_total", device_type=t, result=r)
                for t in ("manhole", "sweeper", "unknown")
                for r in ("stored", "quarantined")
            )
            == total
        ),
        what=f"all {total} abuse messages handled",
    )
    after = dict(conn.execute("select reason, count(*) from quarantine group by 1").fetchall())
    caused = {r: after.get(r, 0) - before.get(r, 0) for r in after}
    assert {r: n for r, n in caused.items() if n} == announced["quarantine"]
    assert (
        running.metric("cityops_ingest_rows_total", kind="manhole", result="duplicate")
        == announced["duplicates"]
    )


def test_sim_run_publishes_under_the_topic_prefix_where_only_ingest_under_it_takes_it(
    cli, bundle: Path, database_url: str, broker_url: str, start_worker, publisher, tag: str
) -> None:
    assert cli("city", "import", str(bundle)).exit_code == 0
    prefix = f"site-{tag}"

    def settings(name: str, topic_prefix: str) -> Settings:
        mqtt = MqttSettings(
            url=broker_url, client_id=f"{name}-{tag}", shared_group=name, topic_prefix=topic_prefix
        )
        ingest = IngestSettings(flush_interval_s=0.05)
        return Settings(database=DatabaseSettings(url=database_url), mqtt=mqtt, ingest=ingest)

    inside = start_worker(settings("inside", prefix))
    outside = start_worker(settings("outside", ""))
    result = cli(
        "sim", "run", "--city", str(bundle), "--duration", "10", "--start", START, "--speed", "0",
        CITYOPS_MQTT_TOPIC_PREFIX=prefix,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    published = json.loads(result.output.strip().splitlines()[-1])["messages"]
    assert published > 0
    handled = "cityops_ingest_messages_total"
    wait_for(lambda: inside.metric_total(handled) == published, what=f"{published} handled")
    assert inside.metric_total(handled) == sum(
        inside.metric(handled, device_type=t, result="stored")
        for t in ("manhole", "gateway", "sweeper")
    )
    # The simulator finished before this unprefixed message: had the unprefixed worker been sent
    # any of the run, it would have had it before this one.
    publisher.publish(f"cityops/v1/manhole/{tag}-last/telemetry", b'{"tilt_deg": 1}')
    wait_for(lambda: outside.metric_total(handled) > 0, what="the unprefixed message handled")
    assert outside.metric_total(handled) == 1
