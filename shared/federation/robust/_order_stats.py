"""Coordinate-wise order statistics (trimmed mean, median) of n client rows by compiled sorting networks.

Each block of coordinates is gathered from the n rows into a cache-sized buffer and sorted down the client axis by
Batcher's odd-even merge network: every compare-exchange is a min/max over a whole row of the
block, so the work is branch-free and SIMD across coordinates, unlike a per-coordinate sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numba
import numpy as np
from numba.typed import List

__all__ = ["batcher_network", "sorted_range_mean", "warm_up"]


def batcher_network(n: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs (lo, hi) of Batcher's odd-even merge sort for n inputs.

    Built for the next power of two and pruned to pairs inside [0, n): the padding would be
    +inf at the top positions, where every pruned pair is a no-op.
    """
    if n < 1:
        raise ValueError(f"a sorting network needs n >= 1, got {n}")
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            j = k % p
            while j + k < size:
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
                j += 2 * k
            k //= 2
        p *= 2
    return pairs


def _prune(pairs: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """Drop pairs that cannot change which values end up in positions [start, stop).

    Positions fall in three regions: below ``start``, the range, from ``stop`` up. Walking
    backwards, a pair whose ends lie in one region and that no later kept pair reads only
    permutes values inside that region (it commutes to the end of the network), so it is dropped.
    """

    def region(i: int) -> int:
        return 0 if i < start else (1 if i < stop else 2)

    kept: list[tuple[int, int]] = []
    touched: set[int] = set()
    for a, b in reversed(pairs):
        if region(a) == region(b) and a not in touched and b not in touched:
            continue
        kept.append((a, b))
        touched.update((a, b))
    return kept[::-1]


@lru_cache(maxsize=256)
def _network_arrays(n: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = _prune(batcher_network(n), start, stop)
    lo = np.array([a for a, _ in pairs], dtype=np.int64)
    hi = np.array([b for _, b in pairs], dtype=np.int64)
    return lo, hi


@numba.njit(cache=True, nogil=True)
def _range_mean_kernel(rows, lo, hi, start, stop, block, out, nan_probe):  # pragma: no cover - compiled
    n = len(rows)
    d = out.shape[0]
    buf = np.empty((n, block), dtype=out.dtype)
    acc = np.empty(block, dtype=np.float64)
    scale = 1.0 / (stop - start)
    for c0 in range(0, d, block):
        width = min(block, d - c0)
        for r in range(n):  # gather this block of every client's row into the buffer
            src = rows[r][c0 : c0 + width]
            dst = buf[r]
            for j in range(width):
                v = src[j]
                dst[j] = v
                nan_probe[j] += v - v  # stays 0 unless some v is NaN or +-inf
        for t in range(lo.shape[0]):  # the network: min/max of two whole buffer rows
            row_a = buf[lo[t]]
            row_b = buf[hi[t]]
            for j in range(width):
                u = row_a[j]
                v = row_b[j]
                row_a[j] = min(u, v)
                row_b[j] = max(u, v)
        for j in range(width):
            acc[j] = 0.0
        for r in range(start, stop):
            row = buf[r]
            for j in range(width):
                acc[j] += row[j]
        for j in range(width):
            out[c0 + j] = acc[j] * scale


def _block_columns(n: int, itemsize: int) -> int:
    """Columns per block: the [n, block] buffer stays near 64 KiB (L2-resident), 256..2048."""
    block = 2048
    while block > 256 and n * block * itemsize > 64 * 1024:
        block //= 2
    return block


def sorted_range_mean(
    rows: Sequence[np.ndarray], start: int, stop: int
) -> tuple[np.ndarray, bool]:
    """Per coordinate: the mean of the sorted values at positions [start, stop) of the n rows.

    ``rows`` are n 1-D float32 or float64 arrays of one length and dtype (e.g. the flattened
    updates of n clients, or the rows of a matrix; nothing is stacked). Returns
    (result, all_finite): all_finite is False when any input is NaN or infinite.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("need at least one row")
    first = rows[0]
    if first.ndim != 1 or first.dtype not in (np.float32, np.float64):
        raise ValueError(f"need 1-D float32/float64 rows, got {first.dtype} {first.shape}")
    for i, row in enumerate(rows):
        if row.shape != first.shape or row.dtype != first.dtype:
            raise ValueError(f"row {i} is {row.dtype} {row.shape}, row 0 is {first.dtype} {first.shape}")
    if not 0 <= start < stop <= n:
        raise ValueError(f"bad position range [{start}, {stop}) for {n} rows")
    d = first.shape[0]
    out = np.empty(d, dtype=first.dtype)
    if d == 0:
        return out, True
    typed = List()
    for row in rows:  # the kernel wants writable C-contiguous rows of a single array type
        typed.append(row if row.flags.c_contiguous and row.flags.writeable else row.copy())
    lo, hi = _network_arrays(n, start, stop)
    block = min(_block_columns(n, first.itemsize), d)
    probe = np.zeros(block, dtype=first.dtype)
    _range_mean_kernel(typed, lo, hi, start, stop, block, out, probe)
    return out, bool(np.isfinite(probe).all())


def warm_up() -> None:
    """Load (or compile) the kernels for float32 and float64 now, not in the first round (~1 s)."""
    for dtype in (np.float32, np.float64):
        sorted_range_mean([np.zeros(4, dtype=dtype)] * 3, 1, 2)
