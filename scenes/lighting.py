"""The street-lighting scene's judgement: a cabinet's lamps, in event time, into episodes.

Pure functions over numpy arrays (no database). Each reading is compared with what the lamp's
plan expects at that moment (``scenes.sky``: DARK, LIT or EITHER near a switching time):

- lamp out: not lit when it should be; day burner: lit in daylight. A lamp is lit when it draws
  more than ``lit_ratio`` of its rated power (the relay state where power is not reported).
- degraded: lit, below ``degraded_ratio`` of rated power at its dimming level (the reported one,
  else the plan's); low power factor: lit, below ``power_factor_min``.
- over and under voltage: supply beyond the limits (below ``supply_min_v``: no supply at all,
  which shows as lamps out, not as under voltage).
- the controller's own fault flags (``FAULT_FLAGS``), as it reports them.

Each condition counts once it has lasted ``sustain_s`` (a controller's flags at once); one still
too young leaves a deadline. A cabinet's lamps are judged together: while ``group_share`` of its
lamps (or of one circuit's) are out at once, that is one cabinet (circuit) outage on the
cabinet, and those lamps are not out on their own account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from scenes import sky
from scenes.episodes import Episode, Floats, Judgement, spans
from scenes.settings import LightingThresholds

LAMP_OUT: Final = "lamp_out"
DAY_BURNER: Final = "day_burner"
DEGRADED: Final = "lamp_degraded"
LOW_POWER_FACTOR: Final = "low_power_factor"
OVER_VOLTAGE: Final = "over_voltage"
UNDER_VOLTAGE: Final = "under_voltage"
CABINET_OUTAGE: Final = "cabinet_outage"
CIRCUIT_OUTAGE: Final = "circuit_outage"
#: A controller's fault flags (bits of ``fault_code``) that are findings of their own. Lamp
#: failure (1), day burning (8), communication (32) and lost supply (64) are what the readings
#: themselves show as lamp out, day burner, offline and cabinet outage.
LEAKAGE: Final = "leakage"
FAULT_FLAGS: Final = {
    2: "control_gear_failure",
    4: "relay_failure",
    16: "lamp_cycling",
    128: LEAKAGE,
}

Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class LampReadings:
    """One lamp's readings in event order; NaN where a reading did not carry the field."""

    ts: Floats  # epoch seconds
    lamp_on: Floats  # 1.0, 0.0 or NaN
    dim_pct: Floats
    voltage_v: Floats
    power_w: Floats
    power_factor: Floats
    fault_code: Floats


@dataclass(frozen=True, slots=True)
class Lamp:
    """A lamp of a cabinet with what its plan expects at each of its readings."""

    readings: LampReadings
    expected: npt.NDArray[np.int8]  # sky.DARK, LIT or EITHER per reading
    plan_dim_pct: Floats  # the plan's dimming level per reading
    rated_w: float  # NaN: unknown
    circuit: str | None  # lamps of one cabinet and circuit are correlated together
    limits: LightingThresholds


def lit(lamp: Lamp) -> Floats:
    """1.0 where the lamp is lit, 0.0 where not, NaN where its readings do not say."""
    r = lamp.readings
    return lit_of(r.power_w, r.lamp_on, lamp.rated_w, lamp.limits.lit_ratio)


def lit_of(power_w: Floats, lamp_on: Floats, rated_w: float, lit_ratio: float) -> Floats:
    """Lit by power drawn (above ``lit_ratio`` of rated), else by the relay state; NaN: unknown."""
    by_power = np.where(power_w > lit_ratio * rated_w, 1.0, 0.0)
    known_power = ~np.isnan(power_w) & ~np.isnan(rated_w)
    state: Floats = np.where(known_power, by_power, lamp_on)
    return state


def out(lamp: Lamp) -> Bools:
    """Where the lamp is dark though its plan wants it lit."""
    lamp_out: Bools = (lamp.expected == sky.LIT) & (lit(lamp) == 0.0)
    return lamp_out


def unsupplied(lamp: Lamp) -> Bools:
    """Where the lamp reads no supply voltage at all."""
    none: Bools = lamp.readings.voltage_v < lamp.limits.supply_min_v
    return none


def judge_cabinet(
    lamps: Sequence[Lamp], limits: LightingThresholds, now: float
) -> tuple[list[Judgement], Judgement]:
    """Each lamp's judgement, and the cabinet's (its outages), judged at ``now``."""
    with np.errstate(all="ignore"):  # NaN and inf compare false: no finding from them
        return _judge_cabinet(lamps, limits, now)


def _judge_cabinet(
    lamps: Sequence[Lamp], limits: LightingThresholds, now: float
) -> tuple[list[Judgement], Judgement]:
    outs = [out(lamp) for lamp in lamps]
    # dark as a group: out, or without supply (by day too: it will not light at dusk)
    grid, dark = _dark_grid(
        lamps, [o | unsupplied(lamp) for o, lamp in zip(outs, lamps, strict=True)], limits
    )
    whole = _group_dark(dark, len(lamps), limits)
    owned = np.zeros_like(dark)  # the lamps' dark spells each outage accounts for
    owned[:, whole] = True
    parts = np.zeros(len(grid), dtype=bool)
    circuits = sorted({lamp.circuit for lamp in lamps if lamp.circuit is not None})
    if len(circuits) > 1:
        for circuit in circuits:
            members = np.array([i for i, lamp in enumerate(lamps) if lamp.circuit == circuit])
            spell = _group_dark(dark[members], len(members), limits) & ~whole
            owned[np.ix_(members, np.flatnonzero(spell))] = True
            parts |= spell
    cabinet = Judgement()
    share = dark.sum(axis=0) / max(len(lamps), 1)
    for kind, spell in ((CABINET_OUTAGE, whole), (CIRCUIT_OUTAGE, parts)):
        _sustained(cabinet, kind, grid, spell, share, sustain_s=limits.sustain_s, now=now)
    cabinet.episodes.sort(key=lambda e: (e.first_seen, e.kind))
    # a lamp dark with its cabinet (circuit) is the cabinet's finding, not its own
    judgements = []
    for row, (lamp, lamp_out) in enumerate(zip(lamps, outs, strict=True)):
        at = np.searchsorted(grid, lamp.readings.ts)  # every reading time is on the grid
        judgements.append(_judge_lamp(lamp, lamp_out & ~owned[row, at], now))
    return judgements, cabinet


