"""Coordinate-wise order statistics (trimmed mean, median) of n client rows by compiled sorting networks.

For a symmetric range [k, n - k) (trimmed mean, median) of up to ``REGISTER_MAX_N`` rows, a
kernel generated for (n, k) reads each coordinate's n values into registers, runs Batcher's
odd-even merge network (pruned to the range) on them as straight-line min/max code and stores
the range's mean: the compiler vectorises the loop over coordinates, so every compare-exchange
is one SIMD min and max on registers, and memory sees n loads and one store per coordinate.
For more rows (spills would dominate, compiling takes minutes) or any other range, each block of
coordinates is gathered from the n rows into a cache-sized buffer and the network runs down the
client axis as min/max over whole buffer rows. Either way the work is branch-free and SIMD
across coordinates, unlike a per-coordinate sort.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import llvmlite.binding as llvm
import numba
import numpy as np
from numba.typed import List

__all__ = ["batcher_network", "sorted_range_mean", "weighted_row_sum", "warm_up", "REGISTER_MAX_N"]

#: Largest n served by a generated register kernel (compiling one takes ~0.3 s at n = 10, ~4 s
#: at n = 64, once per machine: the code is cached on disk).
REGISTER_MAX_N = 64


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
def _range_mean_kernel(
    rows, lo, hi, start, stop, block, out, nan_probe
):  # pragma: no cover - compiled
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


# --- generated register kernels ------------------------------------------------------------
_GENERATED_VERSION = 6
#: (n, k) -> compiled kernel; k = the rows trimmed at each end for a symmetric range
#: [k, n - k) (trimmed mean, median: network pruned, sum hard-wired), or SUM for a weighted sum
#: without sorting (FedAvg). Other ranges take the blocked kernel.
SUM = -1
_generated: dict[tuple[int, int], Callable] = {}
_generated_lock = threading.Lock()


def _kernel_source(n: int, k: int, cache: bool = True) -> str:
    """Python source of the register kernel for n rows: load, network, sum of the range, store."""
    xs = [f"x{i}" for i in range(n)]
    if k == SUM:
        pairs, args = [], "rows, w, out"
        weights = [f"    w{i} = w[{i}]" for i in range(n)]
        total = " + ".join(f"w{i} * x{i}" for i in range(n))
    else:
        pairs, args = _prune(batcher_network(n), k, n - k), "rows, out"
        weights = [f"    scale = {1.0 / (n - 2 * k)!r}"]
        total = "(" + " + ".join(xs[k : n - k]) + ") * scale"
    lines = [
        f"# generated by federation.robust._order_stats (version {_GENERATED_VERSION}):"
        f" n = {n}, trimmed per end = {k}",
        "import numba",
        "",
        "",
        f"@numba.njit(cache={cache}, nogil=True)",
        f"def kernel({args}):  # pragma: no cover - compiled",
        *(f"    r{i} = rows[{i}]" for i in range(n)),
        *weights,
        "    for j in range(out.shape[0]):",
        *(f"        x{i} = r{i}[j]" for i in range(n)),
        # 0 for finite inputs, NaN as soon as one is NaN or infinite: it poisons the output
        # (a plain weighted sum needs no probe: every row it reads reaches the output)
        *([] if k == SUM else ["        z = " + " + ".join(f"({x} - {x})" for x in xs)]),
        *(f"        x{a}, x{b} = min(x{a}, x{b}), max(x{a}, x{b})" for a, b in pairs),
        f"        out[j] = {total}" + ("" if k == SUM else " + z"),
        "",
    ]
    return "\n".join(lines)


def _generated_dir() -> Path | None:
    """This user's directory for the generated modules (numba caches their machine code beside
    them): under NUMBA_CACHE_DIR, else the user's cache dir, else a per-user temp dir. Code is
    imported from it, so it must belong to this user and be writable by no one else; None when
    no such directory can be had (the kernels are then compiled from memory)."""
    name = f"pdmfed-networks-v{_GENERATED_VERSION}"
    uid = os.getuid() if hasattr(os, "getuid") else None
    candidates = [
        os.environ.get("NUMBA_CACHE_DIR"),
        os.environ.get("XDG_CACHE_HOME")
        or (os.path.expanduser("~/.cache") if "HOME" in os.environ else None),
        os.path.join(tempfile.gettempdir(), f"pdmfed-{uid}"),
    ]
    for base in filter(None, candidates):
        path = Path(base) / name
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = path.stat()
        except OSError:
            continue
        private = (uid is None or st.st_uid == uid) and not st.st_mode & 0o022
        if private and os.access(path, os.W_OK):
            return path
    return None


def _load_generated(n: int, k: int) -> Callable:
    stem = f"sum_{n}" if k == SUM else f"network_{n}_trim_{k}"
    folder = _generated_dir()
    if folder is None:  # nowhere to cache: compile from memory, once per process
        namespace: dict = {}
        code = compile(_kernel_source(n, k, cache=False), f"<pdmfed {stem}>", "exec")
        exec(code, namespace)  # noqa: S102 - our own generated text
        return namespace["kernel"]
    source = _kernel_source(n, k)
    path = folder / f"{stem}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)  # atomic: a concurrent process sees the old or the new whole file
    name = f"pdmfed_v{_GENERATED_VERSION}_{stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba finds the module by name when it loads cached code
    spec.loader.exec_module(module)
    return module.kernel


def _register_kernel(n: int, k: int) -> Callable:
    """The compiled register kernel for (n, k) (generated, then cached in-process and on disk)."""
    with _generated_lock:
        if (n, k) not in _generated:
            _allow_wide_runtime_checks()
            _generated[(n, k)] = _load_generated(n, k)
        return _generated[(n, k)]


@lru_cache(maxsize=1)
def _allow_wide_runtime_checks() -> None:
    """Let LLVM vectorise a loop that reads up to REGISTER_MAX_N arrays: it checks them for
    overlap with the output at run time, but by default gives up beyond 8 such checks."""
    llvm.set_option("pdmfed", f"-runtime-memory-check-threshold={4 * REGISTER_MAX_N}")


def _typed_rows(rows: Sequence[np.ndarray]) -> List:
    """The rows as a numba typed list of writable C-contiguous arrays (what the kernels take)."""
    typed = List()
    for row in rows:
        typed.append(row if row.flags.c_contiguous and row.flags.writeable else row.copy())
    return typed


def _finite(out: np.ndarray) -> bool:
    """No NaN/Inf in a register kernel's output (a non-finite input poisons its coordinate):
    one sum, and the element-wise check only when the sum itself overflowed."""
    return math.isfinite(float(out.sum())) or bool(np.isfinite(out).all())


def _register_trimmed_mean(rows: List, k: int) -> tuple[np.ndarray, bool]:
    """Mean of the sorted positions [k, n - k) of the rows, by the register kernel for (n, k)."""
    first = rows[0]
    out = np.empty(first.shape[0], dtype=first.dtype)  # numpy's allocation: huge pages when large
    _register_kernel(len(rows), k)(rows, out)
    return out, _finite(out)


def _row_groups(n: int) -> list[tuple[int, int]]:
    """[start, stop) of the fewest near-equal groups of at most REGISTER_MAX_N rows (so a cohort
    of any size needs at most two kernel sizes)."""
    count = -(-n // REGISTER_MAX_N)
    base, extra = divmod(n, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def weighted_row_sum(
    rows: Sequence[np.ndarray], weights: Sequence[float]
) -> tuple[np.ndarray, bool] | None:
    """sum_i weights[i] * rows[i], reading each row once (n loads and one store per coordinate;
    above REGISTER_MAX_N rows, one pass per group of rows added into the first), in the rows'
    precision, with (result, all_finite); None when the rows do not suit a register kernel
    (one row, mixed dtypes or lengths, not float32/float64)."""
    n = len(rows)
    if n < 2 or len(weights) != n or REGISTER_MAX_N < 2:
        return None
    first = rows[0]
    if first.ndim != 1 or first.dtype not in (np.float32, np.float64):
        return None
    for row in rows:
        if row.shape != first.shape or row.dtype != first.dtype:
            return None
    w = np.asarray(weights, dtype=first.dtype)
    out = np.empty(first.shape[0], dtype=first.dtype)
    part = np.empty_like(out) if n > REGISTER_MAX_N else out
    for i, (start, stop) in enumerate(_row_groups(n) if out.size else []):
        target = out if i == 0 else part
        if stop - start == 1:
            np.multiply(rows[start], w[start], out=target)
        else:
            kernel = _register_kernel(stop - start, SUM)
            kernel(_typed_rows(rows[start:stop]), w[start:stop], target)
        if i > 0:
            np.add(out, part, out=out)
    return out, _finite(out)


def _block_columns(n: int, itemsize: int) -> int:
    """Columns per block: the [n, block] buffer stays within 512 KiB (L2-resident on current
    x86 cores), 256..2048. At n = 200 float32 that is 512 columns: 10-20 % faster than 256
    (measured on a 2 MiB-L2 Xeon), no change at n = 80."""
    block = 2048
    while block > 256 and n * block * itemsize > 512 * 1024:
        block //= 2
    return block


def sorted_range_mean(rows: Sequence[np.ndarray], start: int, stop: int) -> tuple[np.ndarray, bool]:
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
            raise ValueError(
                f"row {i} is {row.dtype} {row.shape}, row 0 is {first.dtype} {first.shape}"
            )
    if not 0 <= start < stop <= n:
        raise ValueError(f"bad position range [{start}, {stop}) for {n} rows")
    d = first.shape[0]
    out = np.empty(d, dtype=first.dtype)
    if d == 0:
        return out, True
    typed = _typed_rows(rows)
    if 2 <= n <= REGISTER_MAX_N and start + stop == n:  # symmetric: trimmed mean, median
        return _register_trimmed_mean(typed, start)
    lo, hi = _network_arrays(n, start, stop)
    block = min(_block_columns(n, first.itemsize), d)
    probe = np.zeros(block, dtype=first.dtype)
    _range_mean_kernel(typed, lo, hi, start, stop, block, out, probe)
    return out, bool(np.isfinite(probe).all())


#: Cohort sizes whose register kernels a service loads at start (cross-silo federations).
WARM_UP_NS = tuple(range(2, 11))


def warm_up(ns: Sequence[int] = WARM_UP_NS) -> None:
    """Load (or compile) the kernels now, not in the first round: the blocked kernel for float32
    and float64, the register kernels of ``ns`` rows for float32 (from the disk cache after the
    first time; ~0.2 s each to compile)."""
    for dtype in (np.float32, np.float64):
        rows = List([np.zeros(4, dtype=dtype)] * 3)
        lo, hi = _network_arrays(3, 1, 2)
        _range_mean_kernel(
            rows, lo, hi, 1, 2, 4, np.empty(4, dtype=dtype), np.zeros(4, dtype=dtype)
        )
    for n in ns:  # the median and the trimmed mean at 10% (one row per end from 5 rows up)
        if 2 <= n <= REGISTER_MAX_N:
            rows = _typed_rows([np.zeros(4, dtype=np.float32)] * n)
            for k in {(n - 1) // 2, math.ceil(n / 10) if n >= 5 else 0}:
                _register_trimmed_mean(rows, k)
            weighted_row_sum(rows, [1.0 / n] * n)  # FedAvg, Multi-Krum's average
