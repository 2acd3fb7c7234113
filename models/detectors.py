"""Anomaly detectors over a device type's features, and what made a window stand out.

Two detectors, chosen per device type by measured results (docs/models.md):

- ``robust``: each feature centred on its median and scaled by its interquartile range (as a
  standard deviation: IQR / 1.349, never below the feature's floor); the score is the largest
  absolute scaled value (a robust z-score). A slow fault moves one feature far: this sees it.
- ``forest``: an IsolationForest over the same scaled features; the score is the forest's
  anomaly score (``-score_samples``, about 0.5 for ordinary windows, towards 1 for isolated ones).

Both are fitted by scikit-learn and persisted by skops (``models.persistence``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import RobustScaler

from models.features import Floats

DetectorKind = Literal["robust", "forest"]
DETECTORS: Final[tuple[DetectorKind, ...]] = ("robust", "forest")
#: A window scoring at or above this is anomalous, unless the model or the settings say else.
DEFAULT_THRESHOLD: Final[dict[DetectorKind, float]] = {"robust": 8.0, "forest": 0.7}
#: The interquartile range of a normal distribution, in standard deviations.
_IQR_SIGMAS: Final = 1.349


@dataclass(frozen=True, slots=True)
class Detector:
    """A fitted detector: the scaler always, the forest for ``forest``."""

    kind: DetectorKind
    scaler: RobustScaler
    forest: IsolationForest | None = None

    def scaled(self, values: Floats) -> Floats:
        """The features as robust z-scores (rows: windows)."""
        return np.asarray(self.scaler.transform(values), dtype=np.float64)

    def score(self, values: Floats) -> Floats:
        """Each window's anomaly score (rows without NaN only)."""
        z = self.scaled(values)
        if self.forest is None:
            return np.asarray(np.abs(z).max(axis=1), dtype=np.float64)
        return -np.asarray(self.forest.score_samples(z), dtype=np.float64)

    def estimators(self) -> dict[str, Any]:
        """What is persisted."""
        return {"scaler": self.scaler, "forest": self.forest}


def fit(kind: DetectorKind, values: Floats, floors: tuple[float, ...], *, seed: int) -> Detector:
    """Fit a detector on windows ``values`` (rows without NaN), deterministically for ``seed``."""
    scaler = RobustScaler(quantile_range=(25.0, 75.0)).fit(values)
    # the interquartile range itself: the scaler puts 1 where it is 0 (a feature every normal
    # device shares exactly), where the floor belongs
    q25, q75 = np.percentile(values, (25.0, 75.0), axis=0)
    scaler.scale_ = np.maximum((q75 - q25) / _IQR_SIGMAS, np.asarray(floors))
    if kind == "robust":
        return Detector(kind, scaler)
    forest = IsolationForest(n_estimators=200, random_state=seed)
    forest.fit(np.asarray(scaler.transform(values)))
    return Detector(kind, scaler, forest)


def drivers(
    detector: Detector, features: tuple[str, ...], row: Floats, top: int = 3
) -> list[dict[str, str | float]]:
    """The ``top`` features of one window furthest from normal, furthest first.

    Each: its name, value and robust z-score.
    """
    z = detector.scaled(row[None, :])[0]
    order = np.argsort(-np.abs(z), kind="stable")[:top]
    return [
        {"feature": features[i], "value": round(float(row[i]), 4), "z": round(float(z[i]), 2)}
        for i in order
    ]
