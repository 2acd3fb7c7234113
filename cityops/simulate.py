"""``cityops sim``: generate a city, run its fleet over MQTT with injected faults, abuse ingest."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
import typer
from paho.mqtt.enums import MQTTProtocolVersion

import roadmaps
from cityops.terminal import ConfigOption, fail, out, settings_from, stop_on_signals
from devices.changes import registrations
from ingest.decode import DecodeLimits, Decoder
from ingest.settings import IngestSettings
from ingest.writer import BatchWriter, Message
from simulator.city import CitySpec, generate, read_bundle, write_bundle
from simulator.connections import LinkError, read_logins
from simulator.fleet import Publication, Run, RunOptions, simulate
from simulator.publish import (
    ABUSE_KINDS,
    PublishError,
    PublishOptions,
    abuse_messages,
    publish,
)
from simulator.scenario import Scenario, ScenarioError, load_scenario
from wire.mqtt import BrokerUnavailableError, MqttSettings, choose_protocol

#: ``store_run`` stores a batch (a transaction) of at most this many messages, received within
#: at most this span of simulated time: a device's messages of one batch are as many as a live
#: ingest flush could hold (the health scene counts them to tell a flooding device).
_STORE_BATCH = 5000
_STORE_SPAN_US = 300_000_000


def store_run(
    conn: psycopg.Connection,
    publications: Sequence[Publication],
    devices: Iterable[Mapping[str, Any]],
) -> int:
    """Store a simulated run's messages as ingest would, without a broker; the readings stored.

    Each message is decoded against ``devices`` (records with device_id, type, gateway_id) and
    written, change feed included, by ingest's own ``BatchWriter``, received at its own
    simulated time, in committed batches (for benchmarks and tests that need days of a fleet
    in minutes).
    """
    limits = DecodeLimits.of(IngestSettings())
    decoder = Decoder(limits=limits, registration_of=registrations(devices).get)
    writer = BatchWriter(conn, raw_max_bytes=limits.max_payload_bytes, last_seen_resolution_s=10.0)
    stored = 0
    batch: list[Message] = []
    for pub in publications:
        if batch and (
            len(batch) == _STORE_BATCH or pub.t * 1e6 - batch[0].received_us > _STORE_SPAN_US
        ):
            stored += sum(writer.write(batch).inserted.values())
            conn.commit()
            batch = []
        received_us = int(pub.t * 1e6)
        decoded = decoder.decode_message(pub.topic, pub.payload, received_us)
        batch.append(Message(len(batch) + 1, 0, pub.topic, pub.payload, received_us, decoded))
    if batch:
        stored += sum(writer.write(batch).inserted.values())
        conn.commit()
    return stored


sim_app = typer.Typer(
    help="The simulated fleet: city generator, device behaviour, abuse.", no_args_is_help=True
)


@sim_app.command("city")
def city(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the bundle.", file_okay=False)],
    seed: Annotated[int, typer.Option(help="Same seed, same city.")] = 1,
    districts: Annotated[int, typer.Option(min=1, max=99)] = 1,
    covers: Annotated[int, typer.Option(min=0, help="Manhole covers, each with a sensor.")] = 200,
    lamps: Annotated[int, typer.Option(min=0, help="Street lamps, 40 to a cabinet.")] = 120,
    sweepers: Annotated[int, typer.Option(min=0, help="Sweepers per district.")] = 2,
    roads: Annotated[
        Path | None,
        typer.Option(
            help="Real streets instead of a lattice: GeoJSON lines or an OpenStreetMap extract "
            "(.osm, .osm.pbf); districts are laid over their extent.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Generate a deterministic city bundle that `cityops city import` takes as it is."""
    started = time.perf_counter()
    spec = CitySpec(
        seed=seed, districts=districts, covers=covers, lamps=lamps, sweepers_per_district=sweepers
    )
    try:
        lines = roadmaps.read(roads) if roads else None
    except roadmaps.RoadFileError as exc:
        fail(str(exc), 2)
    counts = write_bundle(generate(spec, lines), out_dir)
    summary = ", ".join(f"{n} {part}" for part, n in counts.items())
    out.print(f"{out_dir}: {summary} ({time.perf_counter() - started:.1f} s)", highlight=False)


def run_fleet(
    bundle: Path, scenario: Path | None, *, start: float, duration_s: float, seed: int
) -> Run:
    """Simulate a bundle's fleet over [start, start + duration)."""
    try:
        chosen = load_scenario(scenario) if scenario else Scenario()
    except ScenarioError as exc:
        fail(str(exc), 2)
    options = RunOptions(start=start, duration_s=duration_s, seed=seed)
    return simulate(read_bundle(bundle), chosen, options)


def write_truth(run: Run, path: Path) -> None:
    """One JSON line per injected fault."""
    path.write_text("".join(f.truth_line() + "\n" for f in run.faults), encoding="utf-8")


