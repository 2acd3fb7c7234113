"""Fuzzing the registry's file readers: any file is rows or a RegistryError, never a crash."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from devices.registry import (
    AssetRow,
    DeviceRow,
    RegionRow,
    RegistryError,
    RoadRow,
    UnitRow,
    read_rows,
)

MODELS = (AssetRow, DeviceRow, RegionRow, UnitRow, RoadRow)
KEYS = ["type", "features", "properties", "geometry", "coordinates", "device_id", "code", "lat"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5
        ),
    ),
    max_leaves=30,
)
feature_collections = st.fixed_dictionaries(
    {"type": st.just("FeatureCollection"), "features": st.lists(json_values, max_size=5)}
)


def rows_of(name: str, data: bytes) -> list[tuple[str, dict[str, Any]]] | None:
    """Read a file as the importers do: its rows, or None when it was refused (naming the file).

    Every row must also validate, or fail validation cleanly, against every row model.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            rows = list(read_rows(path))
        except RegistryError as exc:
            refusal = str(exc)
        else:
            refusal = ""
    if refusal:
        assert str(path) in refusal  # the error names the file
        return None
    for where, row in rows:
        assert where.startswith(("line ", "feature "))
        for model in MODELS:
            with contextlib.suppress(ValidationError):
                model.model_validate(row)
    return rows


@settings(max_examples=300)
@given(document=st.one_of(json_values, feature_collections))
def test_any_json_document_is_rows_or_a_registry_error(document: Any) -> None:
    rows = rows_of("devices.geojson", json.dumps(document).encode())
    is_collection = isinstance(document, dict) and document.get("type") == "FeatureCollection"
    if not is_collection:
        assert rows is None
    else:  # a row per feature, or refused as a whole
        assert rows is None or len(rows) == len(document.get("features", []))


@settings(max_examples=200)
@given(data=st.binary(max_size=400))
def test_any_bytes_are_rows_or_a_registry_error(data: bytes) -> None:
    geojson = rows_of("devices.geojson", data)
    assert geojson is None or geojson == [] or geojson[0][0] == "feature 1"
    csv_rows = rows_of("devices.csv", data)
    assert csv_rows is None or all(where.startswith("line ") for where, _ in csv_rows)


@settings(max_examples=300)
@given(
    header=st.lists(
        st.one_of(st.sampled_from(["device_id", "type", "lat", "code"]), st.text(max_size=6)),
        max_size=5,
    ),
    cells=st.lists(st.lists(st.text(max_size=12), max_size=7), max_size=5),
)
def test_any_csv_is_rows_or_a_registry_error(header: list[str], cells: list[list[str]]) -> None:
    text = "\n".join(
        ",".join(json.dumps(c) if "," in c else c for c in line) for line in [header, *cells]
    )
    rows = rows_of("devices.csv", text.encode())
    assert rows is None or all(where.startswith("line ") for where, _ in rows)


def test_a_point_without_coordinates_names_its_feature() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.geojson"
        feature = {
            "type": "Feature",
            "properties": {"device_id": "x"},
            "geometry": {"type": "Point"},
        }
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
        with pytest.raises(RegistryError, match=r"feature 1: a Point needs \[lon, lat\]"):
            list(read_rows(path))
