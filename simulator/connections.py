"""Each simulated device on a connection of its own, with its own login: as a real fleet connects.

``read_logins`` takes what ``cityops devices credentials issue --out`` wrote: a CSV file of
passwords (``username,password,not_after``) or a directory of certificates (``<id>.crt`` and
``<id>.key``). ``DeviceLinks`` opens one MQTT client per device (client id = device id) and
serves all of them from one thread: paho's external loop over a selector, since a thread per
device does not scale to a city (bench/ingest.py reconnects 10,000 at once).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from wire.mqtt import BrokerAddress, TlsFiles

logger = logging.getLogger(__name__)
_MISC_EVERY_S = 1.0  # keep-alive pings and retries: paho's loop_misc, for every client


class LinkError(Exception):
    """Logins cannot be read, or devices could not connect."""


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    """How one device logs in: a password, or a client certificate and key."""

    username: str
    password: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def read_logins(path: Path) -> dict[str, DeviceLogin]:
    """The logins in a password CSV file or a certificate directory, by device id."""
    if path.is_dir():
        certificates = sorted(path.glob("*.crt"))
        missing = [crt.stem for crt in certificates if not crt.with_suffix(".key").exists()]
        if missing:
            msg = f"{path}: no key beside the certificates of {', '.join(missing[:5])}"
            raise LinkError(msg)
        logins = {
            crt.stem: DeviceLogin(crt.stem, cert_file=crt, key_file=crt.with_suffix(".key"))
            for crt in certificates
        }
    else:
        try:
            with path.open(encoding="utf-8", newline="") as file:
                rows = list(csv.DictReader(file))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            msg = f"cannot read logins from {path}: {exc}"
            raise LinkError(msg) from None
        logins = {}
        for line, row in enumerate(rows, start=2):
            username, password = row.get("username"), row.get("password")
            if not isinstance(username, str) or not username or not isinstance(password, str):
                msg = (
                    f"{path}, line {line}: expected username,password "
                    "(the file `cityops devices credentials issue --out` writes)"
                )
                raise LinkError(msg)
            logins[username] = DeviceLogin(username, password=password)
    if not logins:
        msg = f"{path} holds no logins"
        raise LinkError(msg)
    return logins


@dataclass(frozen=True, slots=True)
class _Link:
    """A device's client, and the lock that makes its calls from two threads one at a time.

    paho's external loop is not safe across threads: a publish on the caller's thread asks for
    write interest while the serving thread, its queue just written out, gives it up, and the
    message then waits for good. Each call into a client holds its lock.
    """

    client: mqtt.Client
    lock: threading.Lock


class DeviceLinks:
    """One MQTT connection per device, all served by one thread."""

    def __init__(
        self,
        url: str,
        logins: Mapping[str, DeviceLogin],
        *,
        ca_file: Path | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        keepalive_s: int = 60,
    ) -> None:
        self._address = BrokerAddress.of(url)
        self._logins = logins
        self._ca_file = ca_file
        self._protocol = protocol
        self._keepalive_s = keepalive_s
        self._selector = selectors.DefaultSelector()
        # registered for good, so the serving thread always has something to wait on
        self._wake, self._waker = socket.socketpair()
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()  # the selector's registrations, from any thread
        self._closed = threading.Condition(self._lock)  # a socket left the selector
        self._links: dict[str, _Link] = {}
        self._answers: dict[str, Any] = {}  # device id: its CONNACK reason
        self._answered = threading.Condition()
        self._stop = threading.Event()
        self._closing = False
        self._lost: dict[str, str] = {}  # device id: why its connection ended
        self._thread = threading.Thread(target=self._serve, name="device-links", daemon=True)
        self._thread.start()

    def _link(self, device_id: str) -> _Link:
        login = self._logins[device_id]
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=self._protocol
        )
        if login.password is not None:
            client.username_pw_set(login.username, login.password)
        if self._address.is_tls:
            tls = TlsFiles(self._ca_file, login.cert_file, login.key_file)
            client.tls_set_context(tls.context())
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        link = _Link(client, threading.Lock())
        client.on_connect = lambda _c, _u, _f, rc, _p: self._answer(device_id, rc)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._on_lost(device_id, rc)
        client.on_socket_open = lambda _c, _u, sock: self._watch(sock, link, write=False)
        client.on_socket_close = lambda _c, _u, sock: self._unwatch(sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._watch(sock, link, True)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._watch(sock, link, False)
        return link

    def _watch(self, sock: Any, link: _Link, write: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        with self._lock:
            try:
                self._selector.modify(sock, events, link)
            except KeyError:
                self._selector.register(sock, events, link)

    def _unwatch(self, sock: Any) -> None:
        with self._lock:
            with contextlib.suppress(KeyError, ValueError):  # closed twice, or never watched
                self._selector.unregister(sock)
            self._closed.notify_all()

    def _answer(self, device_id: str, reason: Any) -> None:
        with self._answered:
            self._answers[device_id] = reason
            self._answered.notify_all()

    def _on_lost(self, device_id: str, reason: Any) -> None:
        if not self._stop.is_set() and not self._closing:
            logger.warning("device %s lost its connection: %s", device_id, reason)
            self._lost.setdefault(device_id, str(reason))

    def lost(self) -> str | None:
        """Why a device's connection ended, if one did (links are not opened again)."""
        for device_id, reason in list(self._lost.items())[:1]:
            return f"device {device_id} lost its connection to the broker: {reason}"
        return None

    def _serve(self) -> None:
        next_misc = time.monotonic() + _MISC_EVERY_S
        while not self._stop.is_set():
            for key, mask in self._selector.select(timeout=_MISC_EVERY_S):
                link: _Link | None = key.data
                if link is None:  # woken to stop
                    continue
                with link.lock:
                    if mask & selectors.EVENT_READ:
                        link.client.loop_read()
                        # TLS may have decrypted more than it was asked for: the socket shows no
                        # data that its SSL object already holds (paho's own loop checks too)
                        sock = key.fileobj
                        while isinstance(sock, ssl.SSLSocket) and sock.pending():
                            link.client.loop_read()
                    if mask & selectors.EVENT_WRITE:
                        link.client.loop_write()
            if time.monotonic() >= next_misc:
                for link in list(self._links.values()):
                    with link.lock:
                        link.client.loop_misc()
                next_misc = time.monotonic() + _MISC_EVERY_S

    def open(
        self, device_ids: Iterable[str], *, timeout_s: float = 60.0, connectors: int = 4
    ) -> float:
        """Connect these devices (``connectors`` handshakes at a time) until each is answered.

        Returns the seconds it took until the last CONNACK; raises ``LinkError`` naming the
        devices the broker refused or that got no answer in ``timeout_s``.
        """
        wanted = [d for d in dict.fromkeys(device_ids) if d not in self._links]
        unknown = [d for d in wanted if d not in self._logins]
        if unknown:
            msg = f"no login for {len(unknown)} devices, e.g. {', '.join(unknown[:5])}"
            raise LinkError(msg)
        started = time.monotonic()
        for device_id in wanted:
            self._links[device_id] = self._link(device_id)
        with self._answered:
            # the devices are new: their first answers are what the count grows by (a count,
            # not a scan: 10,000 answers would each rescan 10,000 devices)
            expected = len(self._answers) + len(wanted)

        def connect(device_id: str) -> str | None:
            link = self._links[device_id]
            try:
                with link.lock:
                    link.client.connect(self._address.host, self._address.port, self._keepalive_s)
            except OSError as exc:
                return f"{device_id}: {exc}"
            return None

        with ThreadPoolExecutor(max_workers=connectors) as pool:
            failures = [f for f in pool.map(connect, wanted) if f is not None]
        if failures:
            msg = f"{len(failures)} devices could not connect, e.g. {failures[0]}"
            raise LinkError(msg)
        deadline = started + timeout_s
        with self._answered:
            while len(self._answers) < expected:
                left = deadline - time.monotonic()
                if left <= 0 or not self._answered.wait(left):
                    break
            elapsed = time.monotonic() - started
            refused = [d for d in wanted if getattr(self._answers.get(d), "is_failure", True)]
        if refused:
            first = self._answers.get(refused[0], "no answer")
            msg = (
                f"the broker refused or did not answer {len(refused)} devices, "
                f"e.g. {refused[0]} ({first})"
            )
            raise LinkError(msg)
        return elapsed

    def is_connected(self, device_id: str) -> bool:
        """Whether ``device_id``'s connection is up (a lost one is not opened again)."""
        return self._links[device_id].client.is_connected()

    def publish(
        self, device_id: str, topic: str, payload: bytes, *, qos: int, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Publish on ``device_id``'s own connection (``LinkError`` once it has ended)."""
        if device_id in self._lost:
            msg = f"device {device_id} lost its connection to the broker: {self._lost[device_id]}"
            raise LinkError(msg)
        link = self._links[device_id]
        with link.lock:
            return link.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect every device (each DISCONNECT sent), then stop the thread."""
        self._closing = True
        for link in self._links.values():
            with link.lock:
                link.client.disconnect()
        with self._closed:
            self._closed.wait_for(lambda: len(self._selector.get_map()) <= 1, timeout_s)
        self._stop.set()
        self._waker.send(b"x")
        self._thread.join(timeout=timeout_s)
        self._selector.close()
        self._wake.close()
        self._waker.close()
