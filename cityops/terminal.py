"""What every command shares: output consoles, failing with one line, the --config option.

A command that fails for a known reason says so in one line (what failed, why, what to do) and
exits 2; anything else ends in one line too, and ``--debug`` shows the traceback. Every line a
command or its logs print passes through ``redact``, so no password in a URL reaches them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import psycopg
import typer
from rich.console import Console
from rich.markup import escape

from cityops.settings import Settings, SettingsError, load_settings
from devices import registry
from redaction import error_line, redact
from wire.mqtt import TlsFilesError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file (TOML). Default: $CITYOPS_CONFIG, else ./config/cityops.toml.",
        dir_okay=False,
    ),
]


#: --format of a command that prints a table, or the same rows as CSV or JSON.
TableFormatOption = Annotated[
    Literal["table", "csv", "json"], typer.Option("--format", help="table, csv or json")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line (passwords redacted) and leave with ``code``."""
    err.print(f"[red]error:[/red] {escape(redact(message))}", highlight=False, markup=True)
    raise typer.Exit(code)


def describe_failure(exc: Exception) -> tuple[str, int]:
    """One line for a failure no command handled itself, and the exit code (2: known cause)."""
    if isinstance(exc, psycopg.OperationalError):
        why = error_line(exc)
        if why.startswith("cannot connect"):  # db.connect's message names the fix already
            return why, 2
        return f"lost the database: {why}; check that PostgreSQL runs and run again", 2
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"the schema is missing ({error_line(exc)}): run `cityops migrate` first", 2
    if isinstance(exc, psycopg.Error):
        return f"the database refused: {error_line(exc)}", 2
    if isinstance(exc, TlsFilesError | OSError):  # TLS: a setting names a file that is no PEM
        shown = str(exc) if isinstance(exc, TlsFilesError) else error_line(exc)
        return f"{shown} ({type(exc).__name__})", 2
    return (
        f"unexpected {type(exc).__name__}: {error_line(exc)} "
        "(run again with --debug for the traceback)",
        1,
    )


def run_cli(app: Callable[[], object], *, debug: bool) -> None:
    """Run a Typer app; a failure it did not handle ends in one line, or a traceback if debug."""
    try:
        app()
    except Exception as exc:
        if debug:
            raise
        message, code = describe_failure(exc)
        err.print(f"[red]error:[/red] {escape(redact(message))}", highlight=False, markup=True)
        sys.exit(code)


def settings_from(config: Path | None) -> Settings:
    """The settings, or exit 2 naming every bad key."""
    try:
        return load_settings(config)
    except SettingsError as exc:
        fail(str(exc), 2)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM and SIGINT (Ctrl-C) set: the long-running commands' stop."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


class RedactingFormatter(logging.Formatter):
    """A formatter whose lines (tracebacks included) carry no password."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then redact."""
        return redact(super().format(record))


def setup_logging(level: int) -> None:
    """Log to stderr with time and logger name, passwords redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


@contextlib.contextmanager
def import_errors(prefix: str, consequence: str) -> Iterator[None]:
    """Print every rejected row and exit 2; other import failures exit 2 with their message."""
    try:
        yield
    except registry.ImportRejectedError as exc:
        for where, message in exc.problems:
            err.print(f"{prefix}{where}: {message}", highlight=False, markup=False)
        fail(f"{len(exc.problems)} problems; {consequence}")
    except (registry.RegistryError, OSError, ValueError, psycopg.OperationalError) as exc:
        fail(str(exc))


_RELATIVE = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
TimeHelp = "An RFC 3339 time (2026-11-26T08:00:00+08:00), a date, or an age: 30d, 12h, 15m."


def parse_time(text: str, now: datetime) -> datetime:
    """An absolute time, or ``now`` minus an age like 30d; naive times are UTC."""
    if match := _RELATIVE.match(text):
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"not a time: {text!r}; {TimeHelp}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
