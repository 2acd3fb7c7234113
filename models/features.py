"""Features of a device's behaviour over fixed windows, per device type.

The database gives each device's hours (a row per device and hour: the hourly rollups for covers
and lamps, an aggregation of the GPS fixes for sweepers); numpy turns them into one feature
vector per device and window, a window being the ``window_h`` hours before an hour mark. Peer
features compare a device with the others of its group in the same window: a cover with the
covers of its street, a lamp with the lamps of its cabinet, a sweeper with its district's.

A window with fewer than ``min_hours`` hours of data gives NaN features: it is not scored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt
import psycopg

Floats = npt.NDArray[np.float64]

HOUR_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Kind:
    """What the models know of a device type: its hourly columns and the features made of them.

    ``hours_sql`` selects (device_id, hour as epoch seconds, *columns) for the devices in
    ``%(devices)s`` and the hours in [``%(since)s``, ``%(until)s``) (timestamptz), ordered by
    device and hour (in any order); ``groups_sql`` selects (device_id, group) of every device
    of the type.
    ``window`` turns the hours of the windows, an array (devices, windows, hours, columns), into
    their features (devices, windows, features) without peer features.
    """

    device_type: str
    columns: tuple[str, ...]
    own: tuple[str, ...]  # the features ``window`` computes
    peer: tuple[tuple[str, str], ...]  # (feature, of which own feature) against the group median
    hours_sql: str
    groups_sql: str
    window: Callable[[Floats], Floats]
    #: The smallest spread each feature is scaled by (its unit's resolution): a feature all
    #: normal devices share exactly (water under every healthy cover, say) still has a scale.
    floors: tuple[float, ...]
    #: The smallest number of hours with data a window needs to be scored (a window that
    #: reaches back before a device's first reading is not yet comparable).
    min_hours: int = 20
    #: Own features that are scored only against their peers (their level moves with the
    #: season or the place: the hours a lamp burns, the water under a cover).
    peer_only: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature's name: own ones (but the peer-only), then peer features."""
        own = tuple(name for name in self.own if name not in self.peer_only)
        return own + tuple(name for name, _ in self.peer)


def _slope_and_spread(values: Floats) -> tuple[Floats, Floats]:
    """Least-squares slope per day and residual spread of hourly values (NaN: no hour).

    ``values``: (..., hours). Fewer than three hours give NaN.
    """
    hours = np.arange(values.shape[-1], dtype=np.float64)
    known = ~np.isnan(values)
    n = known.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = np.where(known, hours, 0).sum(axis=-1) / n
        y_mean = np.nansum(values, axis=-1) / n
        dx = np.where(known, hours - x_mean[..., None], 0)
        dy = np.where(known, values - y_mean[..., None], 0)
        slope = (dx * dy).sum(axis=-1) / (dx * dx).sum(axis=-1)
        residual = dy - slope[..., None] * dx
        spread = np.sqrt((residual * residual).sum(axis=-1) / (n - 2))
    few = n < 3
    return np.where(few, np.nan, slope * 24), np.where(few, np.nan, spread)


def _enough(hours: Floats, min_hours: int) -> npt.NDArray[np.bool_]:
    """Windows with at least ``min_hours`` hours of data (any column)."""
    return np.asarray((~np.isnan(hours).all(axis=-1)).sum(axis=-1) >= min_hours)


def _cover_windows(hours: Floats) -> Floats:
    tilt, water, battery = hours[..., 0], hours[..., 1], hours[..., 2]
    tilt_slope, tilt_spread = _slope_and_spread(tilt)
    water_slope, _ = _slope_and_spread(water)
    battery_slope, _ = _slope_and_spread(battery)
    water_level = nanmedian(water, axis=-1)
    return np.stack([tilt_slope, tilt_spread, water_slope, water_level, battery_slope], axis=-1)


def _lamp_windows(hours: Floats) -> Floats:
    readings, on, power, dim, rated = (hours[..., i] for i in range(5))
    lit = (on > 0) & (dim > 0) & (rated > 0)
    with np.errstate(all="ignore"):
        # per hour the power per dimming level, against the rating: 1.0 is a healthy lamp
        hourly = np.where(lit, power / dim * 100 / rated, np.nan)
        weights = np.where(lit, dim * readings, 0)
        ratio = np.nansum(hourly * weights, axis=-1) / weights.sum(axis=-1)
        on_share = np.nansum(on, axis=-1) / np.nansum(readings, axis=-1)
    slope, _ = _slope_and_spread(hourly)
    return np.stack([ratio, slope, on_share], axis=-1)


