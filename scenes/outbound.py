"""What the scenes service publishes on ``cityops/v1/out/...``: detections and cases as they change.

Triggers (migration 0008) queue every change in ``outbound``; one publisher at a time (an
advisory lock) reads the queue in order, renders each entry's *current* state from its table and
publishes it with QoS 1, then deletes the entries whose ``seq`` did not move meanwhile (one that
changed again while it was published stays queued and goes out again). A change is published at
least once, after its commit; a subscriber may see the same state twice, never an older state
after a newer one.

Topics (under ``mqtt.topic_prefix``):

- ``cityops/v1/out/detections/{kind}/{subject}``, retained: the subject's latest detection of the
  kind, active or cleared; a lighting detection also under FIWARE's names
  (``scenes.streetlights``): ``refStreetlight`` and ``status`` (the status its kind gives the
  lamp) for a lamp's, and ``refStreetlightControlCabinet``;
- ``cityops/v1/out/cases/{case_id}``, retained while the case is open; its final state (closed
  or cancelled) is published once without retain, and the retained message is then removed
  (an empty retained payload, which subscribers also receive);
- ``cityops/v1/out/case-events/{case_id}``, not retained: every transition of the case, in order.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import psycopg

from cases.lifecycle import FINAL
from scenes.streetlights import CABINET_KINDS, CABINET_URN, SCENE, STREETLIGHT_URN, status_sql
from wire.contract import ID_PATTERN
from wire.topics import OUT_TREE, TOPIC_ROOT

OUT_ROOT: Final = f"{TOPIC_ROOT}/{OUT_TREE}"
#: Advisory lock held by the one process that publishes.
PUBLISHER_LOCK: Final = 0x5CE4E_0075
#: Case states after which a case's retained message is removed.
_FINISHED: Final = frozenset(state.value for state in FINAL)
#: Queue entries read per pass.
PASS_ROWS: Final = 500

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    retain: bool


async def publish_pending(
    conn: psycopg.AsyncConnection, client: aiomqtt.Client, prefix: str
) -> int:
    """Publish one pass of the queue (up to ``PASS_ROWS`` entries); return the entries read.

    ``conn`` is in autocommit mode. Raises what the database or the broker raised; nothing is
    dequeued then.
    """
    entries = await (
        await conn.execute(
            "select what, ref, seq from outbound order by seq limit %s", (PASS_ROWS,)
        )
    ).fetchall()
    if not entries:
        return 0
    root = f"{prefix}/{OUT_ROOT}" if prefix else OUT_ROOT
    messages = await render(conn, [(what, ref) for what, ref, _ in entries], root)
    for message in messages:  # in queue order; QoS 1 keeps it per topic
        await client.publish(message.topic, message.payload, qos=1, retain=message.retain)
    # only what no writer holds: an entry a transaction is queueing again stays, for the next pass
    await conn.execute(
        "delete from outbound where (what, ref, seq) in (select o.what, o.ref, o.seq "
        "from outbound o join unnest(%s::text[], %s::text[], %s::bigint[]) as p(what, ref, seq) "
        "on o.what = p.what and o.ref = p.ref and o.seq = p.seq for update of o skip locked)",
        ([e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]),
    )
    return len(entries)


async def render(
    conn: psycopg.AsyncConnection, entries: list[tuple[str, str]], root: str
) -> list[Outgoing]:
    """The messages for queue entries, in their order, from the current state of each."""
    refs: dict[str, list[str]] = {"detection": [], "case": [], "case_event": []}
    for what, ref in entries:
        refs[what].append(ref)
    states: dict[tuple[str, str], Any] = {}
    for what, query in _STATES.items():
        if refs[what]:
            cur = await conn.execute(query, (refs[what],))
            states.update({(what, ref): document for ref, document in await cur.fetchall()})
    messages: list[Outgoing] = []
    for what, ref in entries:
        document = states.get((what, ref))
        if document is None:  # deleted by hand since: nothing to say
            continue
        if what == "detection":
            kind, _, subject = ref.partition("/")
            if not (re.match(ID_PATTERN, kind) and re.match(ID_PATTERN, subject)):
                logger.warning("detection subject %r cannot be a topic level: not published", ref)
                continue
            messages.append(Outgoing(f"{root}/detections/{kind}/{subject}", _json(document), True))
        elif what == "case":
            topic = f"{root}/cases/{ref}"
            if document["state"] not in _FINISHED:
                messages.append(Outgoing(topic, _json(document), retain=True))
            else:  # once, to whoever listens; then gone from the retained set
                messages.append(Outgoing(topic, _json(document), retain=False))
                messages.append(Outgoing(topic, b"", retain=True))
        else:
            topic = f"{root}/case-events/{document['case_id']}"
            messages.append(Outgoing(topic, _json(document), retain=False))
    return messages


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


_CABINET_KINDS: Final = ", ".join(f"'{kind}'" for kind in CABINET_KINDS)
#: A lighting detection's FIWARE names: a lamp's (its status, its cabinet's through the gateway
#: it names as ``cabinet_id``) or a cabinet's.
_FIWARE: Final = (
    f"case when x.scene = '{SCENE}' then jsonb_strip_nulls(jsonb_build_object("
    f"'refStreetlight', case when x.kind not in ({_CABINET_KINDS}) "
    f"then '{STREETLIGHT_URN}' || x.subject end, "
    f"'refStreetlightControlCabinet', '{CABINET_URN}' || case when x.kind in ({_CABINET_KINDS}) "
    "then x.subject else g.asset_code end, "
    f"'status', {status_sql('x.kind')})) else '{{}}' end"
)

_STATES: Final = {
    "detection": (
        "select distinct on (x.kind, x.subject) x.kind || '/' || x.subject, "
        "to_jsonb(x) - 'updated_at' || jsonb_build_object('state', "
        f"case when x.cleared_at is null then 'active' else 'cleared' end) || {_FIWARE} "
        "from detections x join unnest(%s::text[]) as r(ref) "
        "on x.kind = split_part(r.ref, '/', 1) "
        "and x.subject = substr(r.ref, strpos(r.ref, '/') + 1) "
        f"left join assets a on x.scene = '{SCENE}' and a.code = x.subject "
        "left join devices g on g.device_id = a.properties ->> 'cabinet_id' "
        "and g.type = 'gateway' "
        "order by x.kind, x.subject, x.first_seen desc"
    ),
    # what a citizen wrote or photographed stays behind the API's access control
    "case": (
        "select c.case_id::text, to_jsonb(c) - 'description' - 'photo_url' from cases c "
        "where c.case_id = any(%s::text[]::bigint[])"
    ),
    "case_event": (
        "select e.event_id::text, to_jsonb(e) - 'note' - 'photo_url' from case_events e "
        "where e.event_id = any(%s::text[]::bigint[])"
    ),
}
