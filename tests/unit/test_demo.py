"""The demo without services: its scenario opens a case at once, its view fits 80 x 24."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from cityops.demo import _SHOWN_DETECTIONS, DEMO_CITY, DEMO_FAULTS, _Scenes, _view
from simulator.city import generate
from simulator.fleet import RunOptions, simulate

START = datetime(2026, 11, 25, 15, 55, tzinfo=UTC).timestamp()  # 23:55 in Shenyang


def test_the_demo_scenario_opens_a_cover_case_for_its_owner_in_the_first_minutes() -> None:
    city = generate(DEMO_CITY)
    covers = {d["device_id"]: d["asset_code"] for d in city.devices if d["type"] == "manhole"}
    owners = {a["code"]: a.get("owner_unit_id") for a in city.assets}
    units = {u["unit_id"]: u["kind"] for u in city.units}
    early = [
        f
        for f in DEMO_FAULTS.fault
        if f.kind in ("cover_open", "cover_displaced") and f.start_min <= 2
    ]
    assert early
    for fault in early:
        owner = owners[covers[fault.subject]]
        assert owner is not None
        assert units[owner] != "coordinating"  # a unit of its own, not the office's desk
    for seed in (1, 2):
        run = simulate(city, DEMO_FAULTS, RunOptions(start=START, duration_s=3600, seed=seed))
        shown = {(f.kind, f.subject, f.start) for f in run.faults}
        for fault in early:
            assert (fault.kind, fault.subject, START + fault.start_min * 60) in shown


def test_the_live_view_fits_an_80_by_24_terminal() -> None:
    detection = (START + 60, "sensor_offline", "mh-2101020103000001", "critical", 1234)
    case = ("dispatched", "d0-coordinating", "District 0 coordinating office")
    newest = [(*detection, *case)] * _SHOWN_DETECTIONS
    scenes = _Scenes(8, 1234, 1234, 1234, newest)
    console = Console(width=80, record=True, force_terminal=False)
    console.print(
        _view(999, 999_999, 9_999, 999, 999, 99_999, 99, 99_999, START, 60, START, scenes, 80)
    )
    lines = console.export_text().splitlines()
    assert len(lines) <= 22  # with the services line above and the cursor below
    assert all(len(line.rstrip()) <= 80 for line in lines)
    row = next(line for line in lines if "sensor_offline" in line)
    assert row.split()[:6] == [
        "23:56",
        "sensor_offline",
        "mh-2101020103000001",
        "critical",
        "1234",
        "dispatched",
    ]
    assert "d0-coordinat" in row  # the unit's id, at least most of it; its name when wider
    wide = Console(width=130, record=True)
    wide.print(_view(9, 9, 9, 9, 9, 9, 9, 9, START, 60, START, scenes, 130))
    assert "d0-coordinating District 0 coordinating office" in wide.export_text()
