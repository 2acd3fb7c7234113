"""Grafana dashboards and alert rules as code: what ``cityops grafana build`` writes.

Six dashboards (``DASHBOARDS``) are built with grafana-foundation-sdk, the builder library Grafana
maintains. It has no typed PostgreSQL query (grafana/grafana-foundation-sdk#447), so an SQL
target is the PostgreSQL datasource's own query model through ``cog``'s untyped dataquery. Each
query is declared with the columns its panel reads; the tests run every one against a database a
simulated city filled, on both storage paths, after ``render`` expands the Grafana macros and
variables the panels use, and ``bench/dashboards.py`` times them.

The Grafana alert rules are the Prometheus alerting rules (config/prometheus/alerts.yml) made
Grafana-managed, the way Grafana converts a Prometheus rule: the rule's PromQL is the query, and
the condition fires for every series it returns (``is_number($A) || is_nan($A) ||
is_inf($A)``), so the two ways of alerting cannot drift apart.

Output is stable: the same code and rules give byte-identical files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from grafana_foundation_sdk.builders import (
    barchart,
    common,
    geomap,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import geomap as geomap_models

from scenes import engine, lighting
from scenes.indicators import LIGHTING_RATE, OPEN_CASE, ROAD_COVERAGE, ROAD_NIGHTS

#: The provisioned datasources' uids (config/grafana/provisioning/datasources/cityops.yaml).
POSTGRES_UID: Final = "cityops-timescaledb"
PROMETHEUS_UID: Final = "cityops-prometheus"
_POSTGRES: Final = models.DataSourceRef(type_val="grafana-postgresql-datasource", uid=POSTGRES_UID)
_PROMETHEUS: Final = models.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
#: The folder the dashboards and alert rules are provisioned into.
FOLDER: Final = "cityops"

_SEVERITY_LEVEL: Final = (
    "case {0} when 'critical' then 4 when 'major' then 3 when 'minor' then 2 else 1 end"
)
_MIDPOINT: Final = (
    "(s.geometry -> 'coordinates' -> (jsonb_array_length(s.geometry -> 'coordinates') / 2) ->> {0})"
    "::float8"
)
_NIGHTS_IN_RANGE: Final = "night between $__timeFrom()::date and $__timeTo()::date"
_NIGHT_TIME: Final = "night::timestamp at time zone 'UTC' as time"


@dataclass(frozen=True, slots=True)
class Sql:
    """A query of the PostgreSQL datasource, with the columns its panel reads, in order."""

    sql: str
    columns: tuple[str, ...]
    #: Grafana's time_series format: the first column is ``time``, text columns name series.
    time_series: bool = False


@dataclass(frozen=True, slots=True)
class Prom:
    """A query of the Prometheus datasource."""

    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class PanelSpec:
    """One panel: its kind (stat, timeseries, table, barchart, geomap), title and queries."""

    kind: str
    title: str
    queries: tuple[Sql | Prom, ...]
    width: int = 12
    height: int = 8
    unit: str = ""
    description: str = ""
    #: (value from which, colour): the first value is None; a geomap colours by ``level``.
    thresholds: tuple[tuple[float | None, str], ...] = ()


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """A dashboard variable filled by an SQL query (``__value``, ``__text`` columns)."""

    name: str
    label: str
    sql: str


@dataclass(frozen=True, slots=True)
class Board:
    """A dashboard."""

    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]
    variables: tuple[VariableSpec, ...] = ()
    time_from: str = "now-24h"


_SEVERITY_COLOURS: Final = ((None, "green"), (1, "yellow"), (3, "orange"), (4, "red"))
_DISTRICT: Final = VariableSpec(
    "district",
    "District",
    "select region_id as __value, name as __text from regions where level = 'district' order by 2",
)


def _devices_of(device_type: str, name: str, label: str) -> VariableSpec:
    return VariableSpec(
        name,
        label,
        "select dd.device_id as __value, coalesce(dd.asset_code, dd.device_id) as __text "
        f"from device_districts dd where dd.type = '{device_type}' and dd.district = '$district' "
        "order by 2",
    )


def _per_night(column: str, alias: str) -> Sql:
    """A lighting_nights figure per district and night over the dashboard's range."""
    return Sql(
        f"select {_NIGHT_TIME}, district, sum({column}) as {alias} from lighting_nights "
        f"where {_NIGHTS_IN_RANGE} group by 1, 2 order by 1",
        ("time", "district", alias),
        time_series=True,
    )


