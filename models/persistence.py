"""Model files: skops, never pickle, so that loading a file cannot run code.

A file is refused, with a ``ModelFileError`` naming why, when its bytes do not match the checksum
recorded when it was written (tampered or damaged), when it is no skops file, or when it holds
any type outside ``ALLOWED`` (checked on the file's own schema before anything is built).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any, Final

import skops.io as sio

#: Every type a model file may hold: the detectors' estimators and plain data.
ALLOWED: Final = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.str",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.NoneType",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "sklearn.preprocessing._data.RobustScaler",
        "sklearn.ensemble._iforest.IsolationForest",
        "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.tree._tree.Tree",
    }
)


class ModelFileError(ValueError):
    """A model file that is refused; the message says why."""


def dumps(estimators: dict[str, Any]) -> bytes:
    """The model file of ``estimators``."""
    return bytes(sio.dumps(estimators))


def checksum(blob: bytes) -> str:
    """The file's SHA-256, as recorded beside it."""
    return hashlib.sha256(blob).hexdigest()


def loads(blob: bytes, sha256: str) -> dict[str, Any]:
    """The estimators of a model file whose recorded checksum is ``sha256``."""
    if checksum(blob) != sha256:
        msg = (
            "the model file does not match the checksum recorded when it was trained "
            "(tampered with or damaged); train the model again"
        )
        raise ModelFileError(msg)
    outside = sorted(types_in(blob) - ALLOWED)
    if outside:
        msg = f"the model file holds types not on the allow-list: {', '.join(outside)}"
        raise ModelFileError(msg)
    try:
        loaded = sio.loads(blob, trusted=sorted(ALLOWED))
    except Exception as exc:  # skops raises what the damaged part makes it raise
        msg = f"the model file cannot be read: {exc}"
        raise ModelFileError(msg) from None
    if not isinstance(loaded, dict):
        msg = f"the model file holds a {type(loaded).__name__}, not a model's estimators"
        raise ModelFileError(msg)
    return loaded


def types_in(blob: bytes) -> set[str]:
    """Every type (module.class) a skops file's schema names."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        msg = f"not a skops model file ({exc})"
        raise ModelFileError(msg) from None
    found: set[str] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__', '')}.{node['__class__']}")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
