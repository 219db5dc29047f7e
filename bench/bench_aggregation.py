"""Robust aggregation speed vs Flower's ``flwr.server.strategy.aggregate`` on identical inputs.

Run: ``.venv/bin/python -m bench.bench_aggregation [--smoke] [--out PATH]``.
Inputs: an [n, d] float32 matrix from ``numpy.random.default_rng(seed).standard_normal``, made
the same way here and in Flower's venv (a digest of both proves it), one row per client, one
layer per update. Both sides get per-client updates and stack them themselves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from federation.robust.aggregators import get_aggregator
from federation.runtime.allocator import keep_freed_buffers

from bench._common import write_result
from bench._flwr import FlowerUnavailable, run_flwr_task
from bench._util import result_path, timed_adaptive

NAME = "aggregation"
FULL = {"ns": [10, 50, 200], "ds": [100_000, 1_000_000, 10_000_000], "runs": 5, "budget_s": 4.0}
SMOKE = {"ns": [10], "ds": [20_000], "runs": 5, "budget_s": 1.0}
#: Skip a cell whose stacked float32 input exceeds this (200 x 1e7 = 8 GB would not fit).
MAX_INPUT_BYTES = 4 * 1024**3
#: Our stack + sort holds about this many copies of the input (values + int64 indices).
PEAK_COPIES = 6
TRIM_RATIO = 0.1
#: Rules with a Flower counterpart, and the one Flower lacks.
FLOWER_RULES = ("fedavg", "trimmed_mean", "median", "multi_krum")
OUR_RULES = (*FLOWER_RULES, "centered_clipping")


def _inputs(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def _digest(x: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x[:, : min(x.shape[1], 4096)]).tobytes())
    h.update(np.ascontiguousarray(x[:, -min(x.shape[1], 4096) :]).tobytes())
    return h.hexdigest()


def krum_params(n: int) -> tuple[int, int]:
    """(f, m) for Multi-Krum: assume 10% Byzantine (at least 1), keep the n - f best."""
    f = max(1, n // 10)
    return f, n - f


def _available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _plan(ns: list[int], ds: list[int]) -> tuple[list[dict], list[dict]]:
    cells, skipped = [], []
    avail = _available_bytes()
    for n in ns:
        for d in ds:
            size = n * d * 4
            if size > MAX_INPUT_BYTES:
                skipped.append(
                    {
                        "n": n,
                        "d": d,
                        "reason": f"stacked input {size / 1024**3:.1f} GiB"
                        f" > {MAX_INPUT_BYTES / 1024**3:.0f} GiB cap",
                    }
                )
            elif avail is not None and size * PEAK_COPIES > avail:
                skipped.append(
                    {
                        "n": n,
                        "d": d,
                        "reason": f"needs ~{size * PEAK_COPIES / 1024**3:.0f}"
                        f" GiB, {avail / 1024**3:.0f} GiB available now",
                    }
                )
            else:
                f, m = krum_params(n)
                cells.append({"n": n, "d": d, "f": f, "m": m, "trim_ratio": TRIM_RATIO})
    return cells, skipped


def _ours(cell: dict, seed: int, runs: int, budget_s: float) -> dict[str, Any]:
    n, d = cell["n"], cell["d"]
    x = _inputs(n, d, seed)
    updates = [{"w": torch.from_numpy(x[i])} for i in range(n)]
    rules = {
        "fedavg": get_aggregator("fedavg"),
        "trimmed_mean": get_aggregator("trimmed_mean", trim_ratio=TRIM_RATIO),
        "median": get_aggregator("median"),
        "multi_krum": get_aggregator("multi_krum", f=cell["f"], m=cell["m"]),
        "centered_clipping": get_aggregator("centered_clipping"),
    }
    weights = [1.0] * n
    out: dict[str, Any] = {"digest": _digest(x), "rules": {}}
    for name, rule in rules.items():
        row, result = timed_adaptive(
            lambda r=rule: r.aggregate(updates, weights), runs=runs, budget_s=budget_s
        )
        row["head"] = [float(v) for v in result["w"][:4]]
        out["rules"][name] = row
    return out


def run(smoke: bool, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    plan = SMOKE if smoke else FULL
    # numpy (Flower) runs these single-threaded; torch's 2-thread pool stalls on a loaded box.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(plan, smoke, seed, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _run(plan: dict, smoke: bool, seed: int, threads: int) -> dict[str, Any]:
    cells, skipped = _plan(plan["ns"], plan["ds"])
    flower: dict[str, Any] = {}
    flower_error = None
    try:
        answer = run_flwr_task(
            {
                "task": "aggregate",
                "cells": cells,
                "seed": seed,
                "runs": plan["runs"],
                "budget_s": plan["budget_s"],
            },
            install=not smoke,
        )
        flower = {(c["n"], c["d"]): c for c in answer["cells"]}
        versions = answer["versions"]
    except FlowerUnavailable as exc:
        flower_error, versions = exc.reason, None
    rows = []
    for cell in cells:
        ours = _ours(cell, seed, plan["runs"], plan["budget_s"])
        theirs = flower.get((cell["n"], cell["d"]))
        row: dict[str, Any] = {
            **cell,
            "input_mb": cell["n"] * cell["d"] * 4 / 1024**2,
            "ours": ours["rules"],
        }
        fed = ours["rules"]["fedavg"]["median_s"]
        row["trimmed_over_mean"] = ours["rules"]["trimmed_mean"]["median_s"] / fed
        if theirs is not None:
            row["flower"] = theirs["rules"]
            row["inputs_identical"] = theirs["digest"] == ours["digest"]
            row["speedup_vs_flower"] = {
                r: theirs["rules"][r]["median_s"] / ours["rules"][r]["median_s"]
                for r in FLOWER_RULES
            }
            row["outputs_agree"] = {
                r: bool(
                    np.allclose(
                        ours["rules"][r]["head"], theirs["rules"][r]["head"], rtol=1e-4, atol=1e-5
                    )
                )
                for r in FLOWER_RULES
            }
        rows.append(row)
        print(
            f"n={cell['n']:>4} d={cell['d']:>9}  "
            + "  ".join(f"{r} {ours['rules'][r]['median_s'] * 1e3:8.1f} ms" for r in OUR_RULES)
            + (
                "  x" + " ".join(f"{v:.2f}" for v in row["speedup_vs_flower"].values())
                if "speedup_vs_flower" in row
                else ""
            ),
            flush=True,
        )
    speedups = [v for r in rows for v in r.get("speedup_vs_flower", {}).values()]
    return {
        "smoke": smoke,
        "method": "per cell and rule: one warm-up, then the median of 5 timed calls, more (up to"
        " 200) until 0.2 s is sampled, fewer when one call exceeds the budget ('runs' says how"
        " many); the same rule on both sides. Both processes run with the services' allocator"
        " thresholds (federation.runtime.allocator). Inputs: one float32 row per"
        " client from numpy default_rng(seed).standard_normal, identical on both sides"
        " (digest compared). Ours: federation.robust.aggregators via get_aggregator,"
        " including the stacking of per-client dicts. Flower: flwr.server.strategy."
        f"aggregate in its own venv. trim_ratio={TRIM_RATIO}; Multi-Krum f=max(1,n//10),"
        " m=n-f. Centered clipping has no Flower counterpart.",
        "torch_threads": threads,
        "flower_versions": versions,
        "flower_error": flower_error,
        "targets": {"speedup_vs_flower_min": 2.0, "trimmed_over_mean_max": 3.0},
        "cells": rows,
        "skipped": skipped,
        "summary": {
            "min_speedup_vs_flower": min(speedups) if speedups else None,
            "max_trimmed_over_mean": max(r["trimmed_over_mean"] for r in rows),
            "all_rules_2x_faster": bool(speedups) and min(speedups) >= 2.0,
            "trimmed_within_3x_mean": max(r["trimmed_over_mean"] for r in rows) <= 3.0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (ours)")
    args = parser.parse_args(argv)
    keep_freed_buffers()  # as every service process does at start
    data = run(args.smoke, threads=args.threads)
    path = write_result(NAME, data, args.out or result_path(NAME, args.smoke))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
