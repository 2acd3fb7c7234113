"""Device behaviour: the messages a city's fleet publishes over a stretch of simulated time.

``simulate`` returns the whole run as a time-ordered list of publications plus the faults that
were injected and showed in them, with the times they showed (a sensor offline or a GPS gap that
hid no message, such as a window between two hourly heartbeats, cannot be detected and is left
out). Each device draws from its own random stream, so the same city, scenario, seed and times
give the same messages.

- Covers send a heartbeat every ``cover_heartbeat_s`` and report alarms and recoveries at once;
  under ``clock_skew`` they date their messages ``CLOCK_SKEW_S`` behind, under ``flooding``
  they send a reading every 5 s.
- Lamps follow the astronomical clock (on from sunset to sunrise, dimmed after midnight); each
  control cabinet publishes its lamps' readings as one gateway batch every ``lamp_report_s``.
- Sweepers work their district's segments in the plan's window (00:00-06:30 local): brushes
  down at 3-8 km/h along a segment, brushes up at ~20 km/h between segments, a GPS fix every
  ``gps_interval_s`` with ~5 m of noise; the segments their shift did not reach are skipped, in
  the ground truth too.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from astral import Observer
from astral.sun import sunrise, sunset

from simulator.city import City
from simulator.scenario import Fault, Scenario, SubjectType, plan_faults
from wire.topics import TOPIC_ROOT

_M_PER_DEG = 111_320.0
_TILT_ALARM_DEG = 10.0
#: How far behind a sensor's clock runs under a clock_skew fault.
CLOCK_SKEW_S = 1200.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Timing of a simulated run."""

    start: float  # epoch seconds
    duration_s: float
    seed: int = 1
    cover_heartbeat_s: float = 3600.0
    #: A cover's silence shorter than this is marked undetectable in the ground truth (the scenes'
    #: default offline limit: 1.5 heartbeats).
    offline_limit_s: float = 5400.0
    lamp_report_s: float = 300.0
    #: A lamp fault that showed in fewer reports in a row than this, each judgeable (lamp out
    #: and day burner: farther than ``lamp_switch_grace_s`` from sunset and sunrise), is marked
    #: undetectable: the scenes' defaults (sustain 600 s at 300 s reports, grace 900 s).
    lamp_fault_min_reports: int = 2
    lamp_switch_grace_s: float = 900.0
    gps_interval_s: float = 1.0
    gps_noise_m: float = 5.0
    utc_offset_h: float = 8.0
    dim_after_midnight_pct: float = 60.0


@dataclass(order=True, frozen=True, slots=True)
class Publication:
    """One message: when (simulated epoch seconds), where, what; whether the broker keeps it."""

    t: float
    topic: str
    payload: bytes = field(compare=False)
    retain: bool = field(default=False, compare=False)

    @property
    def publisher(self) -> str:
        """The device (or gateway) that publishes it: the id in its topic."""
        return self.topic.split("/")[3]


@dataclass(slots=True)
class Run:
    """What a simulated run publishes and what it broke."""

    publications: list[Publication]
    faults: list[Fault]


def _ms(t: float) -> int:
    return round(t * 1000)


def _pub(out: list[Publication], t: float, topic: str, body: Any) -> None:
    out.append(Publication(round(t, 3), topic, json.dumps(body, separators=(",", ":")).encode()))


def _device_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, *name.encode()])


