"""``cityops models``: train, list, show, activate and retire the anomaly models."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.table import Table

from cityops.terminal import ConfigOption, TimeHelp, fail, out, parse_time, settings_from
from models import (
    DETECTORS,
    DetectorKind,
    ModelError,
    ModelFileError,
    ModelInfo,
    TrainingPlan,
    registry,
)
from models.features import KINDS
from store import db

models_app = typer.Typer(
    help="Anomaly models per device type: train on stored readings, activate, retire.",
    no_args_is_help=True,
)

ModelId = Annotated[int, typer.Argument(help="The model's id (`cityops models list`).")]


@models_app.command("train")
def train_command(
    device_type: Annotated[
        str, typer.Option("--type", help=f"The device type: {', '.join(KINDS)}.")
    ],
    since: Annotated[str, typer.Option(help=f"Train on readings since. {TimeHelp}")] = "30d",
    until: Annotated[str | None, typer.Option(help=f"... until (default now). {TimeHelp}")] = None,
    detector: Annotated[
        str, typer.Option(help=f"One of {', '.join(DETECTORS)} (docs/models.md compares them).")
    ] = "robust",
    seed: Annotated[int, typer.Option(help="The same data and seed give the same model.")] = 1,
    threshold: Annotated[
        float | None,
        typer.Option(min=0, help="Score from which a window is anomalous (default per detector)."),
    ] = None,
    activate: Annotated[bool, typer.Option(help="Make it its type's active model.")] = False,
    config: ConfigOption = None,
) -> None:
    """Train a model on the stored readings, validate it on the last days, store it versioned.

    The last fifth of the days is held out: the model is fitted on the days before and scored
    on those; the validation figures (score quantiles, the share of windows flagged) are stored
    with it, with its training window, features and library versions.
    """
    if detector not in DETECTORS:
        fail(f"no detector {detector!r}; one of: {', '.join(DETECTORS)}")
    now = datetime.now(UTC)
    start = parse_time(since, now)
    end = parse_time(until, now) if until else now
    if start >= end:
        fail(f"--since ({start:%Y-%m-%d %H:%M}) must be before --until ({end:%Y-%m-%d %H:%M})")
    settings = settings_from(config)
    kind: DetectorKind = "forest" if detector == "forest" else "robust"
    plan = TrainingPlan(
        device_type,
        start.timestamp(),
        end.timestamp(),
        detector=kind,
        seed=seed,
        threshold=threshold,
    )
    with db.connect(settings.database) as conn:
        try:
            info = registry.train(conn, plan)
            conn.commit()
            if activate:
                info = registry.activate(conn, info.model_id)
                conn.commit()
        except (ModelError, ModelFileError) as exc:
            fail(str(exc))
    _print(info)


@models_app.command("list")
def list_command(
    device_type: Annotated[str | None, typer.Option("--type", help="Only this type's.")] = None,
    config: ConfigOption = None,
) -> None:
    """The stored models, by type and version."""
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        models = registry.listing(conn, device_type)
    table = Table(
        "id", "model", "detector", "state", "trained on", "threshold", "flagged", box=None
    )
    for m in models:
        table.add_row(
            str(m.model_id),
            m.name,
            m.detector,
            m.state,
            f"{m.trained_from:%m-%d}..{m.trained_until:%m-%d}",
            f"{m.threshold:g}",
            f"{m.validation['flagged_share']:.2%}",
        )
    out.print(table)


@models_app.command("show")
def show_command(model_id: ModelId, config: ConfigOption = None) -> None:
    """A model's training window, features, library versions and validation figures (JSON)."""
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        try:
            info = registry.get(conn, model_id)
        except ModelError as exc:
            fail(str(exc))
    _print(info)


@models_app.command("activate")
def activate_command(model_id: ModelId, config: ConfigOption = None) -> None:
    """Make a model its type's active one: the scenes score with it from their next run.

    Its file is checked first (checksum and allowed types); a refused file is not activated.
    """
    _act(registry.activate, model_id, config)


@models_app.command("retire")
def retire_command(model_id: ModelId, config: ConfigOption = None) -> None:
    """Retire a model for good; if it was active, its type is not scored until another is."""
    _act(registry.retire, model_id, config)


def _act(
    action: Callable[[psycopg.Connection, int], ModelInfo], model_id: int, config: Path | None
) -> None:
    settings = settings_from(config)
    with db.connect(settings.database) as conn:
        try:
            info = action(conn, model_id)
            conn.commit()
        except (ModelError, ModelFileError) as exc:
            fail(str(exc))
    out.print(f"model {info.model_id} ({info.name}): {info.state}", highlight=False)


def _print(info: ModelInfo) -> None:
    out.print_json(
        json.dumps(
            {
                "model_id": info.model_id,
                "name": info.name,
                "detector": info.detector,
                "state": info.state,
                "trained_at": info.trained_at.isoformat(),
                "trained_from": info.trained_from.isoformat(),
                "trained_until": info.trained_until.isoformat(),
                "window_h": info.window_h,
                "features": list(info.features),
                "threshold": info.threshold,
                "seed": info.seed,
                "libraries": info.libraries,
                "validation": info.validation,
                "sha256": info.sha256,
            }
        )
    )
