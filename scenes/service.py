"""``cityops scenes run``: the scene engine and the outbound publisher as one asyncio service.

Four tasks share one event loop:

- listen: an async connection LISTENs on ``SCENES_CHANNEL`` (ingest committed an alarm) and
  ``OUTBOUND_CHANNEL`` (a detection or case changed) and wakes the other two;
- partitions: runs every partition this process can claim (``engine.run_once``) at once when
  woken, at the earliest deadline, and every ``scenes.interval_s``. A partition run is
  synchronous work on a connection of its own in a worker thread: it opens cases through
  ``cases.service``, which the case API and the CLI share; then, on the plain PostgreSQL path,
  it brings the hourly rollups up to date (``store.rollups``);
- models: every ``scenes.anomaly_interval_s`` (an hour), just after the hour mark, the models'
  scene (``engine.ANOMALIES``) scores the devices' latest windows on a connection and worker
  thread of its own, so the rule scenes' alarms never wait for it;
- publish: publishes the outbound queue with aiomqtt (``scenes.outbound``) while this process
  holds the publisher lock; another process takes over within ``_CLAIM_EVERY_S`` of its death.

A database or broker outage is logged (one line) and retried with backoff, task by task: the
scenes keep running while the broker is away, and what changed meanwhile is published when it
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Final

import aiomqtt
import psycopg
from psycopg import sql

from cases.catalog import Catalog
from redaction import error_line, redact
from scenes.engine import ANOMALIES, next_run_in, partitions, run_once
from scenes.metrics import ScenesMetrics
from scenes.outbound import PASS_ROWS, PUBLISHER_LOCK, publish_pending
from scenes.settings import ScenesSettings
from store import db, rollups
from store.db import OUTBOUND_CHANNEL, SCENES_CHANNEL
from store.settings import DatabaseSettings
from wire.mqtt import MqttSettings

_RETRY_MAX_S: Final = 5.0
#: How often a process that does not publish tries to take the publisher lock over.
_CLAIM_EVERY_S: Final = 1.0
#: How long after an hour mark the models score the windows ending at it (late readings).
_SETTLE_S: Final = 60.0

logger = logging.getLogger(__name__)


def serve(
    database: DatabaseSettings,
    mqtt: MqttSettings,
    settings: ScenesSettings,
    catalog: Catalog,
    stop: threading.Event,
    *,
    clock: Callable[[], float] | None = None,
    metrics: ScenesMetrics | None = None,
) -> None:
    """Run the service until ``stop`` is set (by a signal handler, or the demo).

    The scenes judge at ``clock()`` (epoch seconds; default wall time): the demo, replaying a
    past hour many times faster, passes the time of the newest reading it stored, so a device is
    offline when the replay says so, not because last night is long ago. ``clock`` is called
    in the worker thread of each partition run. A failure no task retries (not an outage: a
    schema that is missing, say) ends the service, raised as itself. ``metrics`` counts the
    partition runs.
    """
    service = _Service(database, mqtt, settings, catalog, stop, clock=clock, metrics=metrics)
    asyncio.run(service.run())


class _Service:
    def __init__(
        self,
        database: DatabaseSettings,
        mqtt: MqttSettings,
        settings: ScenesSettings,
        catalog: Catalog,
        stop: threading.Event,
        *,
        clock: Callable[[], float] | None,
        metrics: ScenesMetrics | None,
    ) -> None:
        self.database = database
        self.mqtt = mqtt
        self.settings = settings
        self.catalog = catalog
        self.stop = stop
        self.clock = clock
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self.failure: Exception | None = None  # what ended the service, if not a stop
        self.wake = asyncio.Event()  # run the partitions now
        self.outbound = asyncio.Event()  # publish now

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def relay_stop() -> None:
            self.stop.wait()
            with contextlib.suppress(RuntimeError):  # the loop ended first, on an error
                loop.call_soon_threadsafe(self.stopping.set)

        # a daemon: it may outlive the loop when the service ends on an error
        threading.Thread(target=relay_stop, name="scenes-stop", daemon=True).start()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._retrying("listening", self._listen, psycopg.OperationalError))
            tasks.create_task(
                self._retrying("the scenes", self._partitions, psycopg.OperationalError)
            )
            tasks.create_task(
                self._retrying("the models", self._anomalies, psycopg.OperationalError)
            )
            tasks.create_task(
                self._retrying(
                    f"publishing to {redact(self.mqtt.url)}",
                    self._publish,
                    (psycopg.OperationalError, aiomqtt.MqttError),
                )
            )
        if self.failure is not None:
            raise self.failure

    async def _retrying(
        self,
        what: str,
        body: Callable[[], Awaitable[None]],
        outages: type[Exception] | tuple[type[Exception], ...],
    ) -> None:
        """Run ``body`` until stopping; an outage it raises is logged and retried, with backoff.

        Any other failure stops the service: the other tasks end as on a stop, and ``run``
        raises it.
        """
        delay_s = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await body()
            except outages as exc:
                if time.monotonic() - started > _RETRY_MAX_S:
                    delay_s = 0.5  # it ran a while: a new outage
                logger.warning("%s stopped: %s; retrying in %.1f s", what, error_line(exc), delay_s)
                await self._until(delay_s)
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
            except Exception as exc:  # not an outage: the others stop cleanly, then it is raised
                self.failure = self.failure or exc
                self.stopping.set()
                return

    async def _until(self, timeout_s: float, *events: asyncio.Event) -> None:
        """Wait ``timeout_s``, or less if stopping or one of ``events`` is set."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self.stopping, *events)]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _listen(self) -> None:
        async with await db.connect_async(self.database, autocommit=True) as conn:
            for channel in (SCENES_CHANNEL, OUTBOUND_CHANNEL):
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
            self.wake.set()  # whatever came while nobody listened
            self.outbound.set()
            while not self.stopping.is_set():
                async for notice in conn.notifies(timeout=1.0):
                    (self.wake if notice.channel == SCENES_CHANNEL else self.outbound).set()

    async def _partitions(self) -> None:
        conn = await asyncio.to_thread(db.connect, self.database)
        try:
            count = len(await asyncio.to_thread(partitions, conn))
            conn.commit()
            logger.info("scenes: %d partitions, claimed as they are free", count)
            while not self.stopping.is_set():
                self.wake.clear()
                wait_s = await asyncio.to_thread(self._run_partitions, conn)
                await self._until(wait_s, self.wake)
        finally:
            await asyncio.to_thread(conn.close)

    def _run_partitions(self, conn: psycopg.Connection) -> float:
        """Run the partitions once (in a worker thread); the seconds until the next run."""
        now = None if self.clock is None else self.clock()
        results = run_once(conn, self.settings, self.catalog, now=now, stop=self.stop)
        if self.metrics is not None:
            self.metrics.observe(results)
        rollups.refresh(conn)
        now = None if self.clock is None else self.clock()
        return next_run_in(conn, self.settings.interval_s, now=now)

    async def _anomalies(self) -> None:
        conn = await asyncio.to_thread(db.connect, self.database)
        try:
            while not self.stopping.is_set():
                await asyncio.to_thread(self._score, conn)
                every_s = self.settings.anomaly_interval_s
                await self._until(every_s - time.time() % every_s + _SETTLE_S)
        finally:
            await asyncio.to_thread(conn.close)

    def _score(self, conn: psycopg.Connection) -> None:
        """Score the devices' windows with the active models (in a worker thread)."""
        rollups.refresh(conn)  # the models read the hourly rollups
        now = None if self.clock is None else self.clock()
        results = run_once(
            conn, self.settings, self.catalog, now=now, scenes=(ANOMALIES,), stop=self.stop
        )
        if self.metrics is not None:
            self.metrics.observe(results)

    async def _publish(self) -> None:
        async with await db.connect_async(self.database, autocommit=True) as conn:
            while not self.stopping.is_set():
                cur = await conn.execute("select pg_try_advisory_lock(%s)", (PUBLISHER_LOCK,))
                row = await cur.fetchone()
                if row and row[0]:
                    break
                await self._until(_CLAIM_EVERY_S)  # another process publishes
            else:
                return
            async with self._client() as client:
                logger.info("publishing detections and cases to %s", redact(self.mqtt.url))
                while not self.stopping.is_set():
                    self.outbound.clear()
                    read = await publish_pending(conn, client, self.mqtt.topic_prefix)
                    if read < PASS_ROWS:
                        await self._until(self.settings.interval_s, self.outbound)

    def _client(self) -> aiomqtt.Client:
        address = self.mqtt.address
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            # retained QoS 1 messages need nothing of MQTT 5
            protocol=aiomqtt.ProtocolVersion.V5
            if self.mqtt.protocol == "5"
            else aiomqtt.ProtocolVersion.V311,
            timeout=self.mqtt.connect_timeout_s,
            keepalive=self.mqtt.keepalive_s,
            tls_context=tls.context() if (tls := self.mqtt.tls) is not None else None,
        )