def simulate(city: City, scenario: Scenario, options: RunOptions) -> Run:
    """Every message the fleet publishes in the run, in time order, and the injected faults."""
    end = options.start + options.duration_s
    covers = [d for d in city.devices if d["type"] == "manhole"]
    lamps = [d for d in city.devices if d["type"] == "light"]
    sweepers = [d for d in city.devices if d["type"] == "sweeper"]
    cabinets = sorted({d["gateway_id"] for d in lamps})
    subjects: dict[SubjectType, list[str]] = {
        "manhole": [d["device_id"] for d in covers],
        "light": [d["device_id"] for d in lamps],
        "cabinet": cabinets,
        "sweeper": [d["device_id"] for d in sweepers],
        "segment": [r["segment_id"] for r in city.roads],
    }
    planned = plan_faults(scenario, subjects, options.start, end, options.seed)
    by_subject: dict[str, list[Fault]] = {}
    for fault in planned:
        by_subject.setdefault(fault.subject, []).append(fault)
    out: list[Publication] = []
    angles = {a["code"]: a["properties"].get("installed_angle_deg", 0.0) for a in city.assets}
    shown: set[Fault] = set()
    undetectable: set[Fault] = set()
    for device in covers:
        faults_of = by_subject.get(device["device_id"], [])
        angle = angles.get(device["asset_code"], 0.0)
        cover_shown, cover_undetectable = _cover(out, device, angle, faults_of, options)
        shown |= cover_shown
        undetectable |= cover_undetectable
    lamps_shown, lamps_undetectable = _cabinets(out, city, lamps, by_subject, options)
    shown |= lamps_shown
    undetectable |= lamps_undetectable
    # segment and sweeper faults are timed by the routes; cover and lamp faults count once they
    # showed in some message
    faults = [
        replace(f, detectable=False) if f in undetectable else f for f in planned if f in shown
    ]
    for device in sweepers:
        faults += _sweeper(out, city, device, sweepers=sweepers, by_subject=by_subject, o=options)
    out.sort()
    # the ground truth covers the run: a fault still going on at its end ends there
    return Run(out, [replace(f, end=min(f.end, end)) for f in faults])


def _silenced(t: float, silencers: list[Fault], shown: set[Fault]) -> bool:
    """Whether a fault in ``silencers`` swallows the message due at ``t`` (adding it to ``shown``).

    An offline sensor or a GPS gap shows only as a missing message, so it counts once it hid one.
    """
    going_on = {f for f in silencers if f.start <= t < f.end}
    shown |= going_on
    return bool(going_on)


# -- covers ---------------------------------------------------------------------------------

#: The covers' subtle faults (``FaultKind.subtle``): every reading stays inside the rules'
#: default thresholds (tilt 10 deg, water 100 cm, battery 15 %).
_SLOW_COVER = frozenset({"tilt_drift", "cover_rocking", "water_slow_rise", "battery_fast_drain"})


@dataclass(frozen=True, slots=True)
class _SlowChange:
    """A subtle fault's pace (a unit per day) and how far it goes; its own random stream."""

    rate: float
    cap: float
    rng: np.random.Generator


def _fault_rng(seed: int, fault: Fault) -> np.random.Generator:
    """A fault's own random stream: drawing from it leaves its device's messages as they were."""
    return _device_rng(seed, f"{fault.kind}/{fault.subject}/{fault.start}")


def _slow_change(fault: Fault, seed: int, angle: float) -> _SlowChange:
    """How a cover's subtle fault unfolds.

    A drifting tilt sensor gains 1.5-2.5 deg a day, a rocking cover settles up to 3-5 deg off
    each time it is read, both kept 2 deg below the tilt alarm; water rises 12-20 cm a day to
    at most 85 cm; a failing battery loses 3-6 % a day (from 60-100 %: above 30 % after 5 days).
    """
    rng = _fault_rng(seed, fault)
    below_alarm = max(0.5, _TILT_ALARM_DEG - 2.0 - angle)
    if fault.kind == "tilt_drift":
        return _SlowChange(float(rng.uniform(1.5, 2.5)), below_alarm, rng)
    if fault.kind == "cover_rocking":
        return _SlowChange(0.0, min(below_alarm, float(rng.uniform(3, 5))), rng)
    if fault.kind == "water_slow_rise":
        return _SlowChange(float(rng.uniform(12, 20)), 50.0, rng)
    return _SlowChange(float(rng.uniform(3, 6)), 0.0, rng)  # battery_fast_drain


