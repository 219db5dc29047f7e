"""Federated against central feature normalisation on C-MAPSS FD001: held-out RMSE, same seeds.

Run: ``.venv/bin/python -m bench.fednorm_fd001 [--smoke] [--seeds 0,1,2] [--rounds 10] [--out PATH]``
(one process per seed, one torch thread each; both arms of a seed run in its process).
Writes ``bench/results/fednorm_fd001.json`` (``fednorm_fd001_smoke.json`` with --smoke).

Protocol (bench/quality_fd001.py's federated arm): FD001's training engines minus a 10 %
validation carve-out are split across 3 factories by degradation profile; each round every
factory trains one local epoch of the CNN from the global model, the server takes FedAvg; the
round with the lowest validation RMSE is evaluated once on the 100 test engines (last window,
RUL capped at 125). Two arms run side by side with the same seeds, partitions and schedule and
differ only in the z-scoring statistics:

* central: fitted on every training row of the file before partitioning (what a real
  federation cannot do; the baseline);
* federated: each factory's exact count / sum / sum of squares over the sensor rows of its
  own raw windows (``federation.ml.fedstats.window_stats``, each row once), merged robustly
  (``federation.ml.robust_stats.robust_merge``) as a campaign's round 0 merges them (no
  validation or test engine contributes).

Bar: mean federated test RMSE over the seeds within 2 % of the central one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from federation.ml import (
    Partition,
    carve_validation,
    evaluate,
    fedavg,
    load_cmapss,
    partition_engines,
    prepare,
    split_partition,
    synthetic_fleet,
    train_local,
)
from federation.ml.fedstats import window_stats
from federation.ml.models import build_model
from federation.ml.robust_stats import robust_merge

from bench._common import RESULTS_DIR, write_result

FD001_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmapss" / "FD001"
RATIO_BAR = 1.02
MODEL = "cnn"
FULL = {"rounds": 10, "batch_size": 256, "learning_rate": 2e-3, "max_batches": None, "sites": 3}
SMOKE = {"rounds": 2, "batch_size": 256, "learning_rate": 2e-3, "max_batches": 6, "sites": 3}


def _normalised(part: Partition, norm: Any) -> Partition:
    """The partition z-scored (per regime when it keeps settings and ``norm`` is per regime)."""
    return Partition(norm.transform_windows(part.X, part.settings), part.y, part.engine_ids)


def _federated_run(sites, val, test, plan, prepared, seed) -> dict[str, Any]:
    cfg = {"model_type": MODEL, "epochs": 1, "learning_rate": plan["learning_rate"],
           "batch_size": plan["batch_size"], "max_batches": plan["max_batches"]}  # fmt: skip
    torch.manual_seed(seed)
    state = build_model(MODEL, prepared.n_features, prepared.window).state_dict()
    initial = evaluate(state, test.X, test.y, MODEL)["rmse"]
    best, history = None, []
    for rnd in range(1, plan["rounds"] + 1):
        results = [train_local(state, s.X, s.y, cfg, seed=seed * 1000 + rnd * 10 + i)
                   for i, s in enumerate(sites)]  # fmt: skip
        state = fedavg([r["model_update"] for r in results], [r["num_samples"] for r in results])
        val_rmse = evaluate(state, val.X, val.y, MODEL)["rmse"]
        history.append(val_rmse)
        if best is None or val_rmse < best[0]:
            best = (val_rmse, rnd, state)
    return {
        "round0_test_rmse": initial,
        "best_round": best[1],
        "val_rmse": best[0],
        "test_rmse": evaluate(best[2], test.X, test.y, MODEL)["rmse"],
        "val_history": history,
    }


def _stats_gap(central: Any, federated: Any) -> dict[str, float]:
    cm, cs = np.asarray(central.mean[0]), np.asarray(central.std[0])
    fm, fs = np.asarray(federated.mean[0]), np.asarray(federated.std[0])
    return {
        "max_mean_shift_in_central_std": float(np.max(np.abs(fm - cm) / cs)),
        "max_std_ratio_minus_1": float(np.max(np.abs(fs / cs - 1.0))),
    }


def _load(smoke: bool, data_dir: Path) -> tuple[Any, str]:
    if data_dir.is_dir():
        data, source = load_cmapss(data_dir), str(data_dir)
    elif smoke:
        data, source = synthetic_fleet(40, seed=0), "synthetic (FD001 not found)"
    else:
        raise SystemExit(f"FD001 not found at {data_dir}; the full benchmark needs the real data")
    raw = prepare(data, normalise=False)
    if len(raw.normalizer.regimes) != 1:
        raise SystemExit(f"{raw.name} has {len(raw.normalizer.regimes)} operating regimes; windows"
                         " carry no settings, so this benchmark needs a one-regime subset")  # fmt: skip
    return raw, source


def _seed_row(smoke: bool, data_dir: Path, plan: dict[str, Any], seed: int) -> dict[str, Any]:
    """Both arms for one seed (its own process: one torch thread)."""
    torch.set_num_threads(1)
    raw, _ = _load(smoke, data_dir)
    central_norm = raw.normalizer  # fitted on every training row, before any split
    fit_engines, val_engines = carve_validation(raw.train.engines, 0.1, seed=seed)
    groups = partition_engines(fit_engines, plan["sites"], seed=seed, mode="profile",
                               lifetimes=raw.train_lifetimes)  # fmt: skip
    raw_sites = split_partition(raw.train.select(fit_engines), groups)
    merged = robust_merge(
        {f"f{i}": window_stats(s.X, raw.features) for i, s in enumerate(raw_sites)}
    )
    fed_norm = merged.normalizer
    row = {"seed": seed, "site_windows": [len(s) for s in raw_sites],
           "stats_gap": _stats_gap(central_norm, fed_norm),
           "stats_left_out": merged.rejected, "stats_capped": merged.capped}  # fmt: skip
    row.update(run_arms({"central": central_norm, "federated": fed_norm}, raw_sites,
                        val_engines, plan, raw, seed))  # fmt: skip
    return row


def run_arms(arms: dict[str, Any], raw_sites: list[Partition], val_engines: Any,
             plan: dict[str, Any], raw: Any, seed: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The same federated run once per normaliser in ``arms``, scored on the same engines."""
    out = {}
    for arm, norm in arms.items():
        sites = [_normalised(s, norm) for s in raw_sites]
        val = _normalised(raw.train.select(val_engines), norm)
        test = _normalised(raw.test, norm)
        out[arm] = _federated_run(sites, val, test, plan, raw, seed)
        print(f"  seed {seed} {arm}: test RMSE {out[arm]['test_rmse']:.3f} "
              f"(round {out[arm]['best_round']})", flush=True)  # fmt: skip
    return out


