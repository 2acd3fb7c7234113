"""Prometheus metrics scraped from running processes: ``cityops scenes run`` (its runs and the
city's state, with labels that never name a single device), and with ``cityops ingest`` and
``cityops api`` every metric the dashboards and alerting rules query."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cases.access import OPERATOR
from cases.lifecycle import Action
from cases.service import CaseService, Report
from cityops import grafana
from cityops.services import free_port, is_listening
from scenes.metrics import CityState
from simulator.city import CitySpec
from store.db import SCENES_CHANNEL
from tests.integration.test_scenes import covers_of
from tests.plugin import (
    CATALOG,
    Publisher,
    forget_session,
    import_city,
    register,
    running_scenes,
    scenes_listening,
    store_tilts,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def scrape(
    port: int, path: str = "/metrics"
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the endpoint serves, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_the_scenes_service_serves_its_runs_and_the_city_s_state(
    conn: psycopg.Connection, database_url, broker_url, city, tmp_path
) -> None:
    (cover,) = covers_of(conn, city, 1)
    device, code = cover["device_id"], cover["asset_code"]
    port = free_port()
    log = tmp_path / "scenes.log"
    with running_scenes(
        database_url, broker_url, log, CITYOPS_METRICS_SCENES_PORT=str(port)
    ) as process:
        wait_for(lambda: scenes_listening(conn) >= 1, what="the scenes listening")
        now = time.time()
        # upright, then tilted for half an hour: displaced (a tilt held scenes.covers.sustain_s)
        store_tilts(database_url, device, [(now - 2400, 2.0), (now - 1800, 27.0)])
        # the batch's alarm woke the service at its commit, maybe before every older
        # transaction had ended (the feed's horizon); store_tilts waited for that: wake it again
        conn.execute("select pg_notify(%s, '')", (SCENES_CHANNEL,))
        wait_for(
            lambda: (
                conn.execute(
                    "select count(*) from cases "
                    "where subject = %s and category = 'cover_displaced'",
                    (code,),
                ).fetchone()
                == (1,)
            ),
            what="the displaced cover's case",
        )

        scraped: list[dict] = []

        def counted_the_case() -> bool:
            assert process.poll() is None, log.read_text()
            scraped[:] = [scrape(port)]
            opened = value(scraped[0], "cityops_scene_cases_opened_total", scene="covers")
            return (opened or 0) >= 1

        wait_for(counted_the_case, what="the case counted by a scrape")
    samples = scraped[0]
    assert value(samples, "cityops_city_state_up") == 1.0
    assert value(samples, "cityops_scene_run_seconds_count", scene="covers") >= 1
    assert value(samples, "cityops_detections_active", scene="covers", kind="cover_displaced") >= 1
    (district, severity) = conn.execute(
        "select district_id, severity from cases where subject = %s", (code,)
    ).fetchone()
    assert district == "d0"
    assert (
        value(
            samples,
            "cityops_cases_open",
            category="cover_displaced",
            district=district,
            severity=severity,
        )
        >= 1
    )
    assert value(samples, "cityops_devices", type="manhole", district="d0", state="online") >= 1
    assert value(samples, "cityops_scene_watermark_age_seconds", scene="covers", district="d0") >= 0
    # bounded labels: no label of any series names a device, a component or a case
    devices = {d["device_id"] for d in city.devices} | {a["code"] for a in city.assets}
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert not labels & devices
    assert len(samples) < 2000


def test_the_city_s_state_has_as_many_series_for_ten_thousand_more_devices_as_for_none(
    conn: psycopg.Connection, database_url, tmp_path
) -> None:
    state = CityState(lambda: psycopg.connect(database_url))

    def series() -> int:
        return sum(len(family.samples) for family in state.collect())

    before = series()
    spec = CitySpec(
        seed=9,
        districts=4,
        covers=9000,
        lamps=1000,
        division_base=random.randrange(300_000, 900_000),
        district_prefix=f"card{random.randrange(1000)}-",
        # far from the other tests' cities, whose regions must not be covered by these
        center_lat=-33.92,
        center_lon=18.42,
    )
    big = import_city(conn, tmp_path, spec)
    assert sum(1 for d in big.devices if d["type"] in ("manhole", "light")) == 10_000
    # four new districts: at most their device types (manhole, light, gateway, sweeper) in
    # two states each; nothing per device
    assert series() - before <= 4 * 4 * 2


def promql_metrics() -> dict[str, set[str]]:
    """The metric names each dashboard panel and alerting rule queries, by where."""
    queried: dict[str, set[str]] = {}
    for board in grafana.DASHBOARDS:
        for panel in board.panels:
            for query in panel.queries:
                if isinstance(query, grafana.Prom):
                    names = set(re.findall(r"\bcityops_[a-z_]+", query.expr))
                    queried.setdefault(f"{board.uid}: {panel.title}", set()).update(names)
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            queried[rule["alert"]] = set(re.findall(r"\bcityops_[a-z_]+", rule["expr"]))
    return queried


def test_every_metric_the_dashboards_and_alerts_query_is_served_by_the_running_processes(
    conn: psycopg.Connection, database_url, broker_url, city, tag, tmp_path
) -> None:
    ports = {"ingest": free_port(), "scenes": free_port(), "api": free_port()}
    device = f"metrics-{tag}"
    register(conn, {device: "manhole"})
    # a case dispatched two days ago and still open: overdue
    then = CaseService(conn, CATALOG, clock=lambda: datetime.now(UTC) - timedelta(days=2))
    cover = next(d["asset_code"] for d in city.devices if d["type"] == "manhole")
    late = then.report(Report("cover_damaged", "inspector", asset_code=cover)).case_id
    then.act(late, Action.REGISTER, OPERATOR)
    then.act(late, Action.DISPATCH, OPERATOR)
    env = {
        **os.environ,
        "CITYOPS_DATABASE_URL": database_url,
        "CITYOPS_MQTT_URL": broker_url,
        "CITYOPS_MQTT_CLIENT_ID": f"ingest-{tag}",
        "CITYOPS_MQTT_TOPIC_PREFIX": f"metrics-{tag}",
        "CITYOPS_METRICS_PORT": str(ports["ingest"]),
        "CITYOPS_CASES_API_PORT": str(ports["api"]),
        "CITYOPS_CASES_API_WORKERS": "1",
    }
    log = tmp_path / "processes.log"
    with (
        log.open("ab") as out,
        subprocess.Popen(
            [sys.executable, "-m", "cityops", "ingest"], env=env, stdout=out, stderr=out
        ) as ingest,
        subprocess.Popen(
            [sys.executable, "-m", "cityops", "api"], env=env, stdout=out, stderr=out
        ) as api,
        running_scenes(
            database_url,
            broker_url,
            tmp_path / "scenes.log",
            CITYOPS_METRICS_SCENES_PORT=str(ports["scenes"]),
        ),
    ):
        try:
            wait_for(lambda: is_listening("127.0.0.1", ports["ingest"]), what="ingest's metrics")
            wait_for(
                lambda: value(scrape(ports["ingest"]), "cityops_ingest_mqtt_connected") == 1,
                what="ingest connected",
            )
            publisher = Publisher(broker_url, mqtt.MQTTProtocolVersion.MQTTv5)
            topic = f"metrics-{tag}/cityops/v1/manhole/{device}/telemetry"
            publisher.publish(topic, json.dumps({"ts": int(time.time() * 1000), "tilt_deg": 1.0}))
            publisher.publish(topic, b"{garbled")
            publisher.close()
            wait_for(
                lambda: (
                    value(
                        scrape(ports["ingest"]),
                        "cityops_ingest_messages_total",
                        device_type="manhole",
                        result="quarantined",
                    )
                    == 1
                ),
                what="both messages committed",
            )
            wait_for(lambda: is_listening("127.0.0.1", ports["api"]), what="the API")
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['api']}/health", timeout=10):
                pass
            wait_for(
                lambda: value(scrape(ports["scenes"]), "cityops_city_state_up") == 1,
                what="the scenes' metrics",
            )
            wait_for(
                lambda: any(
                    name == "cityops_scene_run_seconds_count" for name, _ in scrape(ports["scenes"])
                ),
                what="a scene run",
            )
            served = {
                process: {name for name, _ in scrape(port, path)}
                for process, port, path in (
                    ("ingest", ports["ingest"], "/metrics"),
                    ("scenes", ports["scenes"], "/metrics"),
                    ("api", ports["api"], "/metrics/"),
                )
            }
        finally:
            for process in (ingest, api):
                process.send_signal(signal.SIGTERM)
            assert ingest.wait(timeout=30) == 0, log.read_text()
            # uvicorn shuts down cleanly, then re-raises the signal it caught
            assert api.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
            forget_session(broker_url, f"ingest-{tag}")
    everything = set().union(*served.values())
    missing = {
        where: sorted(name for name in names if not _served(name, everything))
        for where, names in promql_metrics().items()
    }
    assert not {where: names for where, names in missing.items() if names}, missing
    assert len(promql_metrics()) == 6 + 9  # the six rules and the platform's nine panels
    # each process serves its own
    assert "cityops_ingest_lag_seconds_bucket" in served["ingest"]
    assert "cityops_scene_watermark_age_seconds" in served["scenes"]
    assert "cityops_api_request_seconds_bucket" in served["api"]


def _served(name: str, samples: set[str]) -> bool:
    """Whether a PromQL metric name is among the scraped samples' (a histogram's by its parts)."""
    return name in samples or f"{name}_bucket" in samples