def _cover(
    out: list[Publication],
    device: dict[str, Any],
    angle: float,
    faults: list[Fault],
    o: RunOptions,
) -> tuple[set[Fault], set[Fault]]:
    """Publish one cover's messages; return the faults that showed, and the undetectable ones.

    An offline fault shows once it hid a message; it is undetectable when the silence it made is
    no longer than ``o.offline_limit_s`` (see ``_Cover.silence_outlasts``).
    """
    rng = _device_rng(o.seed, device["device_id"])
    topic = f"{TOPIC_ROOT}/manhole/{device['device_id']}"
    end = o.start + o.duration_s
    battery = float(rng.uniform(60, 100))
    rssi = float(rng.uniform(-110, -70))
    offline = [f for f in faults if f.kind == "sensor_offline"]
    slow = {f: _slow_change(f, o.seed, angle) for f in faults if f.kind in _SLOW_COVER}
    cover = _Cover(out, topic, rng, angle, battery, rssi, faults, offline, set(), [], slow)
    cover.heartbeats(o)
    for f in faults:
        if f.kind in ("cover_displaced", "cover_open"):
            cover.alarm(f, end)
        elif f.kind == "cover_loose":
            cover.loose_spikes(f)
        elif f.kind in ("water_rising", "battery_drain"):
            cover.fast_readings(f, end)
        elif f.kind == "flooding":
            cover.flood(f, end)
    shown = {f for f in faults if f.kind != "sensor_offline"} | cover.hidden
    return shown, {f for f in cover.hidden if not cover.silence_outlasts(f, o)}


@dataclass(frozen=True, slots=True)
class _Cover:
    """One cover's sensor: what it reads under its faults, and the messages it sends."""

    out: list[Publication]
    topic: str
    rng: np.random.Generator
    angle: float
    battery: float
    rssi: float
    faults: list[Fault]
    offline: list[Fault]  # while one goes on, the sensor sends nothing at all
    hidden: set[Fault]  # the offline faults that hid a message
    sent: list[float]  # when it sent each message
    slow: dict[Fault, _SlowChange]  # its subtle faults' own pace

    def condition(self, t: float) -> tuple[float, bool, float, float]:
        """The true tilt, open flag, water level (cm) and battery (%) at ``t``, faults applied."""
        tilt, opened, water, batt = self.angle, False, 35.0, self.battery
        for f in self.faults:
            if f.kind == "battery_fast_drain" and t >= f.end:  # what it drained stays drained
                batt -= self.slow[f].rate * (f.end - f.start) / 86_400
            if not f.start <= t < f.end:
                continue
            progress = (t - f.start) / max(f.end - f.start, 1.0)
            days = (t - f.start) / 86_400
            if f.kind == "cover_displaced":
                tilt = self.angle + 25.0
            elif f.kind == "cover_open":
                tilt, opened = 95.0, True
            elif f.kind == "water_rising":
                water = 35.0 + 140.0 * progress
            elif f.kind == "battery_drain":
                batt = self.battery * (1 - progress) + 3.0 * progress
            elif f in self.slow:
                change = self.slow[f]
                if f.kind == "tilt_drift":
                    tilt += min(change.rate * days, change.cap)
                elif f.kind == "cover_rocking":  # it settles at another angle each time
                    tilt += float(change.rng.uniform(0, change.cap))
                elif f.kind == "water_slow_rise":
                    water += min(change.rate * days, change.cap)
                else:  # battery_fast_drain
                    batt -= change.rate * days
        return tilt, opened, water, batt

    def reading(self, t: float) -> dict[str, Any]:
        """What the sensor reports at ``t``: its condition, with noise on tilt and signal."""
        tilt, opened, water, batt = self.condition(t)
        return {
            "tilt_deg": round(abs(tilt + float(self.rng.normal(0, 0.2))), 1),  # a magnitude
            "cover_open": opened,
            "water_level_cm": round(water, 1),
            "battery_pct": round(batt, 1),
            "rssi_dbm": round(self.rssi + float(self.rng.normal(0, 2)), 1),
            "temp_c": 4.0,
        }

    def send(self, t: float, channel: str, body: dict[str, Any]) -> None:
        """Publish, unless the sensor is offline at ``t``; a skewed clock dates it wrongly."""
        if not _silenced(t, self.offline, self.hidden):
            self.sent.append(t)
            if any(f.kind == "clock_skew" and f.start <= t < f.end for f in self.faults):
                body = {**body, "ts": _ms(t - CLOCK_SKEW_S)}
            _pub(self.out, t, f"{self.topic}/{channel}", body)

    def heartbeats(self, o: RunOptions) -> None:
        """A reading every heartbeat from a random phase (none read while offline)."""
        end = o.start + o.duration_s
        t = o.start + float(self.rng.uniform(0, o.cover_heartbeat_s))
        while t < end:
            if not _silenced(t, self.offline, self.hidden):
                self.send(t, "telemetry", {"ts": _ms(t), **self.reading(t)})
            t += o.cover_heartbeat_s

    def silence_outlasts(self, f: Fault, o: RunOptions) -> bool:
        """Whether the silence around offline fault ``f`` outlasts the offline limit in the run.

        The silence runs from the message before it to the message after it (or the run's end).
        """
        before = [t for t in self.sent if t < f.start]
        after = [t for t in self.sent if t >= f.end]
        if not before:
            return False  # nothing to be silent after: no scene knows what to expect
        ends = min(after) if after else o.start + o.duration_s
        return max(before) + o.offline_limit_s < ends

    def alarm(self, f: Fault, end: float) -> None:
        """A displaced or open cover: the alarm at its start, the recovery if that is in the run."""
        alarm = "tilt_alarm" if f.kind == "cover_displaced" else "cover_open"
        self.send(f.start, "event", {"ts": _ms(f.start), **self.reading(f.start), "event": alarm})
        if f.end < end:
            self.send(
                f.end, "event", {"ts": _ms(f.end), **self.reading(f.end), "event": "recovered"}
            )

    def loose_spikes(self, f: Fault) -> None:
        """A loose cover: a passing wheel lifts it for about a second every one to five minutes."""
        spike = f.start
        while spike < f.end:
            lifted = {"ts": _ms(spike), "tilt_deg": self.angle + 14.0, "event": "tilt_alarm"}
            self.send(spike, "event", lifted)
            back = {"ts": _ms(spike + 1), "tilt_deg": self.angle, "event": "recovered"}
            self.send(spike + 1, "event", back)
            spike += float(self.rng.uniform(60, 300))

    def fast_readings(self, f: Fault, end: float) -> None:
        """Readings every 5 min while water rises (water_high past 100 cm) or a battery drains."""
        step = f.start
        while step < min(f.end, end):
            body = {"ts": _ms(step), **self.reading(step)}
            if f.kind == "water_rising" and body["water_level_cm"] > 100:
                body["event"] = "water_high"
            self.send(step, "telemetry", body)
            step += 300.0

    def flood(self, f: Fault, end: float) -> None:
        """A sensor stuck in a loop: a reading every 5 s for the whole fault."""
        step = f.start
        while step < min(f.end, end):
            self.send(step, "telemetry", {"ts": _ms(step), **self.reading(step)})
            step += 5.0


