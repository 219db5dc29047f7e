"""Runs inside bench/.flwr-venv: times Flower's serialisation and aggregation, prints JSON.

Reads one task as JSON on stdin, writes one JSON line on stdout. Self-contained (numpy + flwr
only) because it runs in Flower's own virtualenv, not ours.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time

import numpy as np

MB = 1024 * 1024


#: Calls of a fast function are repeated until this much time is sampled (at most MAX_RUNS),
#: so a sub-millisecond median is not decided by five calls (same rule as bench/_util.py).
MIN_SAMPLED_S = 0.2
MAX_RUNS = 200


def _timed(fn, runs: int, budget_s: float) -> dict:
    """Median/min/max of ``runs`` calls (more while under MIN_SAMPLED_S in total); fewer calls
    (stated) when one call exceeds the budget."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if first > budget_s:
        times = [first]  # too slow to repeat: the one call is the measurement
    else:
        n = runs if first * runs < 5 * budget_s else max(3, int(5 * budget_s / first))
        times = []
        while len(times) < min(n, runs) or (sum(times) < MIN_SAMPLED_S and len(times) < MAX_RUNS):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
        "_result": result,
    }


def _update(size_bytes: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    small = [rng.standard_normal(256, dtype=np.float32) for _ in range(4)]
    rest = max(size_bytes // 4 - 4 * 256, 1)
    return [rng.standard_normal(rest, dtype=np.float32), *small]


def serde(task: dict) -> dict:
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    rows = []
    for size_mb in task["sizes_mb"]:
        arrays = _update(int(size_mb * MB))
        nbytes = sum(a.nbytes for a in arrays)

        def round_trip(arrays=arrays) -> None:
            back = parameters_to_ndarrays(ndarrays_to_parameters(arrays))
            assert back[0].shape == arrays[0].shape

        row = _timed(round_trip, task.get("runs", 5), task.get("budget_s", 30.0))
        row.pop("_result")
        row["size_mb"] = round(nbytes / MB, 2)
        rows.append(row)
    return {"serde": rows}


def inputs(n: int, d: int, seed: int) -> np.ndarray:
    """The benchmark's update matrix; the same generator call as the main venv makes."""
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def digest(x: np.ndarray) -> str:
    """A cheap fingerprint of the inputs so both sides can prove they used the same ones."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x[:, : min(x.shape[1], 4096)]).tobytes())
    h.update(np.ascontiguousarray(x[:, -min(x.shape[1], 4096) :]).tobytes())
    return h.hexdigest()


def _cell(cell: dict, seed: int, runs: int, budget_s: float) -> dict:
    from flwr.server.strategy import aggregate as agg

    n, d = cell["n"], cell["d"]
    x = inputs(n, d, seed)
    results = [([x[i]], 1) for i in range(n)]
    rules = {
        "fedavg": lambda: agg.aggregate(results),
        "trimmed_mean": lambda: agg.aggregate_trimmed_avg(results, cell["trim_ratio"]),
        "median": lambda: agg.aggregate_median(results),
        "multi_krum": lambda: agg.aggregate_krum(results, cell["f"], cell["m"]),
    }
    out: dict = {"n": n, "d": d, "digest": digest(x), "rules": {}}
    for name, fn in rules.items():
        row = _timed(fn, runs, budget_s)
        row["head"] = [float(v) for v in np.asarray(row.pop("_result")[0])[:4]]
        out["rules"][name] = row
    return out


def aggregate(task: dict) -> dict:
    runs, budget_s, seed = task.get("runs", 5), task.get("budget_s", 10.0), task.get("seed", 0)
    return {"cells": [_cell(cell, seed, runs, budget_s) for cell in task["cells"]]}


def main() -> int:
    task = json.loads(sys.stdin.read())
    handlers = {"serde": serde, "aggregate": aggregate}
    answer = handlers[task["task"]](task)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