def _per_second(counter: str, by: str) -> Prom:
    """A Prometheus counter's rate over 5 minutes, summed per ``by``."""
    return Prom(f"sum by ({by}) (rate({counter}[5m]))", f"{{{{{by}}}}}")


def _quantiles(histogram: str, by: str = "") -> tuple[Prom, ...]:
    """p50 and p99 of a Prometheus histogram over 5 minutes (per ``by``, if given)."""
    labels = f"le, {by}" if by else "le"
    return tuple(
        Prom(
            f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[5m])))",
            f"p{round(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.99)
    )


def _sql_array(values: Iterable[str]) -> str:
    """An SQL text array literal of ``values`` (constants of this code, never input)."""
    return "array[" + ", ".join(f"'{v}'" for v in sorted(set(values))) + "]"


_COVER_KINDS: Final = _sql_array(engine.COVERS.category_of)
_COVER_CATEGORIES: Final = _sql_array(engine.COVERS.category_of.values())
_CABINET_KINDS: Final = f"('{lighting.CABINET_OUTAGE}', '{lighting.CIRCUIT_OUTAGE}')"

OVERVIEW: Final = Board(
    "cityops-overview",
    "City overview",
    "Open and overdue cases by district and severity, today's detections, and every active "
    "problem on the map.",
    (
        PanelSpec(
            "stat",
            "Open cases",
            (Sql(f"select count(*) as open_cases from cases where {OPEN_CASE}", ("open_cases",)),),
            width=6,
            height=4,
        ),
        PanelSpec(
            "stat",
            "Overdue cases",
            (
                Sql(
                    f"select count(*) as overdue from cases where {OPEN_CASE} and deadline < now()",
                    ("overdue",),
                ),
            ),
            width=6,
            height=4,
            thresholds=((None, "green"), (1, "red")),
        ),
        PanelSpec(
            "stat",
            "Detections in range (today)",
            (
                Sql(
                    "select count(*) as detections from detections where $__timeFilter(first_seen)",
                    ("detections",),
                ),
            ),
            width=6,
            height=4,
        ),
        PanelSpec(
            "stat",
            "Devices offline",
            (
                Sql(
                    "select count(distinct device_id) as offline from detections "
                    "where kind = 'sensor_offline' and cleared_at is null",
                    ("offline",),
                ),
            ),
            width=6,
            height=4,
        ),
        PanelSpec(
            "barchart",
            "Open cases by district and severity",
            (
                Sql(
                    "select coalesce(r.name, c.district_id, '(none)') as district, "
                    + ", ".join(
                        f"count(*) filter (where c.severity = '{s}') as {s}"
                        for s in ("critical", "major", "minor", "warning")
                    )
                    + " from cases c left join regions r on r.region_id = c.district_id "
                    f"where c.{OPEN_CASE} group by 1 order by 1",
                    ("district", "critical", "major", "minor", "warning"),
                ),
            ),
        ),
        PanelSpec(
            "timeseries",
            "Detections per hour by scene",
            (
                Sql(
                    "select date_bin('1 hour', first_seen, timestamptz '2000-01-01') as time, "
                    "scene, count(*) as detections from detections "
                    "where $__timeFilter(first_seen) group by 1, 2 order by 1",
                    ("time", "scene", "detections"),
                    time_series=True,
                ),
            ),
        ),
        PanelSpec(
            "geomap",
            "Active problems",
            (
                Sql(
                    "select * from (select coalesce(a.lat, "
                    + _MIDPOINT.format(1)
                    + ") as lat, coalesce(a.lon, "
                    + _MIDPOINT.format(0)
                    + ") as lon, x.kind, x.subject, x.severity, x.first_seen as since, "
                    + _SEVERITY_LEVEL.format("x.severity")
                    + " as level from detections x "
                    "left join devices dv on dv.device_id = x.device_id "
                    "left join assets a on a.code = coalesce(dv.asset_code, x.subject) "
                    "left join road_segments s on s.segment_id = x.subject "
                    "where x.cleared_at is null) p where lat is not null",
                    ("lat", "lon", "kind", "subject", "severity", "since", "level"),
                ),
            ),
            width=24,
            height=12,
            description="Covers, lamps and road segments with an active detection, coloured by "
            "severity; findings without a place (a cabinet, a sweeper's GPS gap) are counted in "
            "the panels above.",
            thresholds=_SEVERITY_COLOURS,
        ),
    ),
    time_from="now/d",
)