# -- lamps ----------------------------------------------------------------------------------


def _sun_events(city: City, day: datetime) -> list[tuple[float, bool]]:
    """Sunrise and sunset (epoch seconds) on ``day``'s UTC date, each: whether dark after it."""
    observer = Observer(latitude=city.spec.center_lat, longitude=city.spec.center_lon)
    return [
        (sunrise(observer, day.date(), tzinfo=UTC).timestamp(), False),
        (sunset(observer, day.date(), tzinfo=UTC).timestamp(), True),
    ]


def _sky(city: City, t: float, cache: dict[str, list[tuple[float, bool]]]) -> tuple[bool, float]:
    """Whether it is dark at ``t``, and how far (s) ``t`` is from the nearest sunset or sunrise."""
    now = datetime.fromtimestamp(t, tz=UTC)
    events: list[tuple[float, bool]] = []
    for day in (now - timedelta(days=1), now, now + timedelta(days=1)):
        key = day.date().isoformat()
        if key not in cache:
            cache[key] = _sun_events(city, day)
        events += cache[key]
    events.sort()
    dark = next((after for at, after in reversed(events) if at <= t), False)
    return dark, min(abs(t - at) for at, _ in events)


def _showed(
    fault: Fault, showings: dict[Fault, int], streaks: dict[Fault, int], *, told: bool
) -> None:
    """Count a report that showed ``fault`` (``told``: judgeably) into its best run."""
    streaks[fault] = streaks.get(fault, 0) + told
    showings[fault] = max(showings.get(fault, 0), streaks[fault])


