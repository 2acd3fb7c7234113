"""Cases against a real database: routing, lifecycle over the API and the CLI, escalation,
one open case per subject under concurrency, and the monthly evaluation."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cases.access import CALLER_ACTIONS, OPERATOR, create_token
from cases.api import create_app
from cases.evaluation import evaluate, months_to_store, store
from cases.lifecycle import Action, State, rebuild
from cases.service import CaseService, ForbiddenActionError, Receipt, Report
from cityops.cli import app as cli_app
from simulator.city import COVER_CATEGORIES
from tests.plugin import CATALOG, wait_for

ROOT = Path(__file__).resolve().parents[2]


def cover(city, category: str) -> dict:
    return next(a for a in city.assets if a["category"] == category)


def sensor_case(conn: psycopg.Connection, category: str, asset: dict) -> int:
    """A case a sensor reports on ``asset``: registered and dispatched to its unit at once."""
    receipt = CaseService(conn, CATALOG).report(
        Report(category, "sensor", asset_code=asset["code"])
    )
    assert receipt.case_id is not None
    return receipt.case_id


@pytest.fixture
def api(database_url: str, conn: psycopg.Connection, city):
    """Call the API as a unit of the city (its tokens need the city's units)."""
    with TestClient(create_app(database_url, CATALOG)) as client:
        tokens = {
            unit: create_token(conn, unit, role)
            for unit, role in (
                ("d0-coordinating", "coordinator"),
                ("city-office", "coordinator"),
                ("d0-drainage", "unit"),
                ("d0-water", "unit"),
                ("d0-gas", "unit"),
                ("d0-s0-office", "unit"),
            )
        }

        def call(method: str, path: str, unit: str, **kwargs):
            headers = {"Authorization": f"Bearer {tokens[unit]}"}
            return client.request(method, path, headers=headers, **kwargs)

        yield call


def test_each_cover_category_routes_to_its_owner_and_ownerless_to_the_office(conn, city) -> None:
    cases = CaseService(conn, CATALOG)
    for minor, category, _, owner_kind in COVER_CATEGORIES:
        asset = cover(city, category)
        assert asset["code"][8:10] == minor
        receipt = cases.report(Report("cover_displaced", "sensor", asset_code=asset["code"]))
        assert receipt.created
        assert receipt.case_id is not None
        row = cases.show(receipt.case_id, OPERATOR)
        expected = f"d0-{owner_kind}" if owner_kind else "d0-coordinating"
        assert (row["state"], row["unit_id"], row["district_id"]) == (
            "dispatched",
            expected,
            "d0",
        ), category
        assert row["deadline"] - row["dispatched_at"] == timedelta(hours=4)


def test_whole_lifecycle_over_the_api_with_return_rework_and_cancel(api, conn, city) -> None:
    sewage = cover(city, "sewage")
    opened = api(
        "POST",
        "/cases",
        "d0-coordinating",
        json={
            "category": "cover_damaged",
            "asset_code": sewage["code"],
            "source": "inspector",
            "description": "crack across the lid",
        },
    )
    assert opened.status_code == 201, opened.json()
    case_id = opened.json()["case_id"]
    steps = [
        ("d0-coordinating", "register", {}, "registered"),
        ("d0-coordinating", "dispatch", {"unit_id": "d0-water"}, "dispatched"),
        ("d0-water", "return", {"note": "sewage is not ours"}, "returned"),
        ("d0-coordinating", "dispatch", {}, "dispatched"),  # routing: the drainage company
        ("d0-drainage", "accept", {}, "accepted"),
        (
            "d0-drainage",
            "dispose",
            {"note": "lid replaced", "photo_url": "https://x/1.jpg"},
            "disposed",
        ),
        ("d0-coordinating", "reopen", {"note": "still rocks"}, "dispatched"),
        ("d0-drainage", "accept", {}, "accepted"),
        ("d0-drainage", "comment", {"note": "parts ordered"}, "accepted"),
        ("d0-drainage", "dispose", {"note": "new frame"}, "disposed"),
        ("d0-coordinating", "verify", {}, "closed"),
    ]
    assert api("POST", f"/cases/{case_id}/register", "d0-coordinating").status_code == 200
    unknown = api(
        "POST", f"/cases/{case_id}/dispatch", "d0-coordinating", json={"unit_id": "nobody"}
    )
    assert unknown.status_code == 422
    assert unknown.json() == {"error": "no unit 'nobody' in district d0 to dispatch to"}
    steps = steps[1:]
    for unit, action, body, state in steps:
        response = api("POST", f"/cases/{case_id}/{action}", unit, json=body)
        assert response.status_code == 200, (action, response.json())
        assert response.json()["state"] == state, action
    shown = api("GET", f"/cases/{case_id}", "d0-coordinating").json()
    assert [e["action"] for e in shown["events"]] == ["open", "register"] + [s[1] for s in steps]
    assert (shown["returns"], shown["reworks"], shown["unit_id"]) == (1, 1, "d0-drainage")
    cases = CaseService(conn, CATALOG)
    assert rebuild(cases.history(case_id)) == cases.state_of(case_id)

    other = api(
        "POST",
        "/cases",
        "d0-coordinating",
        json={"category": "litter", "lat": 41.8057, "lon": 123.4315},
    ).json()["case_id"]
    cancelled = api(
        "POST",
        f"/cases/{other}/cancel",
        "d0-coordinating",
        json={"note": "duplicate of a hotline report"},
    )
    assert cancelled.json()["state"] == "cancelled"


@pytest.fixture
def other_district(conn: psycopg.Connection, tag: str) -> str:
    """A second district, of this test alone, with an office, a water company and a sensor."""
    district = f"x{tag}"
    conn.execute(
        "insert into regions (region_id, name, level) values (%s, 'another district', 'district')",
        (district,),
    )
    conn.cursor().executemany(
        "insert into units (unit_id, name, level, kind, region_id) "
        "values (%s, 'a unit', 'district', %s, %s)",
        [(f"{district}-{kind}", kind, district) for kind in ("coordinating", "water")],
    )
    conn.execute(
        "insert into devices (device_id, type, region_id) values (%s, 'manhole', %s)",
        (f"{district}-sensor", district),
    )
    return district


def test_an_office_dispatches_inside_its_district_and_the_city_office_anywhere(
    api, conn, city, other_district
) -> None:
    foreign_unit = f"{other_district}-water"
    water = cover(city, "water_supply")
    case_id = (
        CaseService(conn, CATALOG)
        .report(Report("cover_damaged", "inspector", asset_code=water["code"]))
        .case_id
    )
    assert api("POST", f"/cases/{case_id}/register", "d0-coordinating").status_code == 200
    path = f"/cases/{case_id}/dispatch"
    foreign = api("POST", path, "d0-coordinating", json={"unit_id": foreign_unit})
    unknown = api("POST", path, "d0-coordinating", json={"unit_id": "nobody"})
    # a unit of another district is answered as no unit at all: nothing tells them apart
    assert (foreign.status_code, unknown.status_code) == (422, 422)
    assert foreign.json() == {"error": f"no unit {foreign_unit!r} in district d0 to dispatch to"}
    assert unknown.json() == {"error": "no unit 'nobody' in district d0 to dispatch to"}
    assert CaseService(conn, CATALOG).state_of(case_id).state is State.REGISTERED
    street = api("POST", path, "d0-coordinating", json={"unit_id": "d0-s0-office"})
    assert street.json()["unit_id"] == "d0-s0-office"  # its street lies in the district
    assert api("POST", f"/cases/{case_id}/return", "d0-s0-office").status_code == 200
    shown = api("GET", f"/cases/{case_id}", "city-office")
    assert shown.status_code == 200, shown.json()
    dispatched = api("POST", path, "city-office", json={"unit_id": foreign_unit})
    assert dispatched.status_code == 200, dispatched.json()
    assert (dispatched.json()["state"], dispatched.json()["unit_id"]) == (
        "dispatched",
        foreign_unit,
    )


def action_names(operation: dict) -> list[str | None]:
    """The actions an operation of the OpenAPI document can name in its path; [None]: none."""
    for parameter in operation["parameters"]:
        if parameter["name"] == "action":
            return parameter["schema"]["enum"]
    return [None]


def test_every_endpoint_answers_a_foreign_case_as_it_answers_a_missing_one(
    api, conn, city, other_district
) -> None:
    document = api("GET", "/openapi.json", "d0-water").json()
    requests = [  # every operation on a case id, once per action it can name
        (method.upper(), path, action)
        for path, operations in document["paths"].items()
        if "{case_id}" in path
        for method, operation in operations.items()
        for action in action_names(operation)
    ]
    assert len(requests) == 1 + len(CALLER_ACTIONS)  # show, and every action
    other = CaseService(conn, CATALOG).report(
        Report("other", "sensor", device_id=f"{other_district}-sensor")
    )
    foreign = {
        "d0-water": sensor_case(conn, "cover_missing", cover(city, "gas")),  # d0-gas's case
        "d0-coordinating": other.case_id,  # a case of the other district
    }
    (missing,) = conn.execute("select max(case_id) + 1000 from cases").fetchone()
    for unit, case_id in foreign.items():
        for method, path, action in requests:
            body = {} if method == "POST" else None
            seen = api(method, path.format(case_id=case_id, action=action), unit, json=body)
            unseen = api(method, path.format(case_id=missing, action=action), unit, json=body)
            assert (seen.status_code, unseen.status_code) == (404, 404), (unit, path)
            assert seen.text.replace(str(case_id), "ID") == unseen.text.replace(
                str(missing), "ID"
            ), (unit, path)


def test_illegal_transitions_and_foreign_cases_are_refused(api, conn, city, database_url) -> None:
    gas = cover(city, "gas")
    case_id = sensor_case(conn, "cover_missing", gas)
    refused = api("POST", f"/cases/{case_id}/verify", "d0-coordinating")
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "cannot verify a case that is dispatched; allowed: accept, return, merge, "
        "comment, escalate, report",
        "state": "dispatched",
        "allowed": ["accept", "return", "merge", "comment", "escalate", "report"],
    }
    for unit in ("d0-water", "d0-drainage"):
        assert api("GET", f"/cases/{case_id}", unit).status_code == 404
        assert api("POST", f"/cases/{case_id}/accept", unit).status_code == 404
    assert api("GET", "/cases/999999999", "d0-gas").status_code == 404
    office_only = api("POST", f"/cases/{case_id}/dispatch", "d0-gas", json={})
    assert office_only.status_code == 403
    assert "may not dispatch" in office_only.json()["error"]
    for platforms in (Action.OPEN, Action.REPORT, Action.ESCALATE):  # not even an operator's
        with pytest.raises(ForbiddenActionError):
            CaseService(conn, CATALOG).act(case_id, platforms, OPERATOR)
    assert api("POST", f"/cases/{case_id}/accept", "d0-gas").json()["state"] == "accepted"
    assert api("GET", "/cases", "d0-water").status_code == 200
    mine = [c["case_id"] for c in api("GET", "/cases?state=accepted", "d0-gas").json()]
    assert case_id in mine
    assert case_id not in [c["case_id"] for c in api("GET", "/cases", "d0-water").json()]
    with TestClient(create_app(database_url, CATALOG)) as anonymous:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            refused_anonymous = anonymous.get("/cases", headers=headers)
            assert refused_anonymous.status_code == 401
            assert "bearer token" in refused_anonymous.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/cases?unit=d0-water%00", None, "query.unit"),  # PostgreSQL refuses NUL
        ("GET", "/cases?district=", None, "query.district"),
        ("GET", "/cases?category=potholes", None, "query.category"),
        ("GET", "/cases?stat=closed", None, "query.stat"),  # a misspelt filter
        ("POST", "/cases", {"category": "", "lat": 41.8, "lon": 123.4}, "body.category"),
        ("POST", "/cases", {"category": "litter", "description": "a\x00"}, "body.description"),
        ("POST", "/cases/1/report", {}, "path.action"),  # only the platform reports into a case
        ("POST", "/cases/1/dispatch", {"unit_id": ""}, "body.unit_id"),
    ],
)
def test_bad_input_is_refused_naming_its_field_never_a_server_error(
    api, method, path, body, field
) -> None:
    response = api(method, path, "d0-coordinating", json=body)
    assert response.status_code == 422, response.json()
    assert [p["field"] for p in response.json()["problems"]] == [field]


