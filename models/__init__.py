"""Models: scikit-learn anomaly models with safe persistence.

- ``models.features``: features per device type over fixed windows, peer features;
- ``models.detectors``: the robust z-score and IsolationForest detectors;
- ``models.persistence``: skops files with an allow-list and a checksum;
- ``models.registry``: train, store, list, activate, retire and load the models in the database.
"""

from models.detectors import DETECTORS, DetectorKind
from models.persistence import ModelFileError
from models.registry import Model, ModelError, ModelInfo, TrainingPlan

__all__ = [
    "DETECTORS",
    "DetectorKind",
    "Model",
    "ModelError",
    "ModelFileError",
    "ModelInfo",
    "TrainingPlan",
]
