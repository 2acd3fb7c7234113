"""The anomalies scene: each device type's active model scores its devices' windows.

A window is the model's ``window_h`` hours (24) before an hour mark; every hour mark since the
device's readings changed is scored (at most ``scenes.anomaly_backfill_h`` back; an episode an
earlier run found keeps its first seen), up to the last hour mark before ``now``. Consecutive
windows scoring at or above the threshold are one
``anomalous_behaviour`` episode: first seen at the end of its first window, cleared at the end
of the first window scored normal again. Its evidence names the model, the peak score and the
features that drove it. Peers (a cover's street, a lamp's cabinet, a sweeper's district) are
scored with the devices so that peer features compare whole groups.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

import numpy as np
import psycopg

from models import ModelError, ModelFileError, registry
from models.detectors import drivers
from models.features import HOUR_S, KINDS, Floats, compute, hour_marks, peer_groups
from scenes.episodes import Device, Judgement, runs
from scenes.settings import AnomalyThresholds, ScenesSettings

ANOMALOUS: Final = "anomalous_behaviour"
DEVICE_TYPES: Final = tuple(KINDS)
READINGS: Final = ("manhole_readings", "light_readings", "sweeper_readings")

logger = logging.getLogger(__name__)


def judge_all(
    conn: psycopg.Connection,
    since: dict[str, datetime],
    known: dict[str, Device],
    settings: ScenesSettings,
    now: float,
) -> Iterator[tuple[str, Judgement]]:
    """Each device's anomalous windows, type by type, with its type's active model."""
    by_type: dict[str, list[str]] = {}
    for device_id in sorted(since):
        by_type.setdefault(known[device_id].type, []).append(device_id)
    for device_type, devices in sorted(by_type.items()):
        try:
            model = registry.active(conn, device_type)
        except (ModelError, ModelFileError) as exc:  # the other types are still scored
            logger.warning("%s devices not scored: %s", device_type, exc)
            model = None
        judged = [d for d in devices if model is not None and _limits(known[d]).enabled]
        for device_id in sorted(set(devices) - set(judged)):
            yield device_id, Judgement()
        if model is None or not judged:
            continue
        # never further back than the backfill (the engine reaches back to the start of a
        # detection it may continue: that start is kept, below, not scored again)
        earliest = max(
            min(since[d] for d in judged).timestamp() - settings.lookback_s,
            now - settings.anomaly_backfill_h * HOUR_S,
        )
        ends = hour_marks(earliest, now)
        if len(ends) == 0:
            continue
        # a detection that spans the first window began before it: an episode there goes on
        begun: dict[str, float] = dict(
            conn.execute(
                "select device_id, extract(epoch from min(first_seen))::float8 from detections "
                "where scene = 'anomalies' and device_id = any(%s) and first_seen < %s "
                "and coalesce(cleared_at, 'infinity') >= %s group by device_id",
                (judged, _at(ends[0]), _at(ends[0])),
            ).fetchall()
        )
        # the devices' peer groups are scored with them: peer features compare whole groups
        groups = {**dict.fromkeys(judged, ""), **peer_groups(conn, model.kind, judged)}
        windows = compute(conn, model.kind, groups, ends, model.info.window_h)
        scores = _scores(model, windows.values)
        wanted = set(judged)
        for i, device_id in enumerate(windows.devices):
            if device_id in wanted:
                threshold = _limits(known[device_id]).threshold or model.info.threshold
                yield (
                    device_id,
                    _judge(
                        model,
                        windows.values[i],
                        ends,
                        scores[i],
                        threshold=threshold,
                        begun=begun.get(device_id),
                    ),
                )


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(float(epoch_s), tz=UTC)


def _limits(device: Device) -> AnomalyThresholds:
    limits: AnomalyThresholds = device.limits
    return limits


def _scores(model: registry.Model, values: Floats) -> Floats:
    """Every window's score, all devices at once (devices x windows; NaN: not scored)."""
    rows = values.reshape(-1, values.shape[-1])
    scores = np.full(len(rows), np.nan)
    scored = ~np.isnan(rows).any(axis=1)
    if scored.any():
        scores[scored] = model.detector.score(rows[scored])
    return scores.reshape(values.shape[:2])


def _judge(
    model: registry.Model,
    values: Floats,
    ends: Floats,
    scores: Floats,
    *,
    threshold: float,
    begun: float | None,
) -> Judgement:
    """The episodes of one device's windows (``values``: windows x features; their scores).

    ``begun``: when the detection that spans the first window began (an earlier run found it),
    the first seen of an episode found at the first scored window.
    """
    if not (scores >= threshold).any():
        return Judgement()
    first_scored = ends[~np.isnan(scores)][0]
    episodes = []
    for episode in runs(ends, scores, scores >= threshold, ANOMALOUS):
        first, last = np.searchsorted(ends, (episode.first_seen, episode.last_seen))
        peak = int(first + np.nanargmax(scores[first : last + 1]))
        detail = {
            "model": model.info.name,
            "model_id": model.info.model_id,
            "score": round(float(scores[peak]), 3),
            "threshold": threshold,
            "window_h": model.info.window_h,
            "window_end": _at(ends[peak]).isoformat(),
            "features": drivers(model.detector, model.kind.features, values[peak]),
        }
        going_on = begun is not None and episode.first_seen == first_scored
        first_seen = begun if going_on and begun is not None else episode.first_seen
        episodes.append(dataclasses.replace(episode, first_seen=first_seen, detail=detail))
    return Judgement(episodes)
