"""The street-lighting indicators of a night: lighting rate, energy, day burning (per lamp).

A night D is the lighting day from local noon of D to local noon of D+1 (``[scenes] timezone``).
Each reading tells its lamp's state (lit or not, power drawn) until the next reading, for
``hold_s`` at most. Per lamp:

- expected_s: the time its plan wanted it lit (``scenes.sky``) while a reading told its state;
  lit_s: how much of that it was lit; unknown_s: planned lit time no reading told;
- energy_kwh: power drawn over the whole lighting day;
- day_burn_s, day_burn_kwh: lit in daylight, farther than ``switch_grace_s`` from its switching
  times.

The lighting rate of a district or street is the sum of lit_s over the sum of expected_s: the
share of lamp-time lit when it should be, over the night. Stored in ``lighting_nights``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

import numpy as np
import psycopg

from scenes import lighting, sky
from scenes.episodes import Episode, Floats, blocks
from scenes.lamps import places, plan_of
from scenes.settings import ScenesSettings

#: Lamps read per query (their readings of a day held in memory at once).
_CHUNK: Final = 2000


@dataclass(frozen=True, slots=True)
class NightRow:
    """A night's figures for a district (None: the whole city) or one of its streets."""

    district: str | None
    street: str | None
    lamps: int
    observed: float | None  # share of planned lit time that readings told
    lighting_rate: float | None  # share of that time lit
    energy_kwh: float
    day_burn_h: float
    day_burn_kwh: float


def day_of(night: date, settings: ScenesSettings) -> tuple[float, float]:
    """The lighting day of ``night``: local noon to the next local noon, in epoch seconds."""
    noon = datetime.combine(night, time(12), tzinfo=settings.zone)
    return noon.timestamp(), (noon + timedelta(days=1)).timestamp()


def store(
    conn: psycopg.Connection, settings: ScenesSettings, night: date, district: str | None = None
) -> int:
    """Compute and store the night of every lamp (of ``district``); return the lamps stored."""
    start, end = day_of(night, settings)
    lamps = conn.execute(
        "select dd.device_id, dd.district, st.region_id from device_districts dd "
        "left join assets a on a.code = dd.asset_code "
        "left join regions g on g.region_id = a.region_id "
        "left join regions st on st.region_id = case g.level when 'street' then g.region_id "
        "when 'grid' then g.parent_id end "
        "where dd.type = 'light' and (%s::text is null or dd.district = %s) order by 1",
        (district, district),
    ).fetchall()
    with conn.transaction():
        conn.execute(
            "delete from lighting_nights where night = %s and (%s::text is null or district = %s)",
            (night, district, district),
        )
        for chunk in range(0, len(lamps), _CHUNK):
            rows = lamps[chunk : chunk + _CHUNK]
            figures = dict(_figures(conn, settings, [r[0] for r in rows], start, end))
            with conn.cursor().copy(
                "copy lighting_nights (night, device_id, district, street, expected_s, lit_s, "
                "unknown_s, energy_kwh, day_burn_s, day_burn_kwh) from stdin"
            ) as copy:
                for device_id, its_district, street in rows:
                    copy.write_row((night, device_id, its_district, street, *figures[device_id]))
    return len(lamps)


def report(conn: psycopg.Connection, night: date, district: str | None) -> list[NightRow]:
    """The stored night per district, then the city's total.

    With ``district``: per street of it, then the district's total.
    """
    group = "street" if district is not None else "district"
    rows = conn.execute(
        f"select grouping({group}) = 1, {group}, count(*), sum(expected_s), sum(lit_s), "
        "sum(unknown_s), sum(energy_kwh), sum(day_burn_s), sum(day_burn_kwh) "
        "from lighting_nights where night = %s and (%s::text is null or district = %s) "
        f"group by rollup ({group}) order by 1, 2",
        (night, district, district),
    ).fetchall()
    out = []
    for total, key, lamps, expected, lit, unknown, energy, burn_s, burn_kwh in rows:
        out.append(
            NightRow(
                district if district is not None else (None if total else key),
                None if district is None or total else key or "",
                lamps,
                expected / (expected + unknown) if expected + unknown else None,
                lit / expected if expected else None,
                energy,
                burn_s / 3600,
                burn_kwh,
            )
        )
    return out