def _sweeper_windows(hours: Floats) -> Floats:
    brushing, speed_sum, speed_sq, driven_s, gap_s = (hours[..., i] for i in range(5))
    with np.errstate(all="ignore"):
        n = np.nansum(brushing, axis=-1)
        mean = np.nansum(speed_sum, axis=-1) / n
        spread = np.sqrt(np.maximum(np.nansum(speed_sq, axis=-1) / n - mean * mean, 0))
        gaps = np.nansum(gap_s, axis=-1) / np.nansum(driven_s, axis=-1)
    few = n < 60  # under a few minutes of sweeping: nothing to compare
    return np.where(few[..., None], np.nan, np.stack([mean, spread, gaps], axis=-1))


_BUCKET: Final = "date_bin('1 hour', {ts}, timestamptz '2000-01-01 00:00:00+00')"

KINDS: Final = {
    kind.device_type: kind
    for kind in (
        Kind(
            "manhole",
            ("tilt_max_deg", "water_max_cm", "battery_min_pct"),
            (
                "tilt_slope_deg_day",
                "tilt_spread_deg",
                "water_slope_cm_day",
                "water_level_cm",
                "battery_slope_pct_day",
            ),
            (
                ("tilt_spread_vs_street_deg", "tilt_spread_deg"),
                ("water_vs_street_cm", "water_level_cm"),
                ("battery_slope_vs_street", "battery_slope_pct_day"),
            ),
            "select device_id, extract(epoch from bucket)::float8, tilt_max_deg::float8, "
            "water_max_cm::float8, battery_min_pct::float8 from manhole_hourly "
            "where device_id = any(%(devices)s) and bucket >= %(since)s and bucket < %(until)s",
            # a cover's street: its component's grid's parent (or its region itself)
            "select d.device_id, coalesce(case when g.level = 'grid' then g.parent_id "
            "else g.region_id end, '') from devices d "
            "left join assets a on a.code = d.asset_code "
            "left join regions g on g.region_id = coalesce(a.region_id, d.region_id) "
            "where d.type = 'manhole'",
            _cover_windows,
            (0.1, 0.05, 1.0, 0.3, 0.05, 1.0, 0.3),
            peer_only=("water_level_cm",),
        ),
        Kind(
            "light",
            ("readings", "on_readings", "power_avg_w", "dim_avg_pct", "rated_power_w"),
            ("power_ratio", "power_ratio_slope_day", "on_share"),
            (
                ("power_ratio_vs_cabinet", "power_ratio"),
                ("on_share_vs_cabinet", "on_share"),
            ),
            "select h.device_id, extract(epoch from h.bucket)::float8, h.readings::float8, "
            "h.on_readings::float8, h.power_avg_w, h.dim_avg_pct, "
            "(a.properties ->> 'rated_power_w')::float8 from light_hourly h "
            "join devices d on d.device_id = h.device_id "
            "left join assets a on a.code = d.asset_code "
            "where h.device_id = any(%(devices)s) and h.bucket >= %(since)s "
            "and h.bucket < %(until)s",
            "select d.device_id, coalesce(a.properties ->> 'cabinet_id', d.gateway_id, '') "
            "from devices d left join assets a on a.code = d.asset_code where d.type = 'light'",
            _lamp_windows,
            (0.01, 0.01, 0.01, 0.02),
            peer_only=("on_share",),
        ),
        Kind(
            "sweeper",
            ("brushing_fixes", "speed_sum", "speed_sq_sum", "driven_s", "gap_s"),
            ("brushing_speed_kmh", "brushing_speed_spread_kmh", "gap_share"),
            (("brushing_speed_vs_district_kmh", "brushing_speed_kmh"),),
            # per hour: the brushing fixes' speeds; the driving time between fixes (a pause of
            # a minute or more is no driving), and the part of it in gaps over 1.5 times the
            # hour's usual interval between fixes
            "with f as (select device_id, "
            + _BUCKET.format(ts="ts")
            + " as hour, speed_kmh::float8 as speed, brush_on, "
            "extract(epoch from ts - lag(ts) over (partition by device_id order by ts)) as dt "
            "from sweeper_readings where device_id = any(%(devices)s) "
            "and ts >= %(since)s and ts < %(until)s), "
            "usual as (select device_id, hour, percentile_cont(0.5) within group (order by dt) "
            "as dt from f where dt <= 60 group by 1, 2) "
            "select f.device_id, extract(epoch from f.hour)::float8, "
            "count(*) filter (where f.brush_on)::float8, "
            "sum(f.speed) filter (where f.brush_on), "
            "sum(f.speed * f.speed) filter (where f.brush_on), "
            "coalesce(sum(f.dt) filter (where f.dt <= 60), 0), "
            "coalesce(sum(f.dt) filter (where f.dt <= 60 and f.dt > 1.5 * u.dt), 0) "
            "from f left join usual u on u.device_id = f.device_id and u.hour = f.hour "
            "group by 1, 2",
            "select device_id, district from device_districts where type = 'sweeper'",
            _sweeper_windows,
            (0.2, 0.1, 0.02, 0.2),
            min_hours=1,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Windows:
    """Features per device and window: ``values`` (devices, windows, features)."""

    devices: list[str]
    ends: Floats  # each window's end, epoch seconds on the hour
    values: Floats


def hour_marks(since: float, until: float) -> Floats:
    """The hour marks in [since, until] (epoch seconds)."""
    first = np.ceil(since / HOUR_S) * HOUR_S
    return np.arange(first, np.floor(until / HOUR_S) * HOUR_S + 1, HOUR_S)


def peer_groups(conn: psycopg.Connection, kind: Kind, devices: Sequence[str]) -> dict[str, str]:
    """The group of each of ``devices`` and of every other device in one of their groups."""
    rows = conn.execute(
        f"with g (device_id, grp) as ({kind.groups_sql}) select device_id, grp from g "
        "where grp in (select grp from g where device_id = any(%(devices)s))",
        {"devices": list(devices)},
    ).fetchall()
    return dict(rows)


def compute(
    conn: psycopg.Connection,
    kind: Kind,
    groups: Mapping[str, str],
    ends: Floats,
    window_h: int,
) -> Windows:
    """The features of the devices of ``groups`` (device: its peer group) for the windows.

    Each window is the ``window_h`` hours before one of ``ends`` (hour marks, ascending). Peer
    features compare each device with the median of its group among them (a group of one
    compares with itself).
    """
    devices = sorted(groups)
    if not devices or len(ends) == 0:
        return Windows(devices, ends, np.empty((len(devices), len(ends), len(kind.features))))
    first = float(ends[0]) - window_h * HOUR_S
    span = round((float(ends[-1]) - first) / HOUR_S)
    grid = np.full((len(devices), span, len(kind.columns)), np.nan)
    index = {d: i for i, d in enumerate(devices)}
    rows = (
        conn.cursor(binary=True)  # floats as they are, not parsed from text
        .execute(kind.hours_sql, {"devices": devices, "since": _at(first), "until": _at(ends[-1])})
        .fetchall()
    )
    if rows:
        table = np.array([r[1:] for r in rows], dtype=np.float64)
        which = np.array([index[r[0]] for r in rows])
        hour = np.rint((table[:, 0] - first) / HOUR_S).astype(int)
        grid[which, hour] = table[:, 1:]
    # (devices, windows, hours, columns): each window the window_h hours before its end
    starts = np.rint((ends - first) / HOUR_S).astype(int) - window_h
    take = starts[:, None] + np.arange(window_h)[None, :]
    hours = grid[:, take, :]
    own = kind.window(hours)
    own[~_enough(hours, kind.min_hours)] = np.nan
    peer = _peer(
        own, [groups.get(d, "") for d in devices], [kind.own.index(f) for _, f in kind.peer]
    )
    kept = [i for i, name in enumerate(kind.own) if name not in kind.peer_only]
    return Windows(devices, ends, np.concatenate([own[:, :, kept], peer], axis=-1))


def _peer(own: Floats, groups: list[str], columns: list[int]) -> Floats:
    """Each device's features ``columns`` less its group's median in the same window."""
    names = sorted(set(groups))
    group = np.searchsorted(names, groups)
    block = own[:, :, columns]
    out = np.empty_like(block)
    for w in range(block.shape[1]):
        for c in range(block.shape[2]):
            out[:, w, c] = block[:, w, c] - group_median(block[:, w, c], group, len(names))
    return out


def group_median(values: Floats, group: npt.NDArray[np.intp], groups: int) -> Floats:
    """Each value's group's median, ignoring NaN (NaN for a group of NaN only)."""
    order = np.lexsort((values, group))  # by group, then value: NaN last in each group
    starts = np.searchsorted(group[order], np.arange(groups))
    counts = np.bincount(group[~np.isnan(values)], minlength=groups)
    low = np.minimum(starts + (counts - 1) // 2, len(values) - 1)
    high = np.minimum(starts + counts // 2, len(values) - 1)
    ranked = values[order]
    median = np.where(counts > 0, (ranked[low] + ranked[high]) / 2, np.nan)
    return np.asarray(median[group])


def nanmedian(values: Floats, axis: int) -> Floats:
    """The median along ``axis`` ignoring NaN; NaN where there is nothing (and no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: NaN is the answer
        return np.asarray(np.nanmedian(values, axis=axis))


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(float(epoch_s), tz=UTC)
