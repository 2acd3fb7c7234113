"""The simulator without a broker: determinism, plans, faults in the message stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from math import inf
from pathlib import Path
from typing import Any

import pytest

from simulator.city import CitySpec, generate, write_bundle
from simulator.fleet import Run, RunOptions, simulate
from simulator.publish import ABUSE_KINDS, abuse_messages
from simulator.scenario import FAULT_KINDS, Fault, Scenario, ScenarioError, load_scenario

START = datetime(2026, 11, 25, 15, 55, tzinfo=UTC).timestamp()  # 23:55 in Shenyang
SPEC = CitySpec(seed=11, districts=2, covers=120, lamps=90, sweepers_per_district=2)
ALL_FAULTS = Scenario(rates={k: 0.1 for k, spec in FAULT_KINDS.items() if not spec.subtle})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_the_same_city_and_the_same_messages(tmp_path: Path) -> None:
    write_bundle(generate(SPEC), tmp_path / "a")
    write_bundle(generate(SPEC), tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")
    options = RunOptions(start=START, duration_s=1800, seed=3)
    first = simulate(generate(SPEC), ALL_FAULTS, options)
    again = simulate(generate(SPEC), ALL_FAULTS, options)
    assert [(p.t, p.topic, p.payload) for p in first.publications] == [
        (p.t, p.topic, p.payload) for p in again.publications
    ]
    assert first.faults == again.faults
    other = simulate(generate(SPEC), ALL_FAULTS, RunOptions(start=START, duration_s=1800, seed=4))
    assert [p.payload for p in other.publications] != [p.payload for p in first.publications]


def test_city_has_what_its_spec_asks_for() -> None:
    city = generate(SPEC)
    types = [d["type"] for d in city.devices]
    assert types.count("manhole") == 120
    assert types.count("light") == 90
    assert types.count("sweeper") == 4
    codes = [a["code"] for a in city.assets]
    assert {d["asset_code"] for d in city.devices if d["type"] in ("manhole", "light")} <= set(
        codes
    )
    assert len(codes) == len(set(codes))
    assert all(len(c) == 16 and c.isdigit() for c in codes)
    levels = {r["level"] for r in city.regions}
    assert levels == {"district", "street", "grid"}
    kinds = {u["kind"] for u in city.units if u["level"] == "district"}
    assert {"coordinating", "sanitation", "drainage", "lighting", "gas", "water"} <= kinds
    ownerless = [a for a in city.assets if a["category"] == "ownerless"]
    assert ownerless
    assert all(a["owner_unit_id"] is None for a in ownerless)
    assert city.roads
    assert all(r["max_speed_kmh"] == 8.0 and r["required_passes"] >= 1 for r in city.roads)


def test_every_device_type_publishes_and_sweepers_keep_to_plan() -> None:
    run = simulate(generate(SPEC), Scenario(), RunOptions(start=START, duration_s=1800, seed=1))
    kinds = {p.topic.split("/")[2] for p in run.publications}
    assert kinds == {"manhole", "gateway", "sweeper"}
    fixes = [json.loads(p.payload) for p in run.publications if "/sweeper/" in p.topic]
    sweeping = [f for f in fixes if f["brush_on"]]
    assert sweeping
    assert all(2.0 <= f["speed_kmh"] <= 9.0 for f in sweeping)
    between = [f for f in fixes if not f["brush_on"]]
    assert between
    assert all(f["speed_kmh"] > 15 for f in between)
    lamps = [e for p in run.publications if "/gateway/" in p.topic for e in json.loads(p.payload)]
    assert len({e["device_id"] for e in lamps}) == 90
    assert all(e["values"]["lamp_on"] for e in lamps)  # November night in Shenyang


def published_by(run: Run) -> dict[str, list[tuple[float, Any]]]:
    """Each device's messages (a cabinet's: its gateway batches) as (time, body), in time order."""
    sent: dict[str, list[tuple[float, Any]]] = {}
    for p in run.publications:
        sent.setdefault(p.topic.split("/")[3], []).append((p.t, json.loads(p.payload)))
    return sent


def times(messages: list[tuple[float, Any]], start: float = -inf, end: float = inf) -> list[float]:
    """When the messages in [start, end) were sent."""
    return [t for t, _ in messages if start <= t < end]


def test_injected_faults_show_in_the_messages_at_their_ground_truth_times() -> None:
    options = RunOptions(start=START, duration_s=3600, seed=2)
    run = simulate(generate(SPEC), ALL_FAULTS, options)
    # The same run without faults: what each device would have published.
    healthy = published_by(simulate(generate(SPEC), Scenario(), options))
    sent = published_by(run)
    by_kind: dict[str, list[Fault]] = {}
    for fault in run.faults:
        by_kind.setdefault(fault.kind, []).append(fault)
    assert set(by_kind) >= {
        "cover_displaced",
        "cabinet_outage",
        "lamp_out",
        "sensor_offline",
        "gps_gap",
        "sweeping_too_fast",
    }
    for fault in by_kind["cover_displaced"]:
        alarms = [t for t, b in sent[fault.subject] if b.get("event") == "tilt_alarm"]
        assert alarms == [fault.start]
    for fault in by_kind["sensor_offline"] + by_kind["gps_gap"]:
        # the window holds messages the device would have sent, and it sent none of them
        would_have = healthy[fault.subject]
        did = sent.get(fault.subject, [])
        assert times(would_have, fault.start, fault.end), f"{fault} silenced nothing"
        assert not times(did, fault.start, fault.end), fault
        assert times(did, end=fault.start) == times(would_have, end=fault.start)
    for fault in by_kind["cabinet_outage"]:
        batches = sent[fault.subject]
        cut = [t for t, batch in batches if all(e["values"]["fault_code"] == 64 for e in batch)]
        assert cut
        assert cut == times(batches, fault.start, fault.end)  # every batch in the window only
        assert len(cut) < len(batches)
    fast = [
        t
        for device, messages in sent.items()
        if device.startswith("sw-")
        for t, b in messages
        if b["brush_on"] and b["speed_kmh"] > 10
    ]
    assert fast
    windows = by_kind["sweeping_too_fast"]
    for fault in windows:
        assert any(fault.start <= t <= fault.end for t in fast), fault
    assert all(any(f.start <= t <= f.end for f in windows) for t in fast)


def test_an_offline_device_is_silent_for_its_window_only_and_publishes_around_it() -> None:
    city = generate(SPEC)
    cover = next(d["device_id"] for d in city.devices if d["type"] == "manhole")
    sweeper = next(d["device_id"] for d in city.devices if d["type"] == "sweeper")
    scenario = Scenario.model_validate(
        {
            "fault": [
                {"kind": "sensor_offline", "subject": cover, "start_min": 20, "duration_min": 15},
                {"kind": "gps_gap", "subject": sweeper, "start_min": 20, "duration_min": 3},
            ]
        }
    )
    options = RunOptions(start=START, duration_s=3600, seed=2, cover_heartbeat_s=60)
    run = simulate(city, scenario, options)
    sent = published_by(run)
    healthy = published_by(simulate(city, Scenario(), options))
    assert sorted((f.subject, f.start - START, f.end - START) for f in run.faults) == sorted(
        [(cover, 1200, 2100), (sweeper, 1200, 1380)]
    )
    for fault in run.faults:
        did, would_have = sent[fault.subject], healthy[fault.subject]
        assert len(times(would_have, fault.start, fault.end)) >= 15, fault  # a beat a minute
        assert not times(did, fault.start, fault.end), fault
        assert times(did, end=fault.start) == times(would_have, end=fault.start), fault
        assert times(did, end=fault.start), fault
        assert times(did, fault.end), fault
    offline = next(f for f in run.faults if f.subject == cover)
    assert times(sent[cover]) == [
        t for t in times(healthy[cover]) if not offline.start <= t < offline.end
    ]
    others = {device for device in healthy if device not in (cover, sweeper)}
    assert others
    assert {d: times(sent[d]) for d in others} == {d: times(healthy[d]) for d in others}


def test_offline_faults_that_hide_no_message_are_not_in_the_ground_truth() -> None:
    city = generate(SPEC)
    options = RunOptions(start=START, duration_s=3600, seed=2)  # one heartbeat an hour
    healthy = published_by(simulate(city, Scenario(), options))
    quiet, watched = [d["device_id"] for d in city.devices if d["type"] == "manhole"][:2]
    sweeper = next(d["device_id"] for d in city.devices if d["type"] == "sweeper")
    (beat,) = times(healthy[quiet])
    # nine minutes just after the cover's one heartbeat of the run, or before it if that is late
    quiet_start = beat + 1 if beat - START < 3000 else START
    faults = [
        {
            "kind": "sensor_offline",
            "subject": quiet,
            "start_min": (quiet_start - START) / 60,
            "duration_min": 9,
        },
        {"kind": "sensor_offline", "subject": watched, "start_min": 0, "duration_min": 60},
        {"kind": "gps_gap", "subject": sweeper, "start_min": 0, "duration_min": 4},  # 23:55-59
    ]
    assert not times(healthy[quiet], quiet_start, quiet_start + 540)
    assert not times(healthy[sweeper], START, START + 240)
    assert times(healthy[sweeper], START + 240)  # the sweeper starts its shift at 00:00
    assert times(healthy[watched])
    run = simulate(city, Scenario.model_validate({"fault": faults}), options)
    assert [f.subject for f in run.faults] == [watched]  # the only one that hid a message
    assert watched not in published_by(run)


def test_scenario_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[rates]\ncover_open = 0.5\n[[fault]]\nkind = "lamp_out"\n'
        'subject = "lt-1"\nstart_min = 5\nduration_min = 10\n'
    )
    scenario = load_scenario(good)
    assert scenario.rates == {"cover_open": 0.5}
    bad = tmp_path / "bad.toml"
    bad.write_text("[rates]\ncover_flying = 0.1\n")
    with pytest.raises(ScenarioError, match="cover_flying"):
        load_scenario(bad)
    too_much = tmp_path / "rate.toml"
    too_much.write_text("[rates]\nlamp_out = 2\n")
    with pytest.raises(ScenarioError, match="between 0 and 1"):
        load_scenario(too_much)


def test_abuse_batch_announces_a_reason_for_every_bad_message() -> None:
    batch = abuse_messages(
        generate(SPEC), list(ABUSE_KINDS), 3, 1_764_000_000_000, max_payload_bytes=65_536
    )
    assert sum(batch.quarantine.values()) == 3 * 9
    assert batch.duplicates == 6
    assert len(batch.messages) == 3 * 9 + 2 * 6


def test_lamp_faults_that_cannot_show_are_not_in_the_ground_truth() -> None:
    night_only = Scenario(rates={"day_burner": 0.5, "lamp_out": 0.5})
    run = simulate(generate(SPEC), night_only, RunOptions(start=START, duration_s=1800, seed=2))
    assert {f.kind for f in run.faults} == {"lamp_out"}  # a day burner needs daylight
    lamps_out = {f.subject for f in run.faults}
    failed = {
        e["device_id"]
        for p in run.publications
        if "/gateway/" in p.topic
        for e in json.loads(p.payload)
        if e["values"]["fault_code"] == 1
    }
    assert failed == lamps_out
