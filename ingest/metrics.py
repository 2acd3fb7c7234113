"""Prometheus metrics of the ingest worker, built against an injectable registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingest.writer import WriteResult

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
_ROWS_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000)


class IngestMetrics:
    """Every metric the ingest worker exports; counters are updated once per committed batch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "cityops_ingest_messages",
            "Messages committed, by device type and result (stored, partial, quarantined; "
            "ignored: what cityops publishes itself on cityops/v1/out/..., device type out).",
            ["device_type", "result"],
            registry=registry,
        )
        self.rows = Counter(
            "cityops_ingest_rows",
            "Readings written, by kind and result (inserted, duplicate).",
            ["kind", "result"],
            registry=registry,
        )
        self.quarantined = Counter(
            "cityops_ingest_quarantined",
            "Quarantine entries, by reason.",
            ["reason"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "cityops_ingest_batch_messages",
            "Messages per committed batch.",
            buckets=_ROWS_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "cityops_ingest_commit_seconds",
            "Time to write and commit one batch.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "cityops_ingest_lag_seconds",
            "Device time of the newest reading in a batch to its commit.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.buffered = Gauge(
            "cityops_ingest_buffered_messages",
            "Messages received and not yet acknowledged.",
            registry=registry,
        )
        self.database_up = Gauge(
            "cityops_ingest_database_up",
            "1 while the database accepts writes, 0 while ingest is retrying.",
            registry=registry,
        )
        self.database_errors = Counter(
            "cityops_ingest_database_errors",
            "Failed write attempts, by kind (unreachable; refused: privileges, schema, read-only; "
            "failed: a fault in ingest itself); each is retried, nothing is acknowledged before "
            "commit.",
            ["kind"],
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "cityops_ingest_mqtt_connected", "1 while connected to the broker.", registry=registry
        )
        self.mqtt_connections = Counter(
            "cityops_ingest_mqtt_connections",
            "Successful connections to the broker (more than one: it dropped or refused us).",
            registry=registry,
        )
        self.mqtt_protocol = Gauge(
            "cityops_ingest_mqtt_protocol_info",
            "The MQTT version in use, and how it was chosen: configured, negotiated, or "
            "fallback (the broker refused MQTT 5: no receive window, no shared group).",
            ["version", "chosen"],
            registry=registry,
        )
        self.registry_rows_read = Counter(
            "cityops_ingest_registry_rows_read",
            "Device rows read to refresh the device map: the whole registry the first time, then "
            "only devices registered, retyped or deleted since the previous refresh.",
            registry=registry,
        )
        self.housekeeping_rounds = Counter(
            "cityops_ingest_housekeeping_rounds",
            "Housekeeping rounds by task (registry, partitions) and result: done, skipped (another "
            "worker maintains the partitions, or the TimescaleDB path, whose policies do), failed "
            "(tried again in the next round; ingest goes on meanwhile).",
            ["task", "result"],
            registry=registry,
        )

    def record_commit(
        self, batch_size: int, result: WriteResult, commit_s: float, now_us: int
    ) -> None:
        """Count one committed batch."""
        for (device_type, outcome), count in result.messages.items():
            self.messages.labels(device_type, outcome).inc(count)
        for kind, count in result.inserted.items():
            self.rows.labels(kind, "inserted").inc(count)
        for kind, count in result.duplicates.items():
            self.rows.labels(kind, "duplicate").inc(count)
        for reason, count in result.quarantined.items():
            self.quarantined.labels(reason).inc(count)
        self.batch_rows.observe(batch_size)
        self.commit_seconds.observe(commit_s)
        if result.newest_us:
            self.lag_seconds.observe(max(0.0, (now_us - result.newest_us) / 1e6))
