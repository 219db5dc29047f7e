"""A factory's private partition as PySyft sees it: validation and the public mock."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.errors import DatasiteError

__all__ = [
    "DATASET_NAME",
    "FEATURES",
    "LABELS",
    "CAPABILITIES",
    "ENV_REGIME_DECIMALS",
    "check_partition",
    "check_settings",
    "job_windows",
    "make_mock",
    "regime_decimals",
]

DATASET_NAME = "pdm_partition"
FEATURES = "features"
LABELS = "labels"
CAPABILITIES = "capabilities"
#: Set in the datasite's server process: the regime decimals of the operating settings its
#: features asset carries after the sensors (JSON list; unset or [] = no settings, one regime).
ENV_REGIME_DECIMALS = "PDMFED_DATASITE_REGIME_DECIMALS"


def check_partition(partition: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [n, window, features], y float32 [n]) or DatasiteError saying what is wrong."""
    if isinstance(partition, Mapping):
        if "X" not in partition or "y" not in partition:
            raise DatasiteError("partition must have arrays 'X' and 'y'")
        X, y = partition["X"], partition["y"]
    elif isinstance(partition, tuple | list) and len(partition) == 2:
        X, y = partition
    else:
        raise DatasiteError("partition must be {'X': ..., 'y': ...} or (X, y)")
    try:
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.ascontiguousarray(y, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasiteError(f"partition arrays are not numeric: {exc}") from exc
    if X.ndim != 3 or y.ndim != 1:
        raise DatasiteError(f"X must be [n, window, features] and y [n]; got {X.shape}, {y.shape}")
    if X.shape[0] == 0 or X.shape[0] != y.shape[0]:
        raise DatasiteError(f"X has {X.shape[0]} windows and y {y.shape[0]} labels (need n > 0)")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DatasiteError("partition contains NaN or infinite values")
    return X, y


def make_mock(
    X: np.ndarray, y: np.ndarray, seed: int = 0, settings_channels: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic stand-ins with the same shapes and dtypes and no real row or label.

    The last ``settings_channels`` channels of X (the operating settings) are zero in the mock:
    one stand-in regime. PySyft runs every approved job on the mock as well as on the data, and
    random settings would make each mock row a regime of its own.
    """
    rng = np.random.default_rng(seed)
    mock_X = rng.standard_normal(X.shape).astype(np.float32)
    if settings_channels:
        mock_X[..., -settings_channels:] = 0.0
    lo, hi = float(y.min()), float(y.max())
    mock_y = rng.uniform(lo, hi if hi > lo else lo + 1.0, size=y.shape).astype(np.float32)
    return mock_X, mock_y


def check_settings(partition: Any, X: np.ndarray) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """(settings float32 [n, window, S], regime decimals) of a partition that has them, else
    (None, ()): each window row's operating settings, checked against the windows X."""
    if not isinstance(partition, Mapping) or partition.get("settings") is None:
        return None, ()
    try:
        s = np.ascontiguousarray(partition["settings"], dtype=np.float32)
        dec = tuple(int(d) for d in np.asarray(partition.get("decimals", [])).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise DatasiteError(f"partition settings are not numeric: {exc}") from exc
    if s.ndim != 3 or s.shape[:2] != X.shape[:2] or s.shape[2] != len(dec) or not dec:
        raise DatasiteError(f"settings must be [n, window, S] next to X {X.shape} with S regime "
                            f"decimals; got {s.shape} and {len(dec)} decimals")  # fmt: skip
    if any(not 0 <= d <= 6 for d in dec) or not np.isfinite(s).all():
        raise DatasiteError("partition settings: decimals must be 0..6 and values finite")
    return s, dec


def regime_decimals() -> tuple[int, ...]:
    """The regime decimals this datasite's features asset carries settings for (its env)."""
    raw = os.environ.get(ENV_REGIME_DECIMALS, "")
    try:
        dec = tuple(int(d) for d in json.loads(raw)) if raw else ()
    except (TypeError, ValueError) as exc:
        raise DatasiteError(f"{ENV_REGIME_DECIMALS} is not a JSON list of ints: {raw!r}") from exc
    return dec


def job_windows(features: Any, decimals: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(sensor windows, settings windows or None) of the features asset: its last
    len(decimals) channels are the operating settings when the datasite declares them."""
    X = np.asarray(features)
    if X.ndim != 3:
        raise DatasiteError(f"the partition's features are not windows (n, window, F): {X.shape}")
    if not decimals:
        return X, None
    if X.shape[2] <= len(decimals):
        raise DatasiteError(f"features have {X.shape[2]} channels, no room for "
                            f"{len(decimals)} settings after the sensors")  # fmt: skip
    return X[..., : -len(decimals)], X[..., -len(decimals) :]
