"""Every SQL query of every generated dashboard, run against a database that a simulated city
filled through MQTT, ingest and the scenes: it runs, returns rows, and has the columns its panel
reads. On the session server's storage path (.ci/run runs both), in a database of its own, so
the rows are this city's.

The city: a full lighting and sweeping day (noon to noon in the city, faults by rate), then the
next evening's three hours with faults still going on at their end (a dark cabinet, a lamp out,
an open cover) and a few garbled messages, so the "now" panels have something active; then a
unit closes a case, and an inspector's report of days ago waits overdue.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from typer.testing import CliRunner

from cases.access import OPERATOR
from cases.evaluation import months_to_store
from cases.lifecycle import Action
from cases.service import CaseService, Report
from cityops import grafana
from cityops.cli import app
from cityops.settings import Settings
from ingest.settings import IngestSettings
from scenes.engine import run_once
from scenes.settings import ScenesSettings
from simulator.city import City, CitySpec
from simulator.fleet import Publication, RunOptions, simulate
from simulator.publish import PublishOptions, publish
from simulator.scenario import Scenario
from store import db, rollups
from store.settings import DatabaseSettings
from tests.plugin import (
    CATALOG,
    RunningWorker,
    create_database,
    drop_database,
    forget_session,
    import_city,
    wait_for,
)
from wire.mqtt import MqttSettings

#: The lighting day judged: noon to noon in the city (UTC+8), four days ago.
DAY = date.today() - timedelta(days=4)
NOON = datetime(DAY.year, DAY.month, DAY.day, 4, 0, tzinfo=UTC).timestamp()  # 12:00 in the city
EVENING = NOON + 32 * 3600  # 20:00 the next day


@dataclass(frozen=True, slots=True)
class Filled:
    url: str
    variables: dict[str, str]
    start: datetime
    end: datetime


def _through_ingest(url: str, broker_url: str, publications: list[Publication]) -> None:
    """Publish under a topic prefix of the test's own and wait until ingest stored every one."""
    prefix = f"dash-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        database=DatabaseSettings(url=url),
        mqtt=MqttSettings(url=broker_url, client_id=f"ingest-{prefix}", topic_prefix=prefix),
        ingest=IngestSettings(flush_interval_s=0.05),
    )
    worker = RunningWorker(settings)
    worker.thread.start()
    try:
        wait_for(lambda: worker.metric("cityops_ingest_mqtt_connected") == 1, what="connect")
        options = PublishOptions(url=broker_url, speed=0, topic_prefix=prefix)
        publish(publications, options, threading.Event())
        wait_for(
            lambda: worker.metric_total("cityops_ingest_messages_total") >= len(publications),
            timeout_s=180,
            what="every message committed",
        )
        # the broker keeps nothing of this test's
        retained = sorted({p.topic for p in publications if p.retain})
        empty = [Publication(0.0, topic, b"", retain=True) for topic in retained]
        publish(empty, options, threading.Event())
    finally:
        worker.close()
        forget_session(broker_url, settings.mqtt.client_id)


def _judged(url: str, now: float) -> None:
    with psycopg.connect(url) as conn:
        run_once(conn, ScenesSettings(), CATALOG, now=now)
        rollups.refresh(conn)


def _worked(url: str, city: City) -> None:
    """What units did meanwhile: one of the scenes' cases fixed and verified, and an inspector's
    report of three days ago dispatched then and still open (overdue)."""
    with psycopg.connect(url) as conn:
        cases = CaseService(conn, CATALOG)
        (fixed,) = conn.execute(
            "select case_id from cases where state = 'dispatched' order by case_id limit 1"
        ).fetchone()
        for action in (Action.ACCEPT, Action.DISPOSE, Action.VERIFY):
            cases.act(fixed, action, OPERATOR)
        then = CaseService(conn, CATALOG, clock=lambda: datetime.fromtimestamp(EVENING, UTC))
        cover = next(d["asset_code"] for d in city.devices if d["type"] == "manhole")
        late = then.report(Report("cover_damaged", "inspector", asset_code=cover)).case_id
        then.act(late, Action.REGISTER, OPERATOR)
        then.act(late, Action.DISPATCH, OPERATOR)
        conn.commit()


