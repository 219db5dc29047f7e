"""Federated normalisation per operating regime against pooled, on a multi-regime fleet.

Run: ``nice -n 10 .venv/bin/python -m bench.fednorm_regimes [--data DIR] [--seeds 0] [--rounds 5]``
Writes ``bench/results/fednorm_regimes.json``.

C-MAPSS FD002 (``--data`` its directory; six operating regimes) when present, else the
synthetic fleet with six regimes (``synthetic_fleet(n_regimes=6)``, 60 training engines).
Protocol as bench/fednorm_fd001.py (3 profile-split factories, FedAvg of the CNN, a 10 %
validation carve-out, the best validation round evaluated on the test engines' last windows),
both arms federated, with the same seeds, partitions and schedule; they differ only in what
round 0 sums: per regime (each window row's settings kept, ``window_stats`` per regime,
``robust_merge``) or pooled (the settings dropped: one regime, as a partition without
settings has).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from federation.ml import carve_validation, load_cmapss, partition_engines, prepare, split_partition
from federation.ml.data import synthetic_fleet
from federation.ml.fedstats import window_stats
from federation.ml.robust_stats import robust_merge

from bench._common import write_result
from bench.fednorm_fd001 import run_arms

PLAN = {"rounds": 5, "batch_size": 256, "learning_rate": 2e-3, "max_batches": None, "sites": 3}


def _load(data_dir: Path | None, seed: int) -> tuple[Any, str]:
    if data_dir is not None:
        data, source = load_cmapss(data_dir), str(data_dir)
    else:
        data = synthetic_fleet(60, seed=seed, n_regimes=6)
        source = f"synthetic fleet, 6 regimes, 60 engines (seed {seed})"
    return prepare(data, normalise=False, keep_settings=True), source


def _seed_row(data_dir: Path | None, plan: dict[str, Any], seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    raw, _ = _load(data_dir, seed)
    fit, val_ids = carve_validation(raw.train.engines, 0.1, seed=seed)
    groups = partition_engines(fit, plan["sites"], seed=seed, mode="profile",
                               lifetimes=raw.train_lifetimes)  # fmt: skip
    sites = split_partition(raw.train.select(fit), groups)
    dec = list(raw.train.decimals)
    per_regime = robust_merge({f"f{i}": window_stats(s.X, raw.features, s.settings, dec)
                               for i, s in enumerate(sites)}).normalizer  # fmt: skip
    pooled = robust_merge({f"f{i}": window_stats(s.X, raw.features)
                           for i, s in enumerate(sites)}).normalizer  # fmt: skip
    row: dict[str, Any] = {"seed": seed, "regimes": len(per_regime.regimes),
                           "site_windows": [len(s) for s in sites]}  # fmt: skip
    row.update(run_arms({"per_regime": per_regime, "pooled": pooled}, sites, val_ids, plan, raw,
                        seed))  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="C-MAPSS FD002/FD004 directory")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=PLAN["rounds"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = {**PLAN, "rounds": args.rounds}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    started = time.perf_counter()
    rows = [_seed_row(args.data, plan, s) for s in seeds]
    summary = {arm: statistics.mean(r[arm]["test_rmse"] for r in rows)
               for arm in ("per_regime", "pooled")}  # fmt: skip
    result = {"source": _load(args.data, seeds[0])[1], "plan": plan, "seeds": seeds,
              "seconds": time.perf_counter() - started, "per_seed": rows,
              "summary": {**summary, "pooled_over_per_regime":
                          summary["pooled"] / summary["per_regime"]}}  # fmt: skip
    path = write_result("fednorm_regimes", result, args.out)
    print(f"per-regime {summary['per_regime']:.3f}  pooled {summary['pooled']:.3f}  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