COVERS: Final = Board(
    "cityops-covers",
    "Manhole covers",
    "The cover dictionary's state on the map, one cover's tilt, water and battery (pick it), "
    "and each owner's backlog.",
    (
        PanelSpec(
            "geomap",
            "Covers by state ($district)",
            (
                Sql(
                    "select a.lat, a.lon, a.code as cover, coalesce(w.kind, 'normal') as state, "
                    "coalesce(w.level, 0) as level from device_districts dd "
                    "join assets a on a.code = dd.asset_code "
                    "left join lateral (select x.kind, "
                    + _SEVERITY_LEVEL.format("x.severity")
                    + " as level from detections x where x.subject = a.code "
                    "and x.cleared_at is null order by 2 desc limit 1) w on true "
                    "where dd.type = 'manhole' and dd.district = '$district' "
                    "and a.lat is not null",
                    ("lat", "lon", "cover", "state", "level"),
                ),
            ),
            width=24,
            height=12,
            thresholds=_SEVERITY_COLOURS,
        ),
        PanelSpec(
            "timeseries",
            "Tilt and water level, hourly maximum ($cover)",
            (
                Sql(
                    "select bucket as time, tilt_max_deg, water_max_cm from manhole_hourly "
                    "where device_id = '$cover' and $__timeFilter(bucket) order by 1",
                    ("time", "tilt_max_deg", "water_max_cm"),
                    time_series=True,
                ),
            ),
        ),
        PanelSpec(
            "timeseries",
            "Battery and reports, hourly ($cover)",
            (
                Sql(
                    "select bucket as time, battery_min_pct, readings, open_readings "
                    "from manhole_hourly where device_id = '$cover' and $__timeFilter(bucket) "
                    "order by 1",
                    ("time", "battery_min_pct", "readings", "open_readings"),
                    time_series=True,
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Owners' backlog: open cover cases",
            (
                Sql(
                    "select coalesce(u.name, a.owner_unit_id, '(no owner)') as owner, "
                    "count(*) as open_cases, count(*) filter (where c.deadline < now()) "
                    "as overdue, max(extract(epoch from now() - c.reported_at)) / 3600 "
                    "as oldest_h from cases c join assets a on a.code = c.subject "
                    "left join units u on u.unit_id = a.owner_unit_id "
                    f"where c.{OPEN_CASE} and c.category = any({_COVER_CATEGORIES}) "
                    "group by 1 order by 2 desc",
                    ("owner", "open_cases", "overdue", "oldest_h"),
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Active cover detections ($district)",
            (
                Sql(
                    "select x.kind, x.subject as cover, x.severity, x.first_seen as since, "
                    "x.case_id from detections x where x.kind = any("
                    + _COVER_KINDS
                    + ") and x.cleared_at is null and x.district = '$district' "
                    "order by x.first_seen desc limit 500",
                    ("kind", "cover", "severity", "since", "case_id"),
                ),
            ),
        ),
    ),
    variables=(_DISTRICT, _devices_of("manhole", "cover", "Cover")),
    time_from="now-7d",
)

ROADS: Final = Board(
    "cityops-roads",
    "Clean roads",
    "Each night's sweeping: coverage per district and segment, the sweepers' kilometres, passes "
    "too fast or with brushes up, and the segments on the map.",
    (
        PanelSpec(
            "barchart",
            "Coverage per district ($night)",
            (
                Sql(
                    f"select n.district, {ROAD_COVERAGE} as coverage from {ROAD_NIGHTS} "
                    "where n.night = '$night' and n.required > 0 group by 1 order by 1",
                    ("district", "coverage"),
                ),
            ),
            unit="percentunit",
        ),
        PanelSpec(
            "timeseries",
            "Passes too fast or with brushes up, per night",
            (
                Sql(
                    f"select n.{_NIGHT_TIME}, n.district, sum(n.fast_passes + n.idle_passes) "
                    f"as improper_passes from road_nights n where n.{_NIGHTS_IN_RANGE} "
                    "group by 1, 2 order by 1",
                    ("time", "district", "improper_passes"),
                    time_series=True,
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Segments of $district ($night)",
            (
                Sql(
                    "select s.segment_id as segment, s.name, s.road_class, n.coverage, n.passes, "
                    f"n.required, n.fast_passes, n.idle_passes from {ROAD_NIGHTS} "
                    "where n.night = '$night' and n.district = '$district' "
                    "order by n.coverage, s.segment_id",
                    (
                        "segment",
                        "name",
                        "road_class",
                        "coverage",
                        "passes",
                        "required",
                        "fast_passes",
                        "idle_passes",
                    ),
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Sweepers ($night)",
            (
                Sql(
                    "select device_id as sweeper, district, swept_km, driven_km, "
                    "over_limit_s / 60 as over_limit_min, fixes from sweeper_nights "
                    "where night = '$night' order by district, device_id",
                    ("sweeper", "district", "swept_km", "driven_km", "over_limit_min", "fixes"),
                ),
            ),
        ),
        PanelSpec(
            "geomap",
            "Segments by coverage ($district, $night)",
            (
                Sql(
                    f"select {_MIDPOINT.format(1)} as lat, {_MIDPOINT.format(0)} as lon, "
                    "s.segment_id as segment, s.name, n.coverage, "
                    "case when n.passes >= n.required then 0 else 4 end as level "
                    f"from {ROAD_NIGHTS} where n.night = '$night' and n.district = '$district' "
                    "and n.required > 0",
                    ("lat", "lon", "segment", "name", "coverage", "level"),
                ),
            ),
            width=24,
            height=12,
            description="Each planned segment at its midpoint: red when it lacks passes.",
            thresholds=_SEVERITY_COLOURS,
        ),
    ),
    variables=(
        VariableSpec(
            "night",
            "Night",
            "select night::text as __value, night::text as __text from road_nights "
            "group by 1 order by 1 desc limit 90",
        ),
        _DISTRICT,
    ),
    time_from="now-30d",
)

LIGHTING: Final = Board(
    "cityops-lighting",
    "Street lighting",
    "Lighting rate per district, lamps out, day burners, cabinet outages, energy, and one "
    "lamp's power (pick it).",
    (
        PanelSpec(
            "timeseries",
            "Lighting rate per district, per night",
            (
                Sql(
                    f"select {_NIGHT_TIME}, district, {LIGHTING_RATE} as lighting_rate "
                    f"from lighting_nights where {_NIGHTS_IN_RANGE} group by 1, 2 "
                    "having sum(expected_s) > 0 order by 1",
                    ("time", "district", "lighting_rate"),
                    time_series=True,
                ),
            ),
            unit="percentunit",
        ),
        PanelSpec(
            "table",
            "Now, per district",
            (
                Sql(
                    "select district, "
                    f"count(*) filter (where kind = '{lighting.LAMP_OUT}') as lamps_out, "
                    f"count(*) filter (where kind = '{lighting.DAY_BURNER}') as day_burners, "
                    f"count(*) filter (where kind in {_CABINET_KINDS}) as cabinet_outages, "
                    "count(*) as lighting_detections from detections "
                    "where scene = 'lighting' and cleared_at is null group by 1 order by 1",
                    (
                        "district",
                        "lamps_out",
                        "day_burners",
                        "cabinet_outages",
                        "lighting_detections",
                    ),
                ),
            ),
        ),
        PanelSpec(
            "timeseries",
            "Energy per district (kWh per lighting day)",
            (_per_night("energy_kwh", "energy_kwh"),),
            unit="kwatth",
        ),
        PanelSpec(
            "timeseries",
            "Day burning per district (kWh per day)",
            (_per_night("day_burn_kwh", "day_burn_kwh"),),
            unit="kwatth",
        ),
        PanelSpec(
            "table",
            "Cabinet and circuit outages",
            (
                Sql(
                    "select subject as cabinet, kind, district, first_seen as since, case_id "
                    f"from detections where kind in {_CABINET_KINDS} and cleared_at is null "
                    "order by first_seen desc limit 200",
                    ("cabinet", "kind", "district", "since", "case_id"),
                ),
            ),
        ),
        PanelSpec(
            "timeseries",
            "Power and dimming, hourly ($lamp)",
            (
                Sql(
                    "select bucket as time, power_avg_w, dim_avg_pct, "
                    "on_readings::float8 / readings as on_share from light_hourly "
                    "where device_id = '$lamp' and $__timeFilter(bucket) order by 1",
                    ("time", "power_avg_w", "dim_avg_pct", "on_share"),
                    time_series=True,
                ),
            ),
        ),
    ),
    variables=(_DISTRICT, _devices_of("light", "lamp", "Lamp")),
    time_from="now-30d",
)

_OPEN_BANDS: Final = (
    "(values (1, '< 1 h', 0, 1), (2, '1-4 h', 1, 4), (3, '4-24 h', 4, 24), "
    "(4, '1-3 d', 24, 72), (5, '> 3 d', 72, 1e9)) as b(n, age, lo, hi)"
)


def _ranking(scope: str) -> Sql:
    return Sql(
        f"select rank, name as {scope}, cases, on_time_closure_rate, closure_rate, "
        "on_time_disposal_rate, accurate_dispatch_rate, mean_disposal_hours from evaluations "
        f"where month = '$month' and scope = '{scope}' order by rank",
        (
            "rank",
            scope,
            "cases",
            "on_time_closure_rate",
            "closure_rate",
            "on_time_disposal_rate",
            "accurate_dispatch_rate",
            "mean_disposal_hours",
        ),
    )


CASES: Final = Board(
    "cityops-cases",
    "Cases and evaluation",
    "Cases in and out, the open ones' age, what is overdue, and the month's evaluation: "
    "on-time closure per unit and district, ranked.",
    (
        PanelSpec(
            "timeseries",
            "Cases opened and closed per day",
            tuple(
                Sql(
                    f"select date_bin('1 day', {column}, timestamptz '2000-01-01') as time, "
                    f"count(*) as {alias} from cases where $__timeFilter({column}) "
                    "group by 1 order by 1",
                    ("time", alias),
                    time_series=True,
                )
                for column, alias in (("reported_at", "opened"), ("closed_at", "closed"))
            ),
        ),
        PanelSpec(
            "barchart",
            "Age of open cases",
            (
                Sql(
                    f"select b.age, count(c.case_id) as cases from {_OPEN_BANDS} "
                    f"left join cases c on c.{OPEN_CASE} "
                    "and extract(epoch from now() - c.reported_at) / 3600 >= b.lo "
                    "and extract(epoch from now() - c.reported_at) / 3600 < b.hi "
                    "group by b.n, b.age order by b.n",
                    ("age", "cases"),
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Monthly ranking: districts ($month)",
            (_ranking("district"),),
            description="Ranked by on-time closure rate, then closure rate (docs/cases.md).",
        ),
        PanelSpec(
            "table",
            "Monthly ranking: units ($month)",
            (_ranking("unit"),),
            description="Ranked by on-time closure rate, then closure rate (docs/cases.md).",
        ),
        PanelSpec(
            "timeseries",
            "On-time closure rate per district, by month",
            (
                Sql(
                    "select to_timestamp(month, 'YYYY-MM') as time, name, on_time_closure_rate "
                    "from evaluations where scope = 'district' and month between "
                    "to_char($__timeFrom()::timestamptz, 'YYYY-MM') and "
                    "to_char($__timeTo()::timestamptz, 'YYYY-MM') order by 1",
                    ("time", "name", "on_time_closure_rate"),
                    time_series=True,
                ),
            ),
            unit="percentunit",
        ),
        PanelSpec(
            "table",
            "Overdue open cases",
            (
                Sql(
                    "select case_id, category, district_id as district, unit_id as unit, "
                    "severity, deadline, extract(epoch from now() - deadline) / 3600 "
                    f"as overdue_h from cases where {OPEN_CASE} and deadline < now() "
                    "order by deadline limit 200",
                    (
                        "case_id",
                        "category",
                        "district",
                        "unit",
                        "severity",
                        "deadline",
                        "overdue_h",
                    ),
                ),
            ),
        ),
    ),
    variables=(
        VariableSpec(
            "month",
            "Month",
            "select month as __value, month as __text from evaluations group by 1 order by 1 desc",
        ),
    ),
    time_from="now-90d",
)

PLATFORM: Final = Board(
    "cityops-platform",
    "Platform health",
    "Ingest rate, lag and quarantine, database commit time and buffer, scene lag, API latency "
    "(Prometheus), and the quarantine and scene watermarks in the database.",
    (
        PanelSpec(
            "timeseries",
            "Readings stored per second, by kind",
            (_per_second('cityops_ingest_rows_total{result="inserted"}', "kind"),),
            unit="reqps",
        ),
        PanelSpec(
            "timeseries",
            "Messages per second, by result",
            (_per_second("cityops_ingest_messages_total", "result"),),
            unit="reqps",
        ),
        PanelSpec(
            "timeseries",
            "Lag: device time to commit",
            _quantiles("cityops_ingest_lag_seconds"),
            unit="s",
        ),
        PanelSpec(
            "timeseries",
            "Quarantined per second, by reason",
            (_per_second("cityops_ingest_quarantined_total", "reason"),),
            unit="reqps",
        ),
        PanelSpec(
            "timeseries",
            "Database commit time per batch",
            _quantiles("cityops_ingest_commit_seconds"),
            unit="s",
        ),
        PanelSpec(
            "timeseries",
            "Ingest buffer: messages received, not yet committed",
            (
                Prom("cityops_ingest_buffered_messages", "{{instance}}"),
                Prom("min(cityops_ingest_database_up)", "database up"),
            ),
        ),
        PanelSpec(
            "timeseries",
            "Scene lag: oldest partition per scene",
            (Prom("max by (scene) (cityops_scene_watermark_age_seconds)", "{{scene}}"),),
            unit="s",
        ),
        PanelSpec(
            "timeseries",
            "Scene run time (p99)",
            _quantiles("cityops_scene_run_seconds", "scene")[1:],
            unit="s",
        ),
        PanelSpec(
            "timeseries",
            "API latency (p99), by route",
            _quantiles("cityops_api_request_seconds", "route")[1:],
            unit="s",
        ),
        PanelSpec(
            "table",
            "Quarantined in range, by reason",
            (
                Sql(
                    "select reason, count(*) as entries, max(received_at) as last_at "
                    "from quarantine where $__timeFilter(received_at) group by 1 order by 2 desc",
                    ("reason", "entries", "last_at"),
                ),
            ),
        ),
        PanelSpec(
            "table",
            "Scene partitions, oldest run first",
            (
                Sql(
                    "select scene, district, updated_at as last_run, "
                    "extract(epoch from now() - updated_at) as age_s from scene_watermarks "
                    "order by updated_at limit 100",
                    ("scene", "district", "last_run", "age_s"),
                ),
            ),
            width=24,
        ),
    ),
    time_from="now-6h",
)

DASHBOARDS: Final = (OVERVIEW, COVERS, ROADS, LIGHTING, CASES, PLATFORM)


def sql_queries(b: Board) -> list[tuple[str, Sql]]:
    """Every SQL query of a dashboard, panels' and variables', with its title."""
    found = [(f"variable {v.name}", Sql(v.sql, ("__value", "__text"))) for v in b.variables]
    for p in b.panels:
        found += [(p.title, q) for q in p.queries if isinstance(q, Sql)]
    return found


_MACRO: Final = re.compile(r"\$__(timeFilter|timeFrom|timeTo)\(([^()]*)\)")


def render(sql: str, *, start: datetime, end: datetime, variables: Mapping[str, str]) -> str:
    """An SQL query as Grafana's PostgreSQL datasource runs it over ``[start, end]``.

    Expands the macros the panels use (``$__timeFilter(col)``, ``$__timeFrom()``,
    ``$__timeTo()``) and the variables (``$name``), as Grafana does for a single value.
    """

    def stamp(t: datetime) -> str:
        return "'" + t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"

    def macro(m: re.Match[str]) -> str:
        if m.group(1) == "timeFilter":
            return f"{m.group(2)} BETWEEN {stamp(start)} AND {stamp(end)}"
        return stamp(start if m.group(1) == "timeFrom" else end)

    expanded = _MACRO.sub(macro, sql)
    for name in sorted(variables, key=len, reverse=True):
        expanded = expanded.replace(f"${{{name}}}", variables[name])
        expanded = expanded.replace(f"${name}", variables[name])
    return expanded


class _SqlTarget(Builder[Dataquery]):
    """The PostgreSQL datasource's query model, for ``with_target`` (the SDK has no builder)."""

    def __init__(self, query: Sql, ref_id: str) -> None:
        self.query = query
        self.ref_id = ref_id

    def build(self) -> Dataquery:
        return UnknownDataquery(
            {
                "refId": self.ref_id,
                "datasource": {"type": _POSTGRES.type_val, "uid": _POSTGRES.uid},
                "editorMode": "code",
                "format": "time_series" if self.query.time_series else "table",
                "rawQuery": True,
                "rawSql": self.query.sql,
            }
        )


def _target(query: Sql | Prom, ref_id: str) -> Builder[Dataquery]:
    if isinstance(query, Sql):
        return _SqlTarget(query, ref_id)
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend or "__auto")
        .ref_id(ref_id)
        .datasource(_PROMETHEUS)
    )


def _panel(spec: PanelSpec) -> Any:
    """The builder of a panel of ``spec.kind``, with what is particular to its kind."""
    if spec.kind == "stat":
        return stat.Panel().reduce_options(
            common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
        )
    if spec.kind == "timeseries":
        return timeseries.Panel().fill_opacity(10).show_points(common_models.VisibilityMode.NEVER)
    if spec.kind == "table":
        return table.Panel()
    if spec.kind == "barchart":
        first = spec.queries[0]
        assert isinstance(first, Sql)
        return (
            barchart.Panel()
            .x_field(first.columns[0])
            .stacking(common_models.StackingMode.NORMAL)
            # the defaults, written out: the dashboard read back equals the one written
            .fill_opacity(80)
            .gradient_mode(common_models.GraphGradientMode.NONE)
            .line_width(1)
        )
    if spec.kind == "geomap":
        markers = (
            common.MapLayerOptions()
            .type("markers")
            .name(spec.title)
            .location(
                common.FrameGeometrySource()
                .mode(common_models.FrameGeometrySourceMode.COORDS)
                .latitude("lat")
                .longitude("lon")
            )
            .config(
                {
                    "showLegend": True,
                    "style": {
                        "color": {"field": "level", "fixed": "dark-green"},
                        "opacity": 0.8,
                        "size": {"fixed": 6},
                        "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                    },
                }
            )
            .tooltip(True)
        )
        return (
            geomap.Panel()
            .view(geomap.MapViewConfig().id("fit").lat(0).lon(0).zoom(12).all_layers(True))
            .basemap(common.MapLayerOptions().type("default").name("Basemap"))
            .layers([markers])
            .tooltip(geomap.TooltipOptions().mode(geomap_models.TooltipMode.DETAILS))
        )
    msg = f"no such panel kind: {spec.kind}"
    raise ValueError(msg)


def dashboard_json(b: Board) -> str:
    """The dashboard's JSON model, as Grafana provisions it from a file."""
    dash = (
        board.Dashboard(b.title)
        .uid(b.uid)
        .description(b.description)
        .tags(["cityops"])
        .time(b.time_from, "now")
        .timezone("browser")
        .refresh("1m")
        .editable()
    )
    for v in b.variables:
        dash = dash.with_variable(
            board.QueryVariable(v.name)
            .label(v.label)
            .datasource(_POSTGRES)
            .query(v.sql)
            .refresh(models.VariableRefresh.ON_DASHBOARD_LOAD)
        )
    x = y = row_height = 0
    for n, spec in enumerate(b.panels, start=1):
        if x + spec.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panel = (
            _panel(spec)
            .id(n)
            .title(spec.title)
            .description(spec.description)
            .datasource(_PROMETHEUS if isinstance(spec.queries[0], Prom) else _POSTGRES)
            .grid_pos(models.GridPos(h=spec.height, w=spec.width, x=x, y=y))
        )
        if spec.unit:
            panel = panel.unit(spec.unit)
        if spec.thresholds:
            panel = panel.thresholds(
                board.ThresholdsConfig()
                .mode(models.ThresholdsMode.ABSOLUTE)
                .steps([models.Threshold(value=v, color=c) for v, c in spec.thresholds])
            )
        for ref, query in zip("ABCDEFGH", spec.queries, strict=False):
            panel = panel.with_target(_target(query, ref))
        dash = dash.with_panel(panel)
        x += spec.width
        row_height = max(row_height, spec.height)
    return JSONEncoder(sort_keys=True, indent=2).encode(dash.build()) + "\n"


class _Dumper(yaml.SafeDumper):
    """YAML with multi-line text (a PromQL expression) as a literal block, as written by hand."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)

#: Grafana's condition for a converted Prometheus rule: every series the query returns fires.
_FIRES: Final = "is_number($A) || is_nan($A) || is_inf($A)"


def alert_rules(prometheus_rules: Mapping[str, Any]) -> dict[str, Any]:
    """The Prometheus alerting rules as Grafana-managed rules (file-provisioning format)."""
    groups = []
    for group in prometheus_rules["groups"]:
        rules = []
        for rule in group["rules"]:
            annotations = {
                key: text.replace("$value", "$values.A.Value")
                for key, text in rule.get("annotations", {}).items()
            }
            rules.append(
                {
                    "uid": re.sub(r"(?<!^)(?=[A-Z])", "-", rule["alert"]).lower(),
                    "title": rule["alert"],
                    "condition": "B",
                    "data": [
                        {
                            "refId": "A",
                            "relativeTimeRange": {"from": 600, "to": 0},
                            "datasourceUid": PROMETHEUS_UID,
                            "model": {
                                "refId": "A",
                                "expr": rule["expr"].strip(),
                                "instant": True,
                                "range": False,
                            },
                        },
                        {
                            "refId": "B",
                            "datasourceUid": "__expr__",
                            "model": {"refId": "B", "type": "math", "expression": _FIRES},
                        },
                    ],
                    "for": rule.get("for", "0s"),
                    "noDataState": "OK",
                    "execErrState": "Error",
                    "labels": dict(rule.get("labels", {})),
                    "annotations": annotations,
                    "isPaused": False,
                }
            )
        groups.append(
            {"orgId": 1, "name": group["name"], "folder": FOLDER, "interval": "1m", "rules": rules}
        )
    return {"apiVersion": 1, "groups": groups}


def build(out: Path, prometheus_rules: Path) -> list[Path]:
    """Write the dashboards and the Grafana alert rules under ``out``; the files written.

    Dashboards: ``out/dashboards/<uid>.json``; alert rules, made from ``prometheus_rules``:
    ``out/provisioning/alerting/rules.yaml``.
    """
    rules = yaml.safe_load(prometheus_rules.read_text(encoding="utf-8"))
    written = []
    for b in DASHBOARDS:
        path = out / "dashboards" / f"{b.uid}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dashboard_json(b), encoding="utf-8")
        written.append(path)
    path = out / "provisioning" / "alerting" / "rules.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Generated by `cityops grafana build` from config/prometheus/alerts.yml: do not edit.\n"
    )
    text = yaml.dump(
        alert_rules(rules), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    path.write_text(header + text, encoding="utf-8")
    written.append(path)
    return written
