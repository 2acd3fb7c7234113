"""The anomalies scene: each device type's active model scores its devices' windows.

A window is the model's ``window_h`` hours (24) before an hour mark; every hour mark since the
device's readings changed (and back over any anomaly still going on) is scored, up to the last
hour mark before ``now``. Consecutive windows scoring at or above the threshold are one
``anomalous_behaviour`` episode: first seen at the end of its first window, cleared at the end
of the first window scored normal again. Its evidence names the model, the peak score and the
features that drove it. Peers (a cover's street, a lamp's cabinet, a sweeper's district) are
scored with the devices so that peer features compare whole groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

import numpy as np
import psycopg

from models import registry
from models.detectors import drivers
from models.features import HOUR_S, KINDS, Floats, compute, hour_marks, peer_groups
from scenes.episodes import Device, Judgement, runs
from scenes.settings import AnomalyThresholds, ScenesSettings

ANOMALOUS: Final = "anomalous_behaviour"
DEVICE_TYPES: Final = tuple(KINDS)
READINGS: Final = ("manhole_readings", "light_readings", "sweeper_readings")


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
        model = registry.active(conn, device_type)
        judged = [d for d in devices if model is not None and _limits(known[d]).enabled]
        for device_id in sorted(set(devices) - set(judged)):
            yield device_id, Judgement()
        if model is None or not judged:
            continue
        earliest = max(
            min(since[d] for d in judged).timestamp() - settings.lookback_s,
            now - settings.anomaly_backfill_h * HOUR_S,
        )
        # an anomaly going on is scored from its start again: its first seen stays its own
        row = conn.execute(
            "select extract(epoch from min(first_seen))::float8 from detections "
            "where scene = 'anomalies' and cleared_at is null and device_id = any(%s)",
            (judged,),
        ).fetchone()
        if row and row[0] is not None:
            earliest = min(earliest, row[0])
        ends = hour_marks(earliest, now)
        # the devices' peer groups are scored with them: peer features compare whole groups
        groups = {**dict.fromkeys(judged, ""), **peer_groups(conn, model.kind, judged)}
        windows = compute(conn, model.kind, groups, ends, model.info.window_h)
        scores = _scores(model, windows.values)
        wanted = set(judged)
        for i, device_id in enumerate(windows.devices):
            if device_id in wanted:
                threshold = _limits(known[device_id]).threshold or model.info.threshold
                yield device_id, _judge(model, windows.values[i], ends, scores[i], threshold)


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
    model: registry.Model, values: Floats, ends: Floats, scores: Floats, threshold: float
) -> Judgement:
    """The episodes of one device's windows (``values``: windows x features; their scores)."""
    if not (scores >= threshold).any():
        return Judgement()
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
            "window_end": datetime.fromtimestamp(float(ends[peak]), tz=UTC).isoformat(),
            "features": drivers(model.detector, model.kind.features, values[peak]),
        }
        episodes.append(dataclasses.replace(episode, detail=detail))
    return Judgement(episodes)