def _figures(
    conn: psycopg.Connection, settings: ScenesSettings, devices: list[str], start: float, end: float
) -> Iterator[tuple[str, tuple[float, ...]]]:
    limits = settings.lighting
    where = places(conn, devices)
    rows = conn.execute(
        "select device_id, extract(epoch from ts)::float8, lamp_on::int::float8, power_w "
        "from light_readings where device_id = any(%s) and ts >= %s and ts < %s "
        "order by device_id, ts",
        (
            devices,
            datetime.fromtimestamp(start - limits.hold_s, tz=UTC),
            datetime.fromtimestamp(end, tz=UTC),
        ),
    ).fetchall()
    readings = dict(blocks(rows))
    for device_id in devices:
        place = where[device_id]
        planned = np.empty((0, 2))
        if place.lat is not None and place.lon is not None:
            plan = plan_of(settings, place.plan, limits)
            planned = sky.lit_intervals(place.lat, place.lon, plan, start, end)
        planned = np.clip(planned, start, end)
        block = readings.get(device_id, np.empty((0, 3)))
        yield device_id, _lamp_night(block, planned, place.rated_w, settings, day=(start, end))


def _lamp_night(
    block: Any,
    planned: Floats,
    rated_w: float | None,
    settings: ScenesSettings,
    *,
    day: tuple[float, float],
) -> tuple[float, ...]:
    limits = settings.lighting
    start, end = day
    ts, lamp_on, power = block[:, 0], block[:, 1], block[:, 2]
    rated = np.nan if rated_w is None else rated_w
    is_lit = np.nan_to_num(lighting.lit_of(power, lamp_on, rated, limits.lit_ratio))
    nxt = np.append(ts[1:], np.inf)
    a = np.clip(ts, start, end)
    b = np.clip(np.minimum(nxt, ts + limits.hold_s), start, end)
    planned_s = _measure(planned, b) - _measure(planned, a)
    grace = limits.switch_grace_s
    near = _merged(np.column_stack((planned[:, 0] - grace, planned[:, 1] + grace)))
    daylight_s = (b - a) - (_measure(near, b) - _measure(near, a))
    watts = np.nan_to_num(power)
    expected_s = float(planned_s.sum())
    total_planned = float((planned[:, 1] - planned[:, 0]).sum())
    return (
        expected_s,
        float((planned_s * is_lit).sum()),
        max(0.0, total_planned - expected_s),
        float(((b - a) * watts).sum() / 3.6e6),
        float((daylight_s * is_lit).sum()),
        float((daylight_s * is_lit * watts).sum() / 3.6e6),
    )


def _measure(intervals: Floats, t: Floats) -> Floats:
    """The length of ``intervals`` (sorted, disjoint) before each time of ``t``."""
    if not len(intervals):
        return np.zeros(len(t))
    starts, lengths = intervals[:, 0], intervals[:, 1] - intervals[:, 0]
    before = np.concatenate(([0.0], np.cumsum(lengths)))
    k = np.searchsorted(starts, t, side="right")
    last = np.maximum(k - 1, 0)
    partial = np.clip(t - starts[last], 0, lengths[last])
    measured: Floats = np.where(k > 0, before[last] + partial, 0.0)
    return measured


def _merged(intervals: Floats) -> Floats:
    """Sorted intervals with overlapping ones joined."""
    merged: list[list[float]] = []
    for a, b in intervals.tolist():
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.array(merged, dtype=np.float64).reshape(-1, 2)


def tally(
    conn: psycopg.Connection,
    settings: ScenesSettings,
    district: str,
    now: float,
    _record: Callable[[str | None, Episode], int],
) -> int:
    """Store the district's last finished night once it is over (its day's end + ``hold_s``).

    A night finds nothing of its own (its lamps were judged as they read): no case opened.
    """
    local = datetime.fromtimestamp(now - settings.lighting.hold_s, tz=settings.zone)
    night = local.date() - timedelta(days=1 if local.hour >= 12 else 2)
    row = conn.execute(
        "select exists (select from device_districts where type = 'light' and district = %s), "
        "exists (select from lighting_nights where night = %s and district = %s)",
        (district, night, district),
    ).fetchone()
    if row is not None and row[0] and not row[1]:
        store(conn, settings, night, district)
    return 0