def _cabinets(
    out: list[Publication],
    city: City,
    lamps: list[dict[str, Any]],
    by_subject: dict[str, list[Fault]],
    o: RunOptions,
) -> tuple[set[Fault], set[Fault]]:
    """Publish every cabinet's lamp batches.

    Returns the faults that showed in some reading, and those of them that showed too little to
    be told: fewer than ``o.lamp_fault_min_reports`` judgeable reports in a row.
    """
    showings: dict[Fault, int] = {}  # the most judgeable reports in a row each fault showed in
    streaks: dict[Fault, int] = {}  # ... in the row going on
    rated = {a["code"]: a["properties"].get("rated_power_w", 150.0) for a in city.assets}
    members: dict[str, list[dict[str, Any]]] = {}
    for lamp in lamps:
        members.setdefault(lamp["gateway_id"], []).append(lamp)
    sun: dict[str, list[tuple[float, bool]]] = {}
    end = o.start + o.duration_s
    for cabinet, its_lamps in sorted(members.items()):
        rng = _device_rng(o.seed, cabinet)
        energy = {lamp["device_id"]: float(rng.uniform(100, 5000)) for lamp in its_lamps}
        outages = by_subject.get(cabinet, [])
        t = o.start + float(rng.uniform(0, o.lamp_report_s))
        while t < end:
            dark, from_switch = _sky(city, t, sun)
            clear_sky = from_switch > o.lamp_switch_grace_s  # no switching time near
            local_hour = (t / 3600 + o.utc_offset_h) % 24
            dim = o.dim_after_midnight_pct if dark and 1 <= local_hour < 5 else 100.0
            cuts = [f for f in outages if f.start <= t < f.end]
            cut = bool(cuts)
            for f in cuts:  # a cabinet without supply shows by day as by night
                _showed(f, showings, streaks, told=True)
            batch = []
            for lamp in its_lamps:
                faults = [f for f in by_subject.get(lamp["device_id"], []) if f.start <= t < f.end]
                kinds = {f.kind for f in faults}
                on = (dark or "day_burner" in kinds) and not cut
                power, pf, fault_code = _lamp_draw(
                    rated[lamp["asset_code"]] * dim / 100 if on else 0.0, faults, t, o.seed
                )
                # a lamp fault shows only while the lamp should be lit (a day burner by day);
                # out or burning, only where the sky says clearly what the lamp should do (near
                # a switching time it is neither told nor broken off); a dark cabinet, or a
                # sky that hides it, breaks its run of reports off
                for f in faults:
                    if on and (f.kind == "day_burner") != dark:
                        told = clear_sky or f.kind not in ("lamp_out", "day_burner")
                        _showed(f, showings, streaks, told=told)
                    else:
                        streaks[f] = 0
                volts = 0.0 if cut else round(float(rng.normal(220, 2)), 1)
                power = round(power * float(rng.normal(1, 0.01)), 1) if power else 0.0
                energy[lamp["device_id"]] += power * o.lamp_report_s / 3.6e6
                batch.append(
                    {
                        "device_id": lamp["device_id"],
                        "ts": _ms(t),
                        "values": {
                            "lamp_on": on,
                            "dim_pct": dim if on else 0.0,
                            "voltage_v": volts,
                            "current_a": round(power / (volts * pf), 3) if power and volts else 0.0,
                            "power_w": power,
                            "power_factor": pf if power else 0.0,
                            "energy_kwh": round(energy[lamp["device_id"]], 3),
                            "fault_code": 64 if cut else fault_code,
                        },
                    }
                )
            _pub(out, t, f"{TOPIC_ROOT}/gateway/{cabinet}/batch", batch)
            t += o.lamp_report_s
    shown = set(showings)
    return shown, {f for f, n in showings.items() if n < o.lamp_fault_min_reports}


def _lamp_draw(power: float, faults: list[Fault], t: float, seed: int) -> tuple[float, float, int]:
    """A lit lamp's power (W), power factor and fault code at ``t`` under ``faults``."""
    pf, fault_code = 0.95, 0
    if not power:
        return 0.0, pf, fault_code
    for f in faults:
        if f.kind == "lamp_out":
            power, fault_code = 0.0, 1
        elif f.kind == "lamp_degraded":
            power *= 0.5
        elif f.kind == "low_power_factor":
            pf = 0.55
        elif f.kind == "lamp_slow_degrade":  # a driver failing over days
            power *= 1 - _degrade_loss(f, seed) * (t - f.start) / (f.end - f.start)
    return power, pf, fault_code


