"""Street lighting under FIWARE's names: lamps as Streetlights, cabinets as control cabinets.

The entities follow the Smart Data Models (dataModel.Streetlighting: Streetlight and
StreetlightControlCabinet) in their key-values form: a dict of attributes by their FIWARE
names, an attribute without a value left out. Ids are ``urn:ngsi-ld:Streetlight:<lamp code>``
and ``urn:ngsi-ld:StreetlightControlCabinet:<cabinet code>``. The models name no units; these
are the readings' own: W, A, V, and a power factor and an illuminance level between 0 and 1.

A streetlight is a component with a light controller bound to it (a device of type ``light``);
its readings are its controllers'. Its cabinet is the component whose gateway the lamp names as
its ``cabinet_id`` (a property of the lamp). A cabinet is a component with a gateway bound to it.

A lamp's ``status`` is what its active lighting detections say (``STATUS_OF``; ``ok`` when there
are none); of several, the fault furthest up the supply, which explains those below it: a column
issue, then a broken lantern, then a defective lamp. A cabinet or circuit outage is the cabinet's
detection: its lamps are off (``powerState``), not defective.

Who sees them: as the component dictionary (``scenes.dictionary``); a lamp or cabinet the caller
may not see is answered as one that does not exist.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import psycopg
from psycopg.rows import dict_row

from cases.access import OPERATOR, Caller
from scenes.dictionary import visible_component

Status = Literal["ok", "defectiveLamp", "columnIssue", "brokenLantern"]
PowerState = Literal["on", "off", "low", "bootingUp"]

#: The street-lighting scene, whose detections these are.
SCENE: Final = "lighting"
STREETLIGHT_URN: Final = "urn:ngsi-ld:Streetlight:"
CABINET_URN: Final = "urn:ngsi-ld:StreetlightControlCabinet:"
#: The lighting detections whose subject is a cabinet (the others' is a lamp).
CABINET_KINDS: Final = ("cabinet_outage", "circuit_outage")

#: The Streetlight status a lighting detection on a lamp gives it while it is active.
STATUS_OF: Final[dict[str, Status]] = {
    # the lamp itself: it gives no light, less light, or goes on and off
    "lamp_out": "defectiveLamp",
    "lamp_degraded": "defectiveLamp",
    "lamp_cycling": "defectiveLamp",
    # the lantern's control gear and controller: driver or ballast, relay, switching
    "control_gear_failure": "brokenLantern",
    "low_power_factor": "brokenLantern",
    "relay_failure": "brokenLantern",
    "day_burner": "brokenLantern",
    # the column: its supply and wiring
    "over_voltage": "columnIssue",
    "under_voltage": "columnIssue",
    "leakage": "columnIssue",
}
#: Of several active faults, the status shown: the one furthest up the supply.
_PRECEDENCE: Final[tuple[Status, ...]] = ("columnIssue", "brokenLantern", "defectiveLamp")


def status_sql(kind: str) -> str:
    """A SQL expression: the status ``STATUS_OF`` gives the kind in column ``kind``, else null."""
    whens = " ".join(f"when '{k}' then '{s}'" for k, s in STATUS_OF.items())
    return f"case {kind} {whens} end"


def power_state(lamp_on: bool | None, dim_pct: float | None) -> PowerState | None:
    """A reading's power state: off when unlit, low when lit and dimmed, else on; None unknown."""
    if lamp_on is None:
        return None
    if not lamp_on:
        return "off"
    return "low" if dim_pct is not None and dim_pct < 100 else "on"


def _point(asset: dict[str, Any]) -> dict[str, Any] | None:
    if asset["lat"] is None or asset["lon"] is None:
        return None
    return {"type": "Point", "coordinates": [asset["lon"], asset["lat"]]}


def _active_kinds(conn: psycopg.Connection, subject: str) -> list[str]:
    rows = conn.execute(
        "select distinct kind from detections where scene = %s and subject = %s "
        "and cleared_at is null order by kind",
        (SCENE, subject),
    ).fetchall()
    return [kind for (kind,) in rows]


def _bound(conn: psycopg.Connection, code: str, device_type: str) -> list[str]:
    """The devices of ``device_type`` bound to the component ``code``."""
    rows = conn.execute(
        "select device_id from devices where asset_code = %s and type = %s order by device_id",
        (code, device_type),
    ).fetchall()
    return [device_id for (device_id,) in rows]


