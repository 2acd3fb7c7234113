"""Model files: skops with an allow-list and a checksum, never code run on load."""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.svm import OneClassSVM

from models import persistence
from models.detectors import fit
from models.persistence import ModelFileError


def fitted() -> dict[str, Any]:
    values = np.random.default_rng(1).normal(size=(300, 3))
    return fit("forest", values, (0.1, 0.1, 0.1), seed=1).estimators()


def test_a_model_file_round_trips_and_scores_the_same() -> None:
    estimators = fitted()
    blob = persistence.dumps(estimators)
    loaded = persistence.loads(blob, persistence.checksum(blob))
    rows = np.random.default_rng(2).normal(size=(50, 3))
    np.testing.assert_array_equal(
        loaded["forest"].score_samples(rows), estimators["forest"].score_samples(rows)
    )
    assert persistence.types_in(blob) <= persistence.ALLOWED


def test_a_changed_byte_is_refused_by_its_checksum() -> None:
    blob = bytearray(persistence.dumps(fitted()))
    checksum = persistence.checksum(bytes(blob))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ModelFileError, match="checksum"):
        persistence.loads(bytes(blob), checksum)


def test_a_file_with_a_type_off_the_allow_list_is_refused_before_anything_is_built() -> None:
    # a well-formed skops file, its checksum right, holding an estimator no model uses
    values = np.random.default_rng(1).normal(size=(50, 2))
    blob = bytes(sio.dumps({"scaler": OneClassSVM().fit(values), "forest": None}))
    with pytest.raises(
        ModelFileError, match=re.escape("not on the allow-list: sklearn.svm._classes.OneClassSVM")
    ):
        persistence.loads(blob, persistence.checksum(blob))


def test_a_file_naming_a_callable_is_refused() -> None:
    # a hand-made schema asking skops to build builtins.eval: named, refused, never called
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "schema.json",
            '{"__class__": "eval", "__module__": "builtins", "__loader__": "TypeNode", '
            '"content": "x", "protocol": 2}',
        )
    blob = buffer.getvalue()
    with pytest.raises(ModelFileError, match=re.escape("builtins.eval")):
        persistence.loads(blob, persistence.checksum(blob))


def test_what_is_no_skops_file_is_refused() -> None:
    blob = b"\x80\x04not a zip, a pickle perhaps"
    with pytest.raises(ModelFileError, match="not a skops model file"):
        persistence.loads(blob, persistence.checksum(blob))
