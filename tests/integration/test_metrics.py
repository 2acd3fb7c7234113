"""Prometheus metrics scraped from a running ``cityops scenes run``: its runs and the city's
state, with labels that never name a single device."""

from __future__ import annotations

import random
import socket
import time
import urllib.request

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from scenes.metrics import CityState
from simulator.city import CitySpec
from store.db import SCENES_CHANNEL
from tests.integration.test_scenes import covers_of
from tests.plugin import import_city, running_scenes, scenes_listening, store_tilts, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample the endpoint serves, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
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
