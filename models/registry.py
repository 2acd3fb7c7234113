"""The models in the database: train and store a version, list, show, activate, retire, load.

Each model is a row of ``models`` (migration 0014) holding its skops file and that file's
checksum. Loading checks both (``models.persistence``); the loaded model is kept per process by
id and checksum, so the scenes load a model once, and a replaced file is loaded again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from typing import Any, Final

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from models import persistence
from models.detectors import DEFAULT_THRESHOLD, Detector, DetectorKind, fit
from models.features import HOUR_S, KINDS, Floats, Kind, compute, hour_marks

_COLUMNS: Final = (
    "model_id, device_type, version, detector, state, trained_at, trained_from, "
    "trained_until, window_h, features, threshold, seed, libraries, validation, sha256"
)


class ModelError(ValueError):
    """A model that does not exist, or an action its state does not allow."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A stored model, without its file."""

    model_id: int
    device_type: str
    version: int
    detector: DetectorKind
    state: str
    trained_at: datetime
    trained_from: datetime
    trained_until: datetime
    window_h: int
    features: tuple[str, ...]
    threshold: float
    seed: int
    libraries: dict[str, str]
    validation: dict[str, Any]
    sha256: str

    @property
    def name(self) -> str:
        """How operators name it: ``manhole v3``."""
        return f"{self.device_type} v{self.version}"


@dataclass(frozen=True, slots=True)
class Model:
    """A loaded model: what it scores, and how."""

    info: ModelInfo
    kind: Kind
    detector: Detector


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    """What to train on: a device type's windows ending in (``since`` + window, ``until``]."""

    device_type: str
    since: float  # epoch seconds
    until: float
    detector: DetectorKind = "robust"
    seed: int = 1
    window_h: int = 24
    stride_h: int = 6  # a training window ends every this many hours
    holdout: float = 0.2  # the share of the days, the last ones, held out for validation
    threshold: float | None = None  # None: the detector's default
    max_devices: int = 5000  # a sample of whole peer groups beyond this


def _info(row: tuple[Any, ...]) -> ModelInfo:
    (model_id, device_type, number, detector, state, at, since, until, window_h) = row[:9]
    threshold, seed, libraries, validation, sha256 = row[10:]
    return ModelInfo(
        model_id,
        device_type,
        number,
        detector,
        state,
        at,
        since,
        until,
        window_h,
        tuple(row[9]),
        threshold,
        seed,
        libraries,
        validation,
        sha256,
    )


def train(conn: psycopg.Connection, plan: TrainingPlan) -> ModelInfo:
    """Train a model as ``plan`` says, validate it on the held-out days, and store it.

    The same data, plan and seed give the same model and scores. Raises ``ModelError`` when the
    type has no features or the window holds too little to train or validate on.
    """
    kind = KINDS.get(plan.device_type)
    if kind is None:
        msg = f"no model for device type {plan.device_type!r}; one of: {', '.join(KINDS)}"
        raise ModelError(msg)
    began = time.perf_counter()
    groups = _sample(conn, kind, plan)
    ends = hour_marks(plan.since + plan.window_h * HOUR_S, plan.until)[:: plan.stride_h]
    split = plan.until - plan.holdout * (plan.until - plan.since)
    windows = compute(conn, kind, groups, ends, plan.window_h)
    values = windows.values.reshape(-1, len(kind.features))
    at = np.broadcast_to(windows.ends[None, :], windows.values.shape[:2]).reshape(-1)
    subject = np.repeat(np.arange(len(windows.devices)), len(windows.ends))
    usable = ~np.isnan(values).any(axis=1)
    fitting, held = usable & (at <= split), usable & (at > split)
    if fitting.sum() < 20 or held.sum() < 5:
        msg = (
            f"too little to train a {plan.device_type} model on: {int(fitting.sum())} "
            "complete windows before the held-out days "
            f"and {int(held.sum())} in them (at least 20 and 5); train over a longer --since"
        )
        raise ModelError(msg)
    detector = fit(plan.detector, values[fitting], kind.floors, seed=plan.seed)
    threshold = plan.threshold or DEFAULT_THRESHOLD[plan.detector]
    scores = detector.score(values[held])
    flagged = sorted({windows.devices[i] for i in subject[held][scores >= threshold]})
    validation = {
        "devices": len(windows.devices),
        "training_windows": int(fitting.sum()),
        "held_out_windows": int(held.sum()),
        "held_out_from": float(split),
        "score_p50": _round(np.quantile(scores, 0.5)),
        "score_p99": _round(np.quantile(scores, 0.99)),
        "score_max": _round(scores.max()),
        "flagged_share": _round(float((scores >= threshold).mean())),
        "flagged_devices": len(flagged),
        "flagged_examples": flagged[:10],
        "medians": dict(zip(kind.features, _rounded(detector.scaler.center_), strict=True)),
        "scales": dict(zip(kind.features, _rounded(detector.scaler.scale_), strict=True)),
        "training_s": round(time.perf_counter() - began, 2),
    }
    blob = persistence.dumps(detector.estimators())
    row = conn.execute(
        f"insert into models (device_type, version, detector, trained_from, trained_until, "
        "window_h, features, threshold, seed, libraries, validation, sha256, file) "
        "select %s, coalesce(max(version), 0) + 1, %s, to_timestamp(%s), to_timestamp(%s), "
        "%s, %s, %s, %s, %s, %s, %s, %s from models where device_type = %s "
        f"returning {_COLUMNS}",
        (
            plan.device_type,
            plan.detector,
            plan.since,
            plan.until,
            plan.window_h,
            list(kind.features),
            threshold,
            plan.seed,
            Jsonb({name: version(name) for name in ("scikit-learn", "skops", "numpy")}),
            Jsonb(validation),
            persistence.checksum(blob),
            blob,
            plan.device_type,
        ),
    ).fetchone()
    assert row is not None
    return _info(row)


