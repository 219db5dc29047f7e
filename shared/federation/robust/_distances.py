"""Compiled row-to-point squared distances in float64 (one pass over an [n, d] matrix, no temporaries)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["squared_distances"]


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _kernel(x, v, out):  # pragma: no cover - compiled
    n, d = x.shape
    for i in range(n):
        row = x[i]
        acc = 0.0
        for j in range(d):
            diff = np.float64(row[j]) - np.float64(v[j])
            acc += diff * diff
        out[i] = acc


def squared_distances(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|x_i - v|^2 for each row of a C-contiguous float32/float64 [n, d] array, summed in float64."""
    if x.ndim != 2 or v.shape != (x.shape[1],) or x.dtype != v.dtype:
        raise ValueError(f"need [n, d] and [d] arrays of one dtype, got {x.shape} {v.shape}")
    out = np.empty(x.shape[0], dtype=np.float64)
    _kernel(np.ascontiguousarray(x), np.ascontiguousarray(v), out)
    return out
