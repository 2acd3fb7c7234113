"""What every command shares: output consoles, failing with a message, the --config option."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from cityops.settings import Settings, SettingsError, load_settings

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


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error and leave with ``code``."""
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


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


def setup_logging() -> None:
    """INFO to stderr, with time and logger name."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
