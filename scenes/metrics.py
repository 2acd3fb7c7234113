"""Prometheus metrics of the scenes service: its own runs, and the city's state in the database.

- ``ScenesMetrics``: partition runs as they happen (time, detections written, cases opened and
  verified, failures), by scene.
- ``CityState``: a collector that reads the city's state when scraped, one query a family:
  devices online and offline by type and district, active detections by scene and kind, open
  and overdue cases by category, district and severity, each partition's watermark age, the
  last stored night's lighting rate and road coverage per district. A device's state is the
  health scene's: offline while it has an active ``sensor_offline`` detection.

Labels are bounded by the registry and the catalog (device types, districts, scenes, kinds,
categories, severities), never a device, case or segment id. A scrape while the database is
away yields ``cityops_city_state_up 0`` and nothing else of the city.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from redaction import error_line
from scenes.engine import PartitionResult
from scenes.indicators import LIGHTING_RATE, OFFLINE, OPEN_CASE, ROAD_COVERAGE, ROAD_NIGHTS

logger = logging.getLogger(__name__)

_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ScenesMetrics:
    """The scenes service's partition runs, by scene."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.run_seconds = Histogram(
            "cityops_scene_run_seconds",
            "Time of a partition run (one scene, one district), by scene.",
            ["scene"],
            buckets=_RUN_BUCKETS,
            registry=registry,
        )
        self.detections = Counter(
            "cityops_scene_detections_written",
            "Detections written (opened, continued or cleared) by partition runs, by scene.",
            ["scene"],
            registry=registry,
        )
        self.cases_opened = Counter(
            "cityops_scene_cases_opened",
            "Cases opened by the scenes, by scene.",
            ["scene"],
            registry=registry,
        )
        self.cases_verified = Counter(
            "cityops_scene_cases_verified",
            "Disposed cases closed by sensor verification, by scene.",
            ["scene"],
            registry=registry,
        )

    def observe(self, results: list[PartitionResult]) -> None:
        """Count one pass of partition runs."""
        for r in results:
            self.run_seconds.labels(r.scene).observe(r.seconds)
            self.detections.labels(r.scene).inc(r.detections)
            self.cases_opened.labels(r.scene).inc(r.cases_opened)
            self.cases_verified.labels(r.scene).inc(r.cases_verified)


#: (name, help, labels, query): each family of the city's state, one query each; the query's
#: columns are the labels in order, then the value.
_FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    (
        "cityops_devices",
        "Registered devices by type, district and state (offline: an active sensor_offline "
        "detection).",
        ("type", "district", "state"),
        f"select dd.type, dd.district, case when {OFFLINE} then 'offline' else 'online' end, "
        "count(*) from device_districts dd group by 1, 2, 3",
    ),
    (
        "cityops_detections_active",
        "Active (not cleared) detections by scene and kind.",
        ("scene", "kind"),
        "select scene, kind, count(*) from detections where cleared_at is null group by 1, 2",
    ),
    (
        "cityops_cases_open",
        "Open cases (not closed nor cancelled) by category, district and severity.",
        ("category", "district", "severity"),
        "select category, coalesce(district_id, ''), severity, count(*) from cases "
        f"where {OPEN_CASE} group by 1, 2, 3",
    ),
    (
        "cityops_cases_overdue",
        "Open cases past their deadline by category, district and severity.",
        ("category", "district", "severity"),
        "select category, coalesce(district_id, ''), severity, count(*) from cases "
        f"where {OPEN_CASE} and deadline < now() group by 1, 2, 3",
    ),
    (
        "cityops_scene_watermark_age_seconds",
        "Seconds since each partition (scene, district) last finished a run.",
        ("scene", "district"),
        # the clock, not now(): a run may commit after this scrape's transaction began
        "select scene, district, greatest(0, extract(epoch from clock_timestamp() - updated_at)) "
        "from scene_watermarks",
    ),
    (
        "cityops_lighting_rate_ratio",
        "The last stored lighting night's lighting rate per district: lamp-time lit while the "
        "plan wanted it lit, of the time observed.",
        ("district",),
        f"select district, {LIGHTING_RATE} from lighting_nights "
        "where night = (select max(night) from lighting_nights) group by 1 "
        "having sum(expected_s) > 0",
    ),
    (
        "cityops_road_coverage_ratio",
        "The last judged sweeping night's coverage per district: the planned length swept.",
        ("district",),
        f"select n.district, {ROAD_COVERAGE} from {ROAD_NIGHTS} "
        "where n.night = (select max(night) from road_nights) and n.required > 0 "
        "group by 1 having sum(s.length_m) > 0",
    ),
)


class CityState(Collector):
    """The city's state, read from the database when Prometheus scrapes."""

    def __init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect

    def collect(self) -> Iterator[Metric]:
        """Every family of ``_FAMILIES``, and whether the database answered."""
        up = GaugeMetricFamily(
            "cityops_city_state_up", "Whether the last scrape could read the city's state."
        )
        try:
            with self._connect() as conn:
                families = [self._family(conn, *family) for family in _FAMILIES]
        except psycopg.Error as exc:
            logger.warning("metrics: the city's state could not be read: %s", error_line(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    @staticmethod
    def _family(
        conn: psycopg.Connection, name: str, doc: str, labels: tuple[str, ...], query: str
    ) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        for *values, value in conn.execute(query).fetchall():
            family.add_metric([str(v) for v in values], float(value))
        return family