@functools.cache
def _degrade_loss(fault: Fault, seed: int) -> float:
    """The share of its power a slowly degrading lamp has lost by the fault's end: 18-25 %.

    The lighting scene calls a lamp degraded below 70 % of its rated power at its dimming level.
    """
    return float(_fault_rng(seed, fault).uniform(0.18, 0.25))


# -- sweepers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pass:
    segment_id: str
    points: tuple[tuple[float, float], ...]  # lon, lat, in the direction swept


def _route(city: City, device: dict[str, Any], sweepers: list[dict[str, Any]]) -> list[_Pass]:
    """The sweeper's share of its district's passes, in order.

    A two-way road's passes go back and forth; a one-way road is swept as drawn each time, its
    next pass after the next road's (a sweeper goes round, not back against the traffic).
    """
    mates = sorted(s["device_id"] for s in sweepers if s["region_id"] == device["region_id"])
    k = mates.index(device["device_id"])
    roads = [r for r in city.roads if r["region_id"] == device["region_id"]]
    passes: list[_Pass] = []
    waiting: list[_Pass] = []
    for i, road in enumerate(roads):
        required = road["required_passes"]
        if i % len(mates) != k or required < 1:
            continue
        drawn = tuple((float(p[0]), float(p[1])) for p in road["geometry"]["coordinates"])
        if road.get("oneway"):
            now = [_Pass(road["segment_id"], drawn)]
            later = now * (required - 1)
        else:
            ways = (drawn, drawn[::-1])
            now = [_Pass(road["segment_id"], ways[n % 2]) for n in range(required)]
            later = []
        passes += now + waiting
        waiting = later
    return passes + waiting


def _sweeper(
    out: list[Publication],
    city: City,
    device: dict[str, Any],
    *,
    sweepers: list[dict[str, Any]],
    by_subject: dict[str, list[Fault]],
    o: RunOptions,
) -> list[Fault]:
    """Drive the route each night; return the sweeper's and its segments' faults as they showed.

    Each night is a run of its own from the end of the last (the first from the run's start),
    so a segment's fault shows every night the run spans; the sweeper's random streams go on
    from night to night.
    """
    rng = _device_rng(o.seed, device["device_id"])
    faults = by_subject.get(device["device_id"], [])
    route = _route(city, device, sweepers)
    end = o.start + o.duration_s
    night = o
    driver = _Driver(
        out=out,
        topic=f"{TOPIC_ROOT}/sweeper/{device['device_id']}/telemetry",
        rng=rng,
        gaps=[f for f in faults if f.kind == "gps_gap"],
        intermittent=[f for f in faults if f.kind == "gps_intermittent"],
        dropouts=_device_rng(o.seed, f"dropouts/{device['device_id']}"),
        cos_lat=math.cos(math.radians(city.spec.center_lat)),
        o=o,
        t=0.0,
        stop=0.0,
    )
    truths: list[Fault] = []
    while night.duration_s > 0:
        shift_start, shift_end = _shift(night)
        # to the next local midnight: every night of a run sweeps from midnight
        night_end = min(end, shift_end - _SHIFT_H * 3600 + 86_400)
        night = replace(night, duration_s=night_end - night.start)
        driver.here, driver.o = None, night
        driver.t = shift_start + float(rng.uniform(0, 120))
        driver.stop = min(night_end, shift_end)
        truths += _sweep_route(driver, route, by_subject, night, faults)
        night = replace(night, start=night_end, duration_s=end - night_end)
    # only the gaps that hid a fix can be detected; the subtle faults, once they showed
    shown = [g for g in driver.gaps if g in driver.hidden]
    return shown + [f for f in faults if f in driver.showed] + truths


def _shift(o: RunOptions) -> tuple[float, float]:
    """The shift: the sweeping window (00:00-06:30 local) the run begins in, else the next."""
    local_midnight = (
        math.floor((o.start / 3600 + o.utc_offset_h) / 24) * 86400 - o.utc_offset_h * 3600
    )
    if o.start - local_midnight > _SHIFT_H * 3600:
        local_midnight += 86400
    return max(o.start, local_midnight), local_midnight + _SHIFT_H * 3600