def test_a_reporter_gets_its_report_and_never_the_id_of_a_case_it_may_not_see(
    api, conn, city
) -> None:
    gas = cover(city, "gas")
    case_id = sensor_case(conn, "cover_missing", gas)  # d0-gas's: d0-water may not see it

    def report(unit: str, asset: dict) -> dict:
        body = {"category": "cover_missing", "asset_code": asset["code"], "source": "inspector"}
        response = api("POST", "/cases", unit, json=body)
        assert response.status_code == 201, response.json()
        return response.json()

    joined = report("d0-water", gas)
    assert joined == {"report_id": joined["report_id"], "case_id": None, "created": None}
    assert conn.execute(
        "select case_id, action, actor from case_events where event_id = %s",
        (joined["report_id"],),
    ).fetchone() == (case_id, "report", "d0-water")
    # a report that opens a case waiting for the office looks the same: nothing tells them apart
    opened = report("d0-water", cover(city, "sewage"))
    assert opened == {"report_id": opened["report_id"], "case_id": None, "created": None}
    mine = report("d0-gas", gas)  # the gas company's own case
    assert (mine["case_id"], mine["created"]) == (case_id, False)


def test_a_second_report_adds_an_event_and_concurrent_reports_make_one_case(
    database_url, conn, city
) -> None:
    asset = cover(city, "storm_water")
    errors: list[BaseException] = []
    results: list[Receipt] = []

    def report() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                results.append(
                    CaseService(own, CATALOG).report(
                        Report("cover_displaced", "sensor", asset_code=asset["code"])
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=report) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.case_id for r in results}) == 1
    assert sorted(r.created for r in results) == [False] * 5 + [True]
    case_id = results[0].case_id
    row = conn.execute("select reports, state from cases where case_id = %s", (case_id,))
    assert row.fetchone() == (6, "dispatched")
    assert conn.execute(
        "select count(*) from cases where subject = %s", (asset["code"],)
    ).fetchone() == (1,)


