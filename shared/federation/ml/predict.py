"""Remaining useful life per unit from a bundle and a factory's table (same checks as import)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from federation.ml.bundle import Bundle, BundleError
from federation.ml.data import DatasetError, Normalizer, make_windows
from federation.ml.importer import normalise
from federation.ml.tabular import DataSchema, SensorTable, read_table, schema_from_dict

__all__ = ["bundle_schema", "prediction_document", "predict_units", "read_windows"]


def bundle_schema(bundle: Bundle, schema: DataSchema | None) -> DataSchema:
    """The schema to read with (given, else the bundle's), checked against the model's inputs."""
    if schema is None:
        raw = bundle.manifest.get("schema")
        if not raw:
            raise BundleError(f"{bundle.path}: the bundle records no data schema: pass --schema")
        try:
            schema = schema_from_dict(raw, name=f"{bundle.path} (schema)")
        except DatasetError as exc:
            raise BundleError(f"{bundle.path}: its schema is not usable: {exc}") from exc
    features = bundle.manifest.get("features")
    if features is not None and list(schema.sensors) != list(features):
        raise BundleError(
            f"the schema's sensors {list(schema.sensors)} are not the model's features {features} "
            f"(same names, same order)"
        )
    if len(schema.sensors) != bundle.n_features:
        raise BundleError(f"the schema names {len(schema.sensors)} sensors, the model takes "
                          f"{bundle.n_features}")  # fmt: skip
    return dataclasses.replace(schema, window=bundle.window, label="none", rul_column=None)


def _normalizer(bundle: Bundle, normalizer: Normalizer | None) -> Normalizer:
    if normalizer is not None:
        return normalizer
    raw = bundle.manifest.get("normalizer")
    if not raw:
        raise BundleError(f"{bundle.path}: the bundle records no normalisation statistics "
                          f"(factories normalised on their own): pass --normalizer")  # fmt: skip
    try:
        return Normalizer.from_dict(raw)
    except DatasetError as exc:
        raise BundleError(
            f"{bundle.path}: its normalisation statistics are not usable: {exc}"
        ) from exc


def read_windows(
    bundle: Bundle,
    data: str | Path,
    *,
    schema: DataSchema | None = None,
    normalizer: Normalizer | None = None,
    last_only: bool = True,
) -> tuple[np.ndarray, np.ndarray, SensorTable]:
    """(windows, unit code of each, the validated table) of a file, ready for the bundle's model."""
    schema = bundle_schema(bundle, schema)
    table = read_table(data, schema, with_label=False)
    x = normalise(table, schema, _normalizer(bundle, normalizer))
    X, _, codes = make_windows(x, table.units, None, bundle.window, last_only=last_only)
    return X, codes, table


def predict_units(
    bundle: Bundle,
    data: str | Path,
    *,
    schema: DataSchema | None = None,
    normalizer: Normalizer | None = None,
) -> list[dict[str, Any]]:
    """One row per unit: its id as in the file, its last cycle, and the predicted RUL in cycles.

    RUL is clipped to [0, the bundle's rul_cap]: the model never saw a label above the cap (a
    prediction there means "healthy, at least this long") nor below zero.
    """
    from federation.ml.train import predict

    X, codes, table = read_windows(bundle, data, schema=schema, normalizer=normalizer)
    rul = predict(bundle.model, X)
    cap = bundle.manifest.get("rul_cap")
    rul = np.clip(rul, 0.0, float(cap) if cap else None)
    last = np.zeros(len(table.unit_ids), np.int64)
    np.maximum.at(last, table.units, table.cycles)
    return [
        {"unit": table.unit_ids[c], "last_cycle": int(last[c]), "rul": round(float(r), 2)}
        for c, r in zip(codes.tolist(), rul.tolist(), strict=True)
    ]


def prediction_document(bundle: Bundle, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON answer for ``rows`` of predict_units: campaign, unit of RUL, cap, units."""
    return {
        "campaign_id": bundle.manifest.get("campaign_id"),
        "rul_unit": "cycles",
        "rul_cap": bundle.manifest.get("rul_cap"),
        "units": rows,
    }