def _entity(**attributes: Any) -> dict[str, Any]:
    return {name: value for name, value in attributes.items() if value is not None}


def streetlight(
    conn: psycopg.Connection, code_or_device: str, caller: Caller = OPERATOR
) -> dict[str, Any] | None:
    """The lamp ``code_or_device`` (its code, or its controller's id) as a FIWARE Streetlight.

    None if there is no such lamp or ``caller`` may not see it.
    """
    row = conn.execute(
        "select coalesce((select asset_code from devices where device_id = %s and type = 'light'"
        " and asset_code is not null), %s)",
        (code_or_device, code_or_device),
    ).fetchone()
    code = row[0] if row else code_or_device
    asset = visible_component(conn, code, caller)
    controllers = _bound(conn, code, "light")
    if asset is None or not controllers:
        return None
    properties = asset["properties"]
    cur = conn.cursor(row_factory=dict_row)
    latest: dict[str, Any] = (
        cur.execute(
            "select ts, lamp_on, dim_pct, voltage_v, current_a, power_w, power_factor "
            "from light_readings where device_id = any(%s) order by ts desc limit 1",
            (controllers,),
        ).fetchone()
        or {}
    )
    # the first lit reading after the last unlit one before the newest lit reading
    switching_on = conn.execute(
        "select min(ts) from light_readings where device_id = any(%(d)s) and lamp_on "
        "and ts > coalesce((select max(ts) from light_readings where device_id = any(%(d)s) "
        "and not lamp_on and ts < (select max(ts) from light_readings "
        "where device_id = any(%(d)s) and lamp_on)), '-infinity')",
        {"d": controllers},
    ).fetchone()
    cabinet = conn.execute(
        "select asset_code from devices where device_id = %s and type = 'gateway'",
        (properties.get("cabinet_id"),),
    ).fetchone()
    statuses = {STATUS_OF.get(kind) for kind in _active_kinds(conn, code)}
    circuit = properties.get("circuit")
    dim_pct = latest.get("dim_pct")
    return _entity(
        id=STREETLIGHT_URN + code,
        type="Streetlight",
        location=_point(asset),
        status=next((s for s in _PRECEDENCE if s in statuses), "ok"),
        powerState=power_state(latest.get("lamp_on"), dim_pct),
        refStreetlightControlCabinet=(
            CABINET_URN + cabinet[0] if cabinet and cabinet[0] is not None else None
        ),
        circuit=None if circuit is None else str(circuit),
        powerRating=properties.get("rated_power_w"),
        powerConsumption=latest.get("power_w"),
        current=latest.get("current_a"),
        voltage=latest.get("voltage_v"),
        powerFactor=latest.get("power_factor"),
        illuminanceLevel=None if dim_pct is None else dim_pct / 100,
        dateLastSwitchingOn=switching_on[0] if switching_on else None,
        dateModified=latest.get("ts"),
    )


def streetlight_cabinet(
    conn: psycopg.Connection, code: str, caller: Caller = OPERATOR
) -> dict[str, Any] | None:
    """The cabinet ``code`` as a FIWARE StreetlightControlCabinet.

    ``totalActivePower`` is the sum of its lamps' latest readings (W), ``dateModified`` the newest
    of them, ``annotations`` the kinds of its active lighting detections. None if there is no
    such cabinet or ``caller`` may not see it.
    """
    asset = visible_component(conn, code, caller)
    gateways = _bound(conn, code, "gateway")
    if asset is None or not gateways:
        return None
    power, modified = conn.execute(
        "select sum(r.power_w), max(r.ts) from assets l "
        "join devices d on d.asset_code = l.code and d.type = 'light' "
        "cross join lateral (select ts, power_w from light_readings "
        "where device_id = d.device_id order by ts desc limit 1) r "
        "where l.properties ->> 'cabinet_id' = any(%s)",
        (gateways,),
    ).fetchone() or (None, None)
    return _entity(
        id=CABINET_URN + code,
        type="StreetlightControlCabinet",
        location=_point(asset),
        totalActivePower=power,
        annotations=_active_kinds(conn, code) or None,
        dateModified=modified,
    )