def broker_protocol(mqtt: MqttSettings, protocol: str) -> Literal["5", "3.1.1"]:
    """The MQTT version to publish with: as given, or what the broker speaks for "auto"."""
    if protocol in ("5", "3.1.1"):
        return "5" if protocol == "5" else "3.1.1"
    if protocol != "auto":
        fail(f"--protocol must be auto, 5 or 3.1.1, not {protocol!r}", 2)
    try:
        spoken, _ = choose_protocol(mqtt)
    except BrokerUnavailableError as exc:
        fail(str(exc))
    return "5" if spoken == MQTTProtocolVersion.MQTTv5 else "3.1.1"


@sim_app.command("run")
def run(
    bundle: Annotated[
        Path,
        typer.Option(
            "--city", help="A bundle from `cityops sim city`.", exists=True, file_okay=False
        ),
    ],
    scenario: Annotated[
        Path | None, typer.Option(help="Faults to inject (TOML).", exists=True, dir_okay=False)
    ] = None,
    duration: Annotated[float, typer.Option(help="Simulated minutes.", min=0.1)] = 60.0,
    start: Annotated[
        str | None,
        typer.Option(
            help="Simulated start, RFC 3339; default: so the run ends now (timestamps stay past)."
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(help="Simulated seconds per second; 0 publishes flat out.", min=0)
    ] = 60.0,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Publish at this many messages/s instead, ignoring simulated time.", min=1
        ),
    ] = None,
    qos: Annotated[int, typer.Option(min=0, max=1)] = 1,
    protocol: Annotated[str, typer.Option(help="MQTT version: auto, 5 or 3.1.1.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of device behaviour and fault choice.")] = 1,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Ground-truth JSON Lines (default: <city>/ground_truth.jsonl).", dir_okay=False
        ),
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            help="Each device on its own connection with its own login: the passwords CSV or "
            "the certificates directory of `cityops devices credentials issue --out` (a broker "
            "that enforces identity, docs/security.md; mqtt.url is the devices' listener).",
            exists=True,
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Publish the fleet's messages to mqtt.url under mqtt.topic_prefix; write the ground truth."""
    settings = settings_from(config)
    logins = None
    if credentials is not None:
        try:
            logins = read_logins(credentials)
        except LinkError as exc:
            fail(str(exc))
    # a broker that enforces identity refuses the anonymous probe: MQTT 5 unless told otherwise
    version = "5" if logins and protocol == "auto" else broker_protocol(settings.mqtt, protocol)
    duration_s = duration * 60
    begin = datetime.fromisoformat(start).timestamp() if start else time.time() - duration_s
    fleet = run_fleet(bundle, scenario, start=begin, duration_s=duration_s, seed=seed)
    truth_path = truth or bundle / "ground_truth.jsonl"
    write_truth(fleet, truth_path)
    out.print(
        f"{len(fleet.publications)} messages, {len(fleet.faults)} faults "
        f"(ground truth: {truth_path})",
        highlight=False,
    )
    options = PublishOptions(
        url=settings.mqtt.url,
        protocol=version,
        qos=1 if qos else 0,
        speed=speed,
        rate=rate,
        topic_prefix=settings.mqtt.topic_prefix,
        tls=settings.mqtt.tls,
        logins=logins,
    )
    try:
        report = publish(fleet.publications, options, stop_on_signals())
    except PublishError as exc:
        fail(str(exc))
    out.print(
        f"published {report.messages} messages in {report.seconds:.1f} s "
        f"({report.rate:.0f} msgs/s)",
        highlight=False,
    )
    typer.echo(
        json.dumps(
            {
                "messages": report.messages,
                "seconds": round(report.seconds, 3),
                "msgs_per_s": round(report.rate, 1),
                "faults": len(fleet.faults),
            }
        )
    )


@sim_app.command("abuse")
def abuse(
    bundle: Annotated[
        Path, typer.Option("--city", help="The imported city bundle.", exists=True, file_okay=False)
    ],
    kinds: Annotated[
        str, typer.Option(help=f"Comma-separated, or 'all': {', '.join(ABUSE_KINDS)}.")
    ] = "all",
    count: Annotated[int, typer.Option(min=1, help="Messages of each kind.")] = 1,
    protocol: Annotated[str, typer.Option(help="MQTT version: auto, 5 or 3.1.1.")] = "auto",
    config: ConfigOption = None,
) -> None:
    """Publish bad input; print (as JSON) the quarantine reasons and duplicates it must cause."""
    settings = settings_from(config)
    version = broker_protocol(settings.mqtt, protocol)
    chosen = list(ABUSE_KINDS) if kinds == "all" else [k.strip() for k in kinds.split(",")]
    try:
        batch = abuse_messages(
            read_bundle(bundle),
            chosen,
            count,
            int(time.time() * 1000),
            max_payload_bytes=settings.ingest.max_payload_bytes,
        )
    except ValueError as exc:
        fail(str(exc), 2)
    publications = [Publication(0.0, topic, payload) for topic, payload in batch.messages]
    options = PublishOptions(
        url=settings.mqtt.url,
        protocol=version,
        speed=0,
        topic_prefix=settings.mqtt.topic_prefix,
        tls=settings.mqtt.tls,
    )
    try:
        publish(publications, options, threading.Event())
    except PublishError as exc:
        fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "messages": len(publications),
                "quarantine": dict(batch.quarantine),
                "duplicates": batch.duplicates,
            }
        )
    )