#: Hours of the sweeping window from local midnight (the simulated city's plans: 00:00-06:30).
_SHIFT_H = 6.5
#: A pass whose fixes a GPS gap hid for longer than this cannot be told from no pass (the
#: scenes interpolate gaps up to 30 s).
_UNSEEN_PASS_S = 30.0


def _sweep_route(
    driver: _Driver,
    route: list[_Pass],
    by_subject: dict[str, list[Fault]],
    o: RunOptions,
    own: list[Fault],
) -> list[Fault]:
    """Sweep the passes in turn as their segments' faults say; return those faults' real times.

    ``own``: the sweeper's faults. Under ``brushes_ineffective`` it sweeps every pass steadily
    at the top of the band (7.3-7.9 km/h: the segments allow 8), brushes down, as a sweeper
    whose brushes do nothing can (``driver.showed`` gets it).

    The shift ends with the window (or the run): a segment whose passes were not all done when
    the window ended was skipped, and is in the ground truth as such.
    """
    end = driver.stop
    truths: list[Fault] = []
    done: set[Fault] = set()  # a fast or brushes-up fault spoils the segment's first pass only
    window_over = _shift(o)[1] <= o.start + o.duration_s
    left: dict[str, int] = {}  # passes still to do (or spoiled), per segment
    blinded: set[str] = set()  # segments a pass of which a GPS gap hid
    for step in route:
        left[step.segment_id] = left.get(step.segment_id, 0) + 1
    for step in route:
        if driver.t >= end:
            break
        faults = by_subject.get(step.segment_id, [])
        skipped = next((f for f in faults if f.kind == "segment_skipped"), None)
        if skipped is not None:  # every pass of the segment is left out
            if skipped not in done:
                truths.append(replace(skipped, start=o.start, end=o.start + o.duration_s))
                done.add(skipped)
            left.pop(step.segment_id, None)
            continue
        kinds = {f.kind: f for f in faults if f not in done}
        driver.transit_to(step.points[0])
        began, unseen_s = driver.t, driver.unseen_s
        speed = _pass_speed(driver, own, too_fast="sweeping_too_fast" in kinds)
        driver.sweep(step, speed, brush="brushes_up" not in kinds)
        spoiled = False
        for kind in ("sweeping_too_fast", "brushes_up"):
            if kind in kinds and began < end:
                # to the millisecond, as the messages are: its first fix is at its start; a
                # segment's night is judged once its window is over: within the run, or never
                shown = replace(
                    kinds[kind],
                    start=round(began, 3),
                    end=round(min(driver.t, end), 3),
                    detectable=window_over,
                )
                truths.append(shown)
                done.add(kinds[kind])
                spoiled = True
        if driver.unseen_s - unseen_s > _UNSEEN_PASS_S and step.segment_id in left:
            # a GPS gap hid this pass: it cannot count, so the segment may look skipped
            blinded.add(step.segment_id)
        elif driver.t < end and step.segment_id in left:
            left[step.segment_id] -= 1
            if spoiled:  # its own finding stands for the segment: not also skipped
                left.pop(step.segment_id)
            elif left[step.segment_id] == 0:
                del left[step.segment_id]
    # not reached (or not finished) before the shift ended, within the run: skipped; where a
    # GPS gap hid a pass, undetectable (a scene may rightly find it, as it may not)
    run_end = o.start + o.duration_s
    if window_over:
        truths += [
            Fault(
                "segment_skipped",
                segment_id,
                o.start,
                run_end,
                detectable=segment_id not in blinded,
            )
            for segment_id in left
        ]
    return truths


def _pass_speed(driver: _Driver, own: list[Fault], *, too_fast: bool) -> float:
    """The speed of the pass starting now: 3-8 km/h, or as a fault of the pass or sweeper says."""
    ineffective = {
        f for f in own if f.kind == "brushes_ineffective" and f.start <= driver.t < f.end
    }
    if too_fast:
        return float(driver.rng.uniform(12, 15))
    if ineffective:
        driver.showed |= ineffective
        return float(driver.rng.uniform(7.3, 7.9))
    return float(driver.rng.uniform(3, 8))