def run(smoke: bool, seeds: list[int], data_dir: Path, rounds: int | None = None) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    plan = dict(SMOKE if smoke else FULL)
    if rounds is not None:
        plan["rounds"] = rounds
    raw, source = _load(smoke, data_dir)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(seeds)) as pool:
        n = len(seeds)
        per_seed = list(pool.map(_seed_row, [smoke] * n, [data_dir] * n, [plan] * n, seeds))
    central = statistics.mean(r["central"]["test_rmse"] for r in per_seed)
    federated = statistics.mean(r["federated"]["test_rmse"] for r in per_seed)
    return {
        "smoke": smoke,
        "dataset": raw.name,
        "source": source,
        "model": MODEL,
        "plan": plan,
        "seeds": seeds,
        "features": list(raw.features),
        "torch_threads": 1,
        "processes": len(seeds),
        "seconds": time.perf_counter() - started,
        "per_seed": per_seed,
        "summary": {
            "central_test_rmse_mean": central,
            "federated_test_rmse_mean": federated,
            "federated_over_central": federated / central,
            "bar": RATIO_BAR,
            "bar_met": bool(federated <= RATIO_BAR * central),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few batches, for CI")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=None, help="FedAvg rounds per arm")
    parser.add_argument("--data", type=Path, default=FD001_DIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    result = run(args.smoke, seeds, args.data, args.rounds)
    name = "fednorm_fd001_smoke" if args.smoke else "fednorm_fd001"
    path = write_result(name, result, args.out or RESULTS_DIR / f"{name}.json")
    s = result["summary"]
    print(f"central {s['central_test_rmse_mean']:.3f}  federated {s['federated_test_rmse_mean']:.3f}"
          f"  ratio {s['federated_over_central']:.4f}  bar {'met' if s['bar_met'] else 'NOT met'}"
          f"  -> {path}")  # fmt: skip
    return 0 if s["bar_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
