"""A factory's private partition as PySyft sees it: validation and the public mock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.errors import DatasiteError

__all__ = ["DATASET_NAME", "FEATURES", "LABELS", "CAPABILITIES", "check_partition", "make_mock"]

DATASET_NAME = "pdm_partition"
FEATURES = "features"
LABELS = "labels"
CAPABILITIES = "capabilities"


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


def make_mock(X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic stand-ins with the same shapes and dtypes and no real row or label."""
    rng = np.random.default_rng(seed)
    mock_X = rng.standard_normal(X.shape).astype(np.float32)
    lo, hi = float(y.min()), float(y.max())
    mock_y = rng.uniform(lo, hi if hi > lo else lo + 1.0, size=y.shape).astype(np.float32)
    return mock_X, mock_y
