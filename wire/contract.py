"""The wire contract: reading types per device type, their ranges, and the tables they land in.

These msgspec types are the single source of truth: the decoder validates against them, the
COPY writer takes its column lists from them, and ``cityops contract`` publishes them as JSON
Schema for device vendors and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

#: Epoch milliseconds (1 Jan 2000 onwards) or an RFC 3339 string with an offset.
Timestamp = (
    Annotated[int, Meta(ge=946_684_800_000, le=32_503_680_000_000)]
    | Annotated[datetime, Meta(tz=True)]
)
#: Identifiers of devices and gateways on the wire, and of every registry entry (regions, units,
#: road segments): the one definition the decoder, the contract and the registry readers share.
ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
#: Short machine identifiers (event names, firmware versions).
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.+-]{1,32}$")]


class _Reading(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ts: Timestamp | None = None


class ManholeReading(_Reading):
    """A manhole-cover sensor reading (tilt, open switch, water level, battery, radio)."""

    tilt_deg: Annotated[float, Meta(ge=0, le=180)] | None = None
    cover_open: bool | None = None
    water_level_cm: Annotated[float, Meta(ge=-100, le=5000)] | None = None
    battery_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    rssi_dbm: Annotated[float, Meta(ge=-150, le=0)] | None = None
    temp_c: Annotated[float, Meta(ge=-60, le=100)] | None = None
    event: Token | None = None


class SweeperReading(_Reading):
    """A street-sweeper GPS fix with its working state; position is required."""

    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    speed_kmh: Annotated[float, Meta(ge=0, le=200)] | None = None
    heading_deg: Annotated[float, Meta(ge=0, le=360)] | None = None
    brush_on: bool | None = None
    spray_on: bool | None = None


class LightReading(_Reading):
    """A single-lamp controller report."""

    lamp_on: bool | None = None
    dim_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    voltage_v: Annotated[float, Meta(ge=0, le=500)] | None = None
    current_a: Annotated[float, Meta(ge=0, le=100)] | None = None
    power_w: Annotated[float, Meta(ge=0, le=10_000)] | None = None
    power_factor: Annotated[float, Meta(ge=0, le=1)] | None = None
    energy_kwh: Annotated[float, Meta(ge=0)] | None = None
    fault_code: Annotated[int, Meta(ge=0, le=65_535)] | None = None


class DeviceStatus(_Reading):
    """A device's own status (channel ``status``): connectivity and firmware."""

    online: bool | None = None
    firmware: Token | None = None


# eq=False: the kinds are the four constants below, compared and hashed by identity. They key
# dicts on the hot path, where a dataclass hash over the fields cost 0.3 us a lookup.
@dataclass(frozen=True, slots=True, eq=False)
class ReadingKind:
    """One stored kind of reading: its payload type and the table it lands in."""

    name: str
    struct: type[_Reading]
    table: str

    def __post_init__(self) -> None:
        # Keyword-only fields of a base class come last, so ts ends every reading struct; the
        # decoder relies on it to slice the values off msgspec.structs.astuple() in one step.
        if self.struct.__struct_fields__[-1] != "ts":
            msg = f"{self.struct.__name__}: ts must be the last field"
            raise TypeError(msg)

    @property
    def value_fields(self) -> tuple[str, ...]:
        """Payload fields stored as columns, in table order (after device_id and ts)."""
        fields: tuple[str, ...] = self.struct.__struct_fields__
        return fields[:-1]

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's columns in COPY order."""
        return ("device_id", "ts", *self.value_fields)


MANHOLE: Final = ReadingKind("manhole", ManholeReading, "manhole_readings")
SWEEPER: Final = ReadingKind("sweeper", SweeperReading, "sweeper_readings")
LIGHT: Final = ReadingKind("light", LightReading, "light_readings")
STATUS: Final = ReadingKind("status", DeviceStatus, "device_status")

#: Device types that publish telemetry, and the kind their telemetry and events decode to.
TELEMETRY_KINDS: Final[dict[str, ReadingKind]] = {k.name: k for k in (MANHOLE, SWEEPER, LIGHT)}
#: Every stored kind of reading.
READING_KINDS: Final[tuple[ReadingKind, ...]] = (MANHOLE, SWEEPER, LIGHT, STATUS)


class GatewayEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One entry of a gateway batch: a device's reading with its fields under ``values``.

    ``device_type`` is needed only for devices the registry does not know yet (auto-registration).
    """

    device_id: Annotated[str, Meta(pattern=ID_PATTERN)]
    device_type: str | None = None
    ts: Timestamp | None = None
    values: dict[str, Any]


def json_schema() -> dict[str, Any]:
    """The wire contract as JSON Schema (one definition per payload type)."""
    types = (ManholeReading, SweeperReading, LightReading, DeviceStatus, GatewayEntry)
    _, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cityops wire contract v1",
        "description": (
            "Topic cityops/v1/{device_type}/{device_id}/{telemetry|event|status}, payload one "
            "reading, a reading with its fields under 'values', or an array of readings; "
            "gateways publish arrays of GatewayEntry on cityops/v1/gateway/{gateway_id}/batch. "
            "ts is epoch milliseconds or RFC 3339 with offset; missing means receive time."
        ),
        "$defs": components,
    }