def judge_lamp(lamp: Lamp, lamp_out: Bools, now: float) -> Judgement:
    """One lamp's episodes (``lamp_out``: where it is out on its own account)."""
    with np.errstate(all="ignore"):  # NaN and inf compare false: no finding from them
        return _judge_lamp(lamp, lamp_out, now)


def _judge_lamp(lamp: Lamp, lamp_out: Bools, now: float) -> Judgement:
    r, limits = lamp.readings, lamp.limits
    judgement = Judgement()

    def spells(kind: str, where: Bools, over: Bools, values: Floats, sustain_s: float) -> None:
        _sustained(
            judgement, kind, r.ts[where], over[where], values[where], sustain_s=sustain_s, now=now
        )

    sustain = limits.sustain_s
    is_lit = lit(lamp)
    judged = (lamp.expected != sky.EITHER) & ~np.isnan(is_lit)
    power = np.nan_to_num(r.power_w)
    spells(LAMP_OUT, judged, lamp_out, power, sustain)
    spells(DAY_BURNER, judged, (lamp.expected == sky.DARK) & (is_lit == 1.0), power, sustain)
    on = is_lit == 1.0
    level = np.where(np.isnan(r.dim_pct) | (r.dim_pct <= 0), lamp.plan_dim_pct, r.dim_pct)
    share = r.power_w / (lamp.rated_w * level / 100)
    spells(DEGRADED, on & ~np.isnan(share), share < limits.degraded_ratio, share, sustain)
    pf = r.power_factor
    spells(LOW_POWER_FACTOR, on & ~np.isnan(pf), pf < limits.power_factor_min, pf, sustain)
    supplied = r.voltage_v >= limits.supply_min_v
    volts = r.voltage_v
    spells(OVER_VOLTAGE, supplied, volts > limits.voltage_max_v, volts, sustain)
    spells(UNDER_VOLTAGE, supplied, volts < limits.voltage_min_v, volts, sustain)
    flagged = ~np.isnan(r.fault_code)
    codes = np.where(flagged, r.fault_code, 0).astype(np.int64)
    for bit, kind in FAULT_FLAGS.items():  # the controller has debounced its own flags
        spells(kind, flagged, (codes & bit) != 0, r.fault_code, 0.0)
    judgement.episodes.sort(key=lambda e: (e.first_seen, e.kind))
    return judgement


def _dark_grid(
    lamps: Sequence[Lamp], outs: Sequence[Bools], limits: LightingThresholds
) -> tuple[Floats, Bools]:
    """Every reading time of the cabinet, and which lamps are out at each (as last read).

    A lamp's reading tells its state until its next one, for ``hold_s`` at most; a lamp with no
    reading that recent counts as not out (a dark cabinet shows in its lamps' readings).
    """
    grid = np.unique(np.concatenate([lamp.readings.ts for lamp in lamps] or [np.empty(0)]))
    dark = np.zeros((len(lamps), len(grid)), dtype=bool)
    for row, (lamp, lamp_out) in enumerate(zip(lamps, outs, strict=True)):
        ts = lamp.readings.ts
        if not len(ts):
            continue
        last = np.searchsorted(ts, grid, side="right") - 1
        fresh = (last >= 0) & (grid - ts[np.maximum(last, 0)] <= limits.hold_s)
        dark[row] = fresh & lamp_out[np.maximum(last, 0)]
    return grid, dark


def _group_dark(dark: Bools, members: int, limits: LightingThresholds) -> Bools:
    """Where at least ``group_share`` of a group's lamps are out together."""
    if members < limits.group_min_lamps:
        return np.zeros(dark.shape[1], dtype=bool)
    together: Bools = dark.sum(axis=0) >= limits.group_share * members
    return together


def _sustained(
    out: Judgement,
    kind: str,
    ts: Floats,
    over: Bools,
    values: Floats,
    *,
    sustain_s: float,
    now: float,
) -> None:
    """Spells of ``over`` lasting ``sustain_s`` (first reading to the first normal one, or now).

    A spell still going that is too young leaves a deadline at the moment it would count.
    """
    for start, stop in spans(over.astype(np.int8)):
        if not over[start]:
            continue
        cleared = float(ts[stop]) if stop < len(ts) else None
        lasted = (cleared if cleared is not None else now) - float(ts[start])
        if lasted < sustain_s:
            if cleared is None:
                due = float(ts[start]) + sustain_s
                out.due_at = due if out.due_at is None else min(out.due_at, due)
            continue
        worst = values[start:stop]
        peak = float(worst.max() if kind in _HIGH_IS_WORSE else worst.min())
        out.episodes.append(
            Episode(kind, float(ts[start]), float(ts[stop - 1]), cleared, stop - start, peak)
        )


#: The kinds whose peak is the largest value of the spell (else the smallest).
_HIGH_IS_WORSE: Final = frozenset(
    {DAY_BURNER, OVER_VOLTAGE, CABINET_OUTAGE, CIRCUIT_OUTAGE, *FAULT_FLAGS.values()}
)