def test_concurrent_reports_from_two_processes_still_give_one_case(
    database_url, conn, city, tmp_path
) -> None:
    import subprocess
    import sys

    asset = cover(city, "telecom")
    script = (
        "import sys; from pathlib import Path; import psycopg;"
        "from cases.catalog import load_catalog; from cases.service import CaseService, Report;"
        f"c = load_catalog(Path({str(ROOT / 'config/categories.toml')!r}));"
        f"conn = psycopg.connect({database_url!r}, autocommit=True);"
        "s = CaseService(conn, c);"
        f"[s.report(Report('cover_displaced', 'sensor', asset_code={asset['code']!r})) "
        "for _ in range(20)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert conn.execute(
        "select count(*), sum(reports) from cases where subject = %s", (asset["code"],)
    ).fetchone() == (1, 40)


def test_concurrent_actions_on_one_case_all_land_in_its_history(database_url, conn, city) -> None:
    asset = cover(city, "street_light")
    case_id = sensor_case(conn, "cover_damaged", asset)
    errors: list[BaseException] = []

    def comment(n: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as own:
                cases = CaseService(own, CATALOG)
                for k in range(15):
                    cases.act(case_id, Action.COMMENT, OPERATOR, note=f"{n}-{k}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=comment, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cases = CaseService(conn, CATALOG)
    history = cases.history(case_id)
    assert sorted(e.note for e in history if e.action is Action.COMMENT) == sorted(
        f"{n}-{k}" for n in range(3) for k in range(15)
    )
    assert rebuild(history) == cases.state_of(case_id)
    assert conn.execute("select version from cases where case_id = %s", (case_id,)).fetchone() == (
        len(history) - 1,
    )


def test_overdue_cases_are_escalated_once(conn, city) -> None:
    now = [datetime.now(UTC) - timedelta(hours=10)]
    cases = CaseService(conn, CATALOG, clock=lambda: now[0])
    asset = cover(city, "heating")
    case_id = cases.report(Report("cover_missing", "sensor", asset_code=asset["code"])).case_id
    now[0] += timedelta(hours=1)  # deadline is 2 h
    assert case_id not in cases.escalate_overdue()
    now[0] += timedelta(hours=2)
    assert case_id in cases.escalate_overdue()
    now[0] += timedelta(hours=2)
    assert case_id not in cases.escalate_overdue()
    actions = [e.action for e in cases.history(case_id)]
    assert actions.count(Action.ESCALATE) == 1
    listed = cases.find(OPERATOR, overdue=True, limit=500)
    assert case_id in [c["case_id"] for c in listed]


def test_the_api_escalates_overdue_cases_stores_the_evaluation_and_times_requests(
    database_url, conn, city
) -> None:
    started = conn.execute("select clock_timestamp()").fetchone()[0]
    conn.commit()
    old = CaseService(conn, CATALOG, clock=lambda: datetime.now(UTC) - timedelta(hours=5))
    case_id = old.report(
        Report("cover_missing", "sensor", asset_code=cover(city, "power")["code"])
    ).case_id
    (unit_id,) = conn.execute("select unit_id from cases where case_id = %s", (case_id,)).fetchone()
    with TestClient(create_app(database_url, CATALOG, escalate_every_s=0.05)) as client:
        # the months it stores at start: the case's month among them, with its unit
        wait_for(
            lambda: conn.execute(
                "select cases from evaluations where scope = 'unit' and name = %s "
                "and month = any(%s) and computed_at >= %s",
                (unit_id, list(months_to_store(datetime.now(UTC))), started),
            ).fetchone(),
            what="the API's stored evaluation",
        )
        wait_for(
            lambda: (
                conn.execute(
                    "select escalated_at from cases where case_id = %s", (case_id,)
                ).fetchone()[0]
                is not None
            ),
            what="the API's escalation of the overdue case",
        )
        assert client.get("/health").status_code == 200
        assert client.get("/cases/12345678901").status_code == 401
        exposition = client.get("/metrics/").text
    escalated = re.search(r"^cityops_cases_escalated_total (\S+)$", exposition, re.M)
    assert escalated is not None
    assert float(escalated.group(1)) >= 1
    # by route template, never the path
    timed = 'cityops_api_request_seconds_count{method="%s",route="%s",status="%s"} 1.0'
    assert timed % ("GET", "/health", "200") in exposition
    assert timed % ("GET", "/cases/{case_id}", "401") in exposition
    assert "12345678901" not in exposition


def test_cli_walks_a_case_through_its_life(database_url, conn, city) -> None:
    runner = CliRunner()
    env = {"CITYOPS_DATABASE_URL": database_url}

    def cli(*args: str):
        result = runner.invoke(cli_app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    asset = cover(city, "water_supply")
    opened = cli(
        "cases", "report", "cover_damaged", "--asset", asset["code"], "--as", "d0-s0-office"
    )
    assert "may not see" in opened  # the case waits for the district's office, not the street's
    (case_id,) = conn.execute(
        "select case_id::text from case_events where event_id = %s", (int(opened.split()[1]),)
    ).fetchone()
    again = cli(
        "cases", "report", "cover_damaged", "--asset", asset["code"], "--as", "d0-coordinating"
    )
    assert again.startswith(f"case {case_id} (added to the open case), report ")
    cli("cases", "register", case_id, "--as", "d0-coordinating")
    assert "dispatched (d0-water)" in cli("cases", "dispatch", case_id, "--as", "d0-coordinating")
    cli("cases", "accept", case_id, "--as", "d0-water")
    cli("cases", "dispose", case_id, "--note", "lid reseated", "--as", "d0-water")
    assert "closed" in cli("cases", "verify", case_id, "--as", "d0-coordinating")
    refused = runner.invoke(cli_app, ["cases", "accept", case_id, "--as", "d0-water"], env=env)
    assert refused.exit_code == 2
    assert "cannot accept a case that is closed" in refused.output
    assert '"action": "verify"' in cli("cases", "show", case_id)
    assert case_id in cli("cases", "list", "--state", "closed", "--as", "d0-water")


def test_evaluation_figures_equal_the_ones_worked_out_by_hand(conn, city) -> None:
    t0 = datetime(2025, 3, 3, 1, 0, tzinfo=UTC)  # 09:00 in the city
    clock = [t0]
    cases = CaseService(conn, CATALOG, clock=lambda: clock[0])

    def at(hours: float) -> None:
        clock[0] = t0 + timedelta(hours=hours)

    sewage = [a for a in city.assets if a["category"] == "sewage"][:3]
    water = cover(city, "water_supply")
    drainage = replace(OPERATOR)  # the operator acts for every unit here
    # case A (drainage): disposed in 2 h, closed in 3 h (deadline 4 h): on time
    a = cases.report(Report("cover_displaced", "sensor", asset_code=sewage[0]["code"])).case_id
    at(1)
    cases.act(a, Action.ACCEPT, drainage)
    at(2)
    cases.act(a, Action.DISPOSE, drainage)
    at(3)
    cases.act(a, Action.VERIFY, drainage)
    # case B (drainage): disposed at 5 h, reopened, disposed at 8 h, closed at 9 h (late)
    at(0)
    b = cases.report(Report("cover_displaced", "sensor", asset_code=sewage[1]["code"])).case_id
    at(5)
    cases.act(b, Action.ACCEPT, drainage)
    cases.act(b, Action.DISPOSE, drainage)
    at(6)
    cases.act(b, Action.REOPEN, drainage)  # new deadline: 6 h + 4 h = 10 h
    at(7)
    cases.act(b, Action.ACCEPT, drainage)
    at(8)
    cases.act(b, Action.DISPOSE, drainage)
    at(9)
    cases.act(b, Action.VERIFY, drainage)  # before the new deadline: on time
    # case C (drainage): never disposed, deadline long past by the month's end
    at(0)
    c = cases.report(Report("cover_displaced", "sensor", asset_code=sewage[2]["code"])).case_id
    # case D: first sent to water (wrong), returned, re-dispatched to water again (routing)
    d = cases.report(Report("cover_damaged", "inspector", asset_code=water["code"])).case_id
    cases.act(d, Action.REGISTER, drainage)
    cases.act(d, Action.DISPATCH, drainage, unit_id="d0-drainage")
    at(1)
    cases.act(d, Action.RETURN, drainage)
    cases.act(d, Action.DISPATCH, drainage)  # routed: d0-water
    at(30)
    cases.act(d, Action.ACCEPT, drainage)
    cases.act(d, Action.DISPOSE, drainage)  # deadline 1 h + 24 h = 25 h: late
    del c

    results = {(r.scope, r.name): r for r in evaluate(conn, "2025-03")}
    drain = results["unit", "d0-drainage"]
    assert drain.cases == 3
    assert drain.closure_rate == round(2 / 3, 4)
    assert drain.on_time_closure_rate == round(2 / 3, 4)  # A and B on time; C due, open
    assert drain.disposal_rate == round(2 / 3, 4)
    assert drain.on_time_disposal_rate == round(1 / 3, 4)  # B's first disposal at 5 h > 4 h
    assert drain.rework_rate == 0.5  # B reopened, of 2 closed
    assert drain.mean_disposal_hours == 3.5  # A 2 h, B 5 h
    assert drain.accurate_dispatch_rate == round(3 / 4, 4)  # A, B, C kept; D's returned
    water_unit = results["unit", "d0-water"]
    assert (water_unit.cases, water_unit.disposal_rate, water_unit.on_time_disposal_rate) == (
        1,
        1.0,
        0.0,
    )
    district = results["district", "d0"]
    assert district.cases == 4
    assert district.closure_rate == 0.5
    assert district.accurate_dispatch_rate == round(4 / 5, 4)
    ranks = [r.name for r in evaluate(conn, "2025-03") if r.scope == "unit"]
    assert ranks.index("d0-drainage") < ranks.index("d0-water")
    # stored for the dashboards: the same figures; storing again replaces the month
    store(conn, "2025-03")
    stored = store(conn, "2025-03")
    assert conn.execute("select count(*) from evaluations where month = '2025-03'").fetchone() == (
        len(stored),
    )
    assert conn.execute(
        "select cases, closure_rate, on_time_closure_rate, rework_rate, mean_disposal_hours "
        "from evaluations where month = '2025-03' and scope = 'unit' and name = 'd0-drainage'"
    ).fetchone() == (3, round(2 / 3, 4), round(2 / 3, 4), 0.5, 3.5)