@pytest.fixture(scope="module")
def filled(
    server_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Filled]:
    url = create_database(server_url)
    try:
        db.migrate(DatabaseSettings(url=url))
        with psycopg.connect(url, autocommit=True) as conn:
            city = import_city(
                conn,
                tmp_path_factory.mktemp("dashboards"),
                CitySpec(seed=4, districts=2, covers=24, lamps=40, sweepers_per_district=1),
            )
        rates = {"cover_displaced": 0.2, "lamp_out": 0.1, "segment_skipped": 0.1}
        day = simulate(
            city,
            Scenario(rates={**rates, "sweeping_too_fast": 0.1}),
            RunOptions(start=NOON, duration_s=24 * 3600, seed=4),
        )
        _through_ingest(url, broker_url, day.publications)
        _judged(url, NOON + 24 * 3600)
        covers = [d["device_id"] for d in city.devices if d["type"] == "manhole"]
        lamps = [d for d in city.devices if d["type"] == "light"]
        cabinet = lamps[0]["gateway_id"]
        elsewhere = next(d["device_id"] for d in lamps if d["gateway_id"] != cabinet)
        evening = simulate(
            city,
            Scenario(
                fault=[
                    {
                        "kind": "cabinet_outage",
                        "subject": cabinet,
                        "start_min": 60,
                        "duration_min": 120,
                    },
                    {
                        "kind": "lamp_out",
                        "subject": elsewhere,
                        "start_min": 30,
                        "duration_min": 150,
                    },
                    {
                        "kind": "cover_open",
                        "subject": covers[0],
                        "start_min": 60,
                        "duration_min": 120,
                    },
                ]
            ),
            RunOptions(start=EVENING, duration_s=3 * 3600, seed=5),
        )
        garbled = [  # what a broken firmware sends: quarantined
            Publication(EVENING + 600 + k, f"cityops/v1/manhole/{covers[k]}/telemetry", body)
            for k, body in enumerate((b"{not json", b'{"ts": "yesterday"}', b"\xff\xfe"))
        ]
        _through_ingest(url, broker_url, sorted(evening.publications + garbled))
        _judged(url, EVENING + 3 * 3600)
        _worked(url, city)
        this_month = months_to_store(datetime.now(UTC))[1]
        for month in sorted({*months_to_store(datetime.fromtimestamp(EVENING, UTC)), this_month}):
            done = CliRunner().invoke(
                app,
                ["cases", "evaluate", "--month", month, "--store"],
                env={"CITYOPS_DATABASE_URL": url},
            )
            assert done.exit_code == 0, done.output
        district = next(r["region_id"] for r in city.regions if r["level"] == "district")
        yield Filled(
            url,
            {
                "district": district,
                "cover": covers[0],
                "lamp": elsewhere,
                "night": DAY.isoformat(),
                "month": this_month,
            },
            datetime.fromtimestamp(NOON - 3600, UTC),
            datetime.now(UTC) + timedelta(minutes=1),  # Grafana's range ends on a whole second
        )
    finally:
        drop_database(server_url, url)


@pytest.mark.parametrize("board", grafana.DASHBOARDS, ids=lambda b: b.uid)
def test_every_sql_query_of_the_dashboard_returns_the_columns_its_panel_reads(
    filled: Filled, board: grafana.Board
) -> None:
    failures = []
    checked = 0
    with psycopg.connect(filled.url, autocommit=True) as conn:
        for title, query in grafana.sql_queries(board):
            sql = grafana.render(
                query.sql, start=filled.start, end=filled.end, variables=filled.variables
            )
            try:
                cur = conn.execute(sql)
            except psycopg.Error as exc:
                failures.append(f"{title}: {exc}")
                continue
            columns = tuple(c.name for c in cur.description or ())
            rows = cur.fetchall()
            if columns != query.columns:
                failures.append(f"{title}: columns {columns}, the panel reads {query.columns}")
            elif not rows:
                failures.append(f"{title}: no rows")
            elif query.time_series and not all(isinstance(r[0], datetime) for r in rows):
                failures.append(f"{title}: a time series whose first column is not a time")
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked == len(grafana.sql_queries(board))


def test_the_filled_city_has_what_the_panels_show(filled: Filled) -> None:
    """The fixture's data is what the panels' checks rely on: nights judged, things active."""
    with psycopg.connect(filled.url) as conn:
        counts = conn.execute(
            "select (select count(*) from road_nights where night = %(night)s), "
            "(select count(*) from lighting_nights where night = %(night)s), "
            "(select count(*) from detections where kind = 'cabinet_outage' "
            " and cleared_at is null), "
            "(select count(*) from detections where kind = 'cover_open' and cleared_at is null), "
            "(select count(*) from evaluations where month = %(month)s)",
            {"night": DAY, "month": filled.variables["month"]},
        ).fetchone()
    assert counts is not None
    assert all(n > 0 for n in counts), counts