def _sample(conn: psycopg.Connection, kind: Kind, plan: TrainingPlan) -> dict[str, str]:
    """The type's devices and their peer groups; beyond ``max_devices``, whole groups (seeded)."""
    groups: dict[str, str] = dict(conn.execute(kind.groups_sql).fetchall())
    if len(groups) <= plan.max_devices:
        return groups
    members: dict[str, list[str]] = {}
    for device_id, group in sorted(groups.items()):
        members.setdefault(group, []).append(device_id)
    chosen: dict[str, str] = {}
    for g in np.random.default_rng(plan.seed).permutation(sorted(members)):
        if len(chosen) >= plan.max_devices:
            break
        chosen.update(dict.fromkeys(members[str(g)], str(g)))
    return chosen


def _round(value: float) -> float:
    return round(float(value), 4)


def _rounded(values: Floats) -> list[float]:
    return [_round(v) for v in np.asarray(values)]


def listing(conn: psycopg.Connection, device_type: str | None = None) -> list[ModelInfo]:
    """The stored models (of ``device_type``), by type and version."""
    rows = conn.execute(
        f"select {_COLUMNS} from models where %(type)s::text is null or device_type = %(type)s "
        "order by device_type, version",
        {"type": device_type},
    ).fetchall()
    return [_info(r) for r in rows]


def get(conn: psycopg.Connection, model_id: int) -> ModelInfo:
    """A stored model; ``ModelError`` if there is none."""
    row = conn.execute(f"select {_COLUMNS} from models where model_id = %s", (model_id,)).fetchone()
    if row is None:
        msg = f"no model {model_id}; `cityops models list` shows them"
        raise ModelError(msg)
    return _info(row)


def activate(conn: psycopg.Connection, model_id: int) -> ModelInfo:
    """Make a model its type's active one (the one active before is left trained).

    Its file is loaded first: a file that is refused (``persistence.ModelFileError``) is never
    activated. A retired model is not activated again.
    """
    info = get(conn, model_id)
    if info.state == "retired":
        msg = f"model {model_id} ({info.name}) is retired; train a new one"
        raise ModelError(msg)
    load(conn, info)
    conn.execute(
        "update models set state = 'trained' where device_type = %s and state = 'active' "
        "and model_id <> %s",
        (info.device_type, model_id),
    )
    conn.execute(
        "update models set state = 'active', activated_at = now() where model_id = %s "
        "and state <> 'active'",
        (model_id,),
    )
    return get(conn, model_id)


def retire(conn: psycopg.Connection, model_id: int) -> ModelInfo:
    """Retire a model for good; an active one stops scoring (its type has none active then)."""
    get(conn, model_id)
    conn.execute(
        "update models set state = 'retired', retired_at = coalesce(retired_at, now()) "
        "where model_id = %s",
        (model_id,),
    )
    return get(conn, model_id)


_loaded: dict[tuple[int, str], Model] = {}
_loading = threading.Lock()


def load(conn: psycopg.Connection, info: ModelInfo) -> Model:
    """The model ``info`` names, its file checked and loaded (once per process)."""
    key = (info.model_id, info.sha256)
    with _loading:
        if key in _loaded:
            return _loaded[key]
    row = conn.execute("select file from models where model_id = %s", (info.model_id,)).fetchone()
    if row is None:
        msg = f"no model {info.model_id}"
        raise ModelError(msg)
    try:
        estimators = persistence.loads(bytes(row[0]), info.sha256)
    except persistence.ModelFileError as exc:
        msg = f"model {info.model_id} ({info.name}) is refused: {exc}"
        raise persistence.ModelFileError(msg) from None
    kind = KINDS[info.device_type]
    if info.features != kind.features:
        msg = (
            f"model {info.model_id} ({info.name}) was trained on other features than this "
            "version computes; train it again"
        )
        raise ModelError(msg)
    model = Model(info, kind, Detector(info.detector, estimators["scaler"], estimators["forest"]))
    with _loading:
        _loaded[key] = model
    return model


def active(conn: psycopg.Connection, device_type: str) -> Model | None:
    """The active model of ``device_type``, loaded; None when it has none."""
    row = conn.execute(
        f"select {_COLUMNS} from models where device_type = %s and state = 'active'",
        (device_type,),
    ).fetchone()
    return None if row is None else load(conn, _info(row))