@dataclass(slots=True)
class _Driver:
    """A sweeper on the road: its clock and place, and the GPS fixes it publishes as it drives."""

    out: list[Publication]
    topic: str
    rng: np.random.Generator
    gaps: list[Fault]
    intermittent: list[Fault]  # while one goes on, fixes drop out for 5-15 s about every minute
    dropouts: np.random.Generator  # their stream: the fixes' noise stays as it would be
    cos_lat: float
    o: RunOptions
    t: float
    stop: float  # the end of the shift (or of the run)
    here: tuple[float, float] | None = None  # where the last pass ended
    unseen_s: float = 0.0  # driving time whose fixes a GPS gap hid
    hidden: set[Fault] = field(default_factory=set)  # the gaps that hid a fix
    dropped_until: float = 0.0  # the end of the intermittent dropout going on
    showed: set[Fault] = field(default_factory=set)  # its subtle faults that showed in a fix

    def transit_to(self, point: tuple[float, float]) -> None:
        """Drive brushes up at 20 km/h from the end of the last pass to ``point``, if elsewhere."""
        here = self.here
        if here is not None and here != point:
            self.drive((here, point), 20.0, brush=False)

    def sweep(self, step: _Pass, speed_kmh: float, *, brush: bool) -> None:
        self.drive(step.points, speed_kmh, brush=brush)
        self.here = step.points[-1]

    def drive(self, path: Sequence[tuple[float, float]], speed_kmh: float, *, brush: bool) -> None:
        """Drive along ``path`` (lon, lat) until the run ends.

        A fix every GPS interval unless hidden, heading along the piece of the path it is on.
        """
        pieces = [
            (a, b, math.hypot((b[0] - a[0]) * self.cos_lat, b[1] - a[1]) * _M_PER_DEG)
            for a, b in itertools.pairwise(path)
        ]
        length_m = sum(m for *_, m in pieces)
        duration = length_m / (speed_kmh / 3.6)
        steps = max(1, int(duration / self.o.gps_interval_s))
        k, done_m = 0, 0.0  # the piece driven on, and the metres before it
        for s in range(steps):
            if self.t >= self.stop:
                return
            at_m = length_m * s / steps
            while at_m > done_m + pieces[k][2] and k < len(pieces) - 1:
                done_m += pieces[k][2]
                k += 1
            if self._dropped():
                pass  # shorter than the gaps the scenes bridge: no unseen driving
            elif not _silenced(self.t, self.gaps, self.hidden):
                a, b, piece_m = pieces[k]
                f = (at_m - done_m) / piece_m if piece_m > 0 else 0.0
                lon, lat = a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
                heading = math.degrees(math.atan2((b[0] - a[0]) * self.cos_lat, b[1] - a[1]))
                fix = self.fix(lon, lat, speed_kmh, heading=heading % 360, brush=brush)
                _pub(self.out, self.t, self.topic, fix)
            else:
                self.unseen_s += duration / steps
            self.t += duration / steps

    def _dropped(self) -> bool:
        """Whether an intermittent GPS fault drops the fix due now (starting a dropout maybe)."""
        if self.t < self.dropped_until:
            return True
        going_on = {f for f in self.intermittent if f.start <= self.t < f.end}
        # one fix at least between dropouts: each gap stays shorter than the scenes bridge
        resumed = self.t >= self.dropped_until + self.o.gps_interval_s
        if going_on and resumed and self.dropouts.random() < self.o.gps_interval_s / 60:
            self.dropped_until = self.t + float(self.dropouts.uniform(5, 15))
            self.showed |= going_on
            return True
        return False

    def fix(
        self, lon: float, lat: float, speed_kmh: float, *, heading: float, brush: bool
    ) -> dict[str, Any]:
        """The GPS fix of a position, with noise."""
        noise_deg = self.o.gps_noise_m / _M_PER_DEG
        return {
            "ts": _ms(self.t),
            "lat": round(lat + float(self.rng.normal(0, noise_deg)), 7),
            "lon": round(lon + float(self.rng.normal(0, noise_deg / self.cos_lat)), 7),
            "speed_kmh": round(speed_kmh + float(self.rng.normal(0, 0.3)), 1),
            "heading_deg": round(heading, 1),
            "brush_on": brush,
            "spray_on": brush,
        }
