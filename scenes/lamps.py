"""The street-lighting scene's reads: a cabinet's lamps, their places and plans, their readings.

A lamp's cabinet is its component's property ``cabinet_id`` (the cabinet controller's device
id); its plan is its component's property ``plan``, else its cabinet's, else the thresholds' in
force for it; its place is its component's coordinates, else its cabinet's. A lamp without a
place is judged on its power, voltage and fault flags only (EITHER all the time).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import psycopg

from scenes import lighting, sky
from scenes.episodes import Device, Floats, Judgement, blocks
from scenes.settings import LightingThresholds, ScenesSettings

if TYPE_CHECKING:
    from scenes.engine import Scene

logger = logging.getLogger(__name__)

#: A lamp's (or a cabinet's) place and plan: lat, lon, plan named by it or its cabinet.
_PLACES = (
    "select d.device_id, d.type, coalesce(a.lat, c.lat), coalesce(a.lon, c.lon), "
    "case when jsonb_typeof(a.properties -> 'rated_power_w') = 'number' "
    "then (a.properties ->> 'rated_power_w')::float8 end, a.properties ->> 'circuit', "
    "a.properties ->> 'cabinet_id', coalesce(a.properties ->> 'plan', c.properties ->> 'plan') "
    "from devices d left join assets a on a.code = d.asset_code "
    "left join devices cd on cd.device_id = a.properties ->> 'cabinet_id' "
    "left join assets c on c.code = cd.asset_code "
    "where d.device_id = any(%s)"
)


class Place(NamedTuple):
    """What the registry says of a lamp (or cabinet) for the lighting scene."""

    type: str
    lat: float | None
    lon: float | None
    rated_w: float | None
    circuit: str | None
    cabinet: str | None
    plan: str | None


def companions(conn: psycopg.Connection, devices: list[str]) -> list[str]:
    """The cabinets of ``devices`` (lamps or cabinets) and every lamp of those cabinets."""
    rows = conn.execute(
        "with t as (select d.device_id, d.type, a.properties ->> 'cabinet_id' as cabinet "
        "from devices d left join assets a on a.code = d.asset_code "
        "where d.device_id = any(%s)), "
        "cabs as (select cabinet from t where type = 'light' and cabinet is not null "
        "union select device_id from t where type = 'gateway') "
        "select d.device_id from cabs join assets a on a.properties ? 'cabinet_id' "
        "and a.properties ->> 'cabinet_id' = cabs.cabinet "
        "join devices d on d.asset_code = a.code and d.type = 'light' "
        "union select cabinet from cabs",
        (devices,),
    ).fetchall()
    return [row[0] for row in rows]


def judge_all(
    conn: psycopg.Connection,
    since: dict[str, datetime],
    known: dict[str, Device],
    settings: ScenesSettings,
    now: float,
) -> Iterator[tuple[str, Judgement]]:
    """Each lamp's judgement, and each known cabinet's, cabinet by cabinet."""
    where = places(conn, sorted(since))
    cabinets: dict[str, list[str]] = {}  # a cabinet's lamps; a lamp without one alone
    for device_id, place in sorted(where.items()):
        if place.type == "light":
            cabinets.setdefault(place.cabinet or device_id, []).append(device_id)
    lamps = sorted(d for group in cabinets.values() for d in group)
    starts = {
        d: min(since[m] for m in group).timestamp() - settings.lookback_s
        for group in cabinets.values()
        for d in group
    }
    rows = conn.execute(
        "select r.device_id, extract(epoch from r.ts)::float8, r.lamp_on::int::float8, "
        "r.dim_pct, r.voltage_v, r.power_w, r.power_factor, r.fault_code::float8 "
        "from unnest(%s::text[], %s::float8[]) as w(device_id, start_s) "
        "join light_readings r on r.device_id = w.device_id and r.ts >= to_timestamp(w.start_s) "
        "order by r.device_id, r.ts",
        (lamps, [starts[d] for d in lamps]),
    ).fetchall()
    readings = dict(blocks(rows))
    window = (min(starts.values(), default=now), now + 86_400)
    sky_of = _SkyCache(settings, window)
    for cabinet, members in sorted(cabinets.items()):
        judged = [d for d in members if d in readings]
        built = [_lamp(readings[d], where[d], known[d].limits, sky_of, settings) for d in judged]
        if cabinet in known and known[cabinet].type == "gateway":
            judgements, of_cabinet = lighting.judge_cabinet(built, known[cabinet].limits, now)
            yield cabinet, of_cabinet  # without lamp readings: nothing dark, any outage over
        else:
            judgements = [lighting.judge_lamp(lamp, lighting.out(lamp), now) for lamp in built]
        yield from zip(judged, judgements, strict=True)
        for device_id in sorted(set(members) - set(judged)):  # readings past retention
            yield device_id, Judgement()
    for device_id in sorted(set(since) - set(lamps) - set(cabinets)):
        yield device_id, Judgement()  # a cabinet without lamps, or not a lamp at all


def settled(
    conn: psycopg.Connection,
    scene: Scene,
    device_id: str,
    normal_since: datetime,
    settings: ScenesSettings,
) -> bool:
    """Whether the lamp (the cabinet's lamps) behaved through the night after ``normal_since``.

    That night is the first its plan lights after ``normal_since``; it has passed once a
    reading came after its end and the switching grace. A device without a place waits
    ``verify_s`` as in the other scenes.
    """
    place = places(conn, [device_id]).get(device_id)
    devices = [device_id]
    if place is not None and place.type == "gateway":
        devices = [d for d in companions(conn, [device_id]) if d != device_id]
    due = normal_since + timedelta(seconds=settings.verify_s)
    if place is not None and place.lat is not None and place.lon is not None:
        limits = settings.lighting
        start = normal_since.timestamp()
        plan = plan_of(settings, place.plan, limits)
        nights = sky.lit_intervals(place.lat, place.lon, plan, start, start + 3 * 86_400)
        after = nights[nights[:, 0] >= start]
        if len(after):
            due = datetime.fromtimestamp(
                after[0, 1] + limits.switch_grace_s, tz=normal_since.tzinfo
            )
    newest = conn.execute(
        "select max(ts) from light_readings where device_id = any(%s)", (devices,)
    ).fetchone()
    return bool(newest and newest[0] is not None and newest[0] >= due)


class _SkyCache:
    """Lit intervals per cluster and plan over the run's window, computed once each."""

    def __init__(self, settings: ScenesSettings, window: tuple[float, float]) -> None:
        self._settings = settings
        self._window = window
        self._intervals: dict[tuple[float, float, str], Floats] = {}

    def intervals(self, lat: float, lon: float, plan_name: str) -> Floats:
        key = (round(lat, 2), round(lon, 2), plan_name)
        if key not in self._intervals:
            plan = self._settings.lighting_plans[plan_name]
            self._intervals[key] = sky.lit_intervals(key[0], key[1], plan, *self._window)
        return self._intervals[key]


def _lamp(
    block: Any,
    place: Place,
    limits: LightingThresholds,
    sky_of: _SkyCache,
    settings: ScenesSettings,
) -> lighting.Lamp:
    readings = lighting.LampReadings(*(block[:, i] for i in range(7)))
    plan_name = _plan_name(settings, place.plan, limits)
    if place.lat is None or place.lon is None:
        expected = np.full(len(readings.ts), sky.EITHER, dtype=np.int8)
    else:
        intervals = sky_of.intervals(place.lat, place.lon, plan_name)
        expected = sky.expected(readings.ts, intervals, limits.switch_grace_s)
    return lighting.Lamp(
        readings,
        expected,
        sky.dim_pct(readings.ts, settings.lighting_plans[plan_name], settings.zone),
        np.nan if place.rated_w is None else place.rated_w,
        place.circuit,
        limits,
    )


def _plan_name(settings: ScenesSettings, named: str | None, limits: LightingThresholds) -> str:
    if named is None:
        return limits.plan
    if named not in settings.lighting_plans:
        _unknown_plan(named, limits.plan)
        return limits.plan
    return named


@functools.cache
def _unknown_plan(named: str, instead: str) -> None:
    """Say once per process that components name a plan the settings do not have."""
    logger.warning(
        "lighting plan %r of a component is not in [scenes.lighting_plans]; using %r",
        named,
        instead,
    )


def plan_of(settings: ScenesSettings, named: str | None, limits: LightingThresholds) -> sky.Plan:
    """The plan ``named`` by a component (None: the thresholds'), or the thresholds' if unknown."""
    return settings.lighting_plans[_plan_name(settings, named, limits)]


def places(conn: psycopg.Connection, devices: list[str]) -> dict[str, Place]:
    """Where each of ``devices`` is, its rated power, circuit, cabinet and plan's name."""
    return {row[0]: Place(*row[1:]) for row in conn.execute(_PLACES, (devices,)).fetchall()}
