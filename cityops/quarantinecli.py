"""``cityops quarantine``: list, show, replay and purge what ingest could not store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from cityops.terminal import ConfigOption, TimeHelp, fail, out, parse_time, settings_from
from ingest.decode import Reason
from ingest.quarantine import COLUMNS, Selection, list_entries, purge, replay, show_entry
from store import db

quarantine_app = typer.Typer(
    help="What ingest could not store: list, show, replay once fixed, purge.", no_args_is_help=True
)


def _reason(value: str | None) -> str | None:
    if value is not None and value not in set(Reason):
        fail(f"no quarantine reason {value!r}; one of: {', '.join(Reason)}")
    return value


ReasonOption = Annotated[str | None, typer.Option(help="Only entries with this reason.")]


@quarantine_app.command("list")
def list_command(
    reason: ReasonOption = None,
    since: Annotated[str | None, typer.Option(help=f"Received since. {TimeHelp}")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest entries shown at most.")] = 50,
    config: ConfigOption = None,
) -> None:
    """List quarantine entries, newest first."""
    settings = settings_from(config)
    selection = Selection(
        reason=_reason(reason),
        since=parse_time(since, datetime.now(UTC)) if since else None,
    )
    with db.connect(settings.database) as conn:
        rows = list_entries(conn, selection, limit)
    # One tab-separated line per entry (grep and cut take it; a table would wrap the topics).
    out.print("\t".join(COLUMNS), highlight=False, markup=False)
    for row in rows:
        out.print("\t".join(map(str, row)), highlight=False, markup=False)
    out.print(f"{len(rows)} entries", highlight=False)


@quarantine_app.command("show")
def show_command(
    entry_id: Annotated[int, typer.Argument(help="Entry id.")], config: ConfigOption = None
) -> None:
    """One entry with its payload (as text when it is UTF-8, else escaped bytes)."""
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        found = show_entry(conn, entry_id)
    if found is None:
        fail(f"no quarantine entry {entry_id}")
    row, payload = found
    for name, value in zip(COLUMNS, row, strict=True):
        out.print(f"{name}: {value}", highlight=False, markup=False)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(payload)
    out.print(f"payload ({len(payload)} bytes stored):", highlight=False)
    out.print(text, highlight=False, markup=False)


@quarantine_app.command("replay")
def replay_command(
    entry_ids: Annotated[list[int] | None, typer.Argument(help="Entry ids.")] = None,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Run entries again through today's registry and contract (by ids, or all of a reason)."""
    if bool(entry_ids) == (reason is not None):
        fail("name entry ids or --reason (one of them)")
    settings = settings_from(config)
    selection = Selection(ids=entry_ids or (), reason=_reason(reason))
    with db.connect(settings.database) as conn:
        report = replay(conn, selection, settings.ingest, topic_prefix=settings.mqtt.topic_prefix)
    again = ", ".join(f"{r} {n}" for r, n in sorted(report.requarantined.items())) or "none"
    out.print(
        f"replayed {report.messages} messages: {report.inserted} readings stored, "
        f"{report.duplicates} already stored; back in quarantine: {again}",
        highlight=False,
    )
    if report.not_replayable:
        out.print(
            f"{report.not_replayable} entries not replayable (payload cut at "
            "ingest.max_payload_bytes) were left as they were",
            highlight=False,
        )


@quarantine_app.command("purge")
def purge_command(
    before: Annotated[str, typer.Option(help=f"Delete entries received before. {TimeHelp}")],
    config: ConfigOption = None,
) -> None:
    """Delete entries received before a time."""
    settings = settings_from(config)
    moment = parse_time(before, datetime.now(UTC))
    with db.connect(settings.database) as conn:
        deleted = purge(conn, moment)
    out.print(f"deleted {deleted} entries received before {moment.isoformat()}", highlight=False)
