"""An ingest worker's housekeeping, off the write path: registry refresh and partition upkeep.

It runs on a thread and a database connection of its own, so that neither holds up the writer:
every ``ingest.registry_refresh_s`` it reads the registry's changes into the device map the
decoder uses (``Registrations``); at start and then hourly, on the plain PostgreSQL path, it
creates the readings tables' partitions ahead and drops the expired ones (store/partitions.py),
and deletes the hourly rollups' expired rows (store/rollups.py); TimescaleDB's own policies do
that on the other path. Rounds are counted by task and result
(``cityops_ingest_housekeeping_rounds_total``); a failed one is logged and tried again in the
next round, and never stops ingest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import psycopg

from ingest.metrics import IngestMetrics
from ingest.registrations import Registrations
from ingest.settings import IngestSettings
from redaction import error_line
from store import rollups
from store.db import StoragePath, connect, storage_path
from store.partitions import maintain
from store.settings import DatabaseSettings

logger = logging.getLogger(__name__)

# Partitions exist two weeks ahead (partitions.WEEKS_AHEAD) and expire a week at a time, so an
# hour between rounds costs nothing; it is also the longest a failed round waits for its retry.
_MAINTENANCE_EVERY_S = 3600.0


class Housekeeping:
    """Refreshes the device map and maintains partitions on its own thread until closed."""

    def __init__(
        self,
        *,
        database: DatabaseSettings,
        ingest: IngestSettings,
        registrations: Registrations,
        metrics: IngestMetrics,
    ) -> None:
        self._database = database
        self._refresh_s = ingest.registry_refresh_s
        self._registrations = registrations
        self._metrics = metrics
        self._conn: psycopg.Connection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-housekeeping", daemon=True)

    def start(self) -> None:
        """Start the rounds: partition maintenance at once, then the refreshes."""
        self._thread.start()

    def close(self) -> None:
        """Stop: cancel the statement under way (it may be waiting for a lock), then join."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            # Shutdown goes on whether or not the cancel request reaches the server.
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=5)
        self._thread.join()

    def _run(self) -> None:
        next_maintenance = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + _MAINTENANCE_EVERY_S
                    self._attempt("partitions", self._maintain_partitions)
                if self._stop.wait(self._refresh_s):
                    return
                self._attempt("registry", self._refresh_registry)
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _attempt(self, task: str, action: Callable[[psycopg.Connection], str]) -> None:
        """Run one task on the housekeeping connection; count its result, log a failure."""
        try:
            if self._conn is None:
                self._conn = connect(self._database, autocommit=True)
            result = action(self._conn)
        except Exception as exc:  # whatever fails here, ingest must go on
            if self._stop.is_set() and isinstance(exc, psycopg.errors.QueryCanceled):
                self._close_connection()  # cancelled by close(): no failure
                return
            self._metrics.housekeeping_rounds.labels(task, "failed").inc()
            logger.warning(
                "housekeeping: %s failed, trying again in the next round: %s",
                task,
                error_line(exc),
                exc_info=not isinstance(exc, psycopg.Error),  # a bug: keep its traceback
            )
            self._close_connection()  # a fresh one next round, whatever state this one is in
        else:
            self._metrics.housekeeping_rounds.labels(task, result).inc()

    def _refresh_registry(self, conn: psycopg.Connection) -> str:
        self._registrations.refresh(conn)
        return "done"

    def _maintain_partitions(self, conn: psycopg.Connection) -> str:
        if storage_path(conn) is not StoragePath.POSTGRESQL:
            return "skipped"
        retention_days = self._database.retention_days
        report = maintain(conn, retention_days=retention_days)
        if report is None:
            logger.info("partitions: another process is maintaining them; skipped this round")
            return "skipped"
        # by the process that maintains the partitions this round, once, as they expire
        expired_hours = rollups.expire(conn, retention_days=retention_days)
        if expired_hours:
            logger.info("rollups: %d expired hourly rows deleted", expired_hours)
        if report.created or report.dropped or report.expired_default_rows:
            logger.info(
                "partitions: created %s; dropped %s; %d expired readings deleted from the "
                "default partitions (retention %d days)",
                ", ".join(report.created) or "none",
                ", ".join(report.dropped) or "none",
                report.expired_default_rows,
                self._database.retention_days,
            )
        return "done"
