"""Does the synthetic fleet generalise like C-MAPSS? Central training, epoch by epoch, on both.

Run: ``.venv/bin/python -m bench.synthetic_task [--smoke] [--datasets synthetic,fd001] [--out PATH]``.
Writes ``bench/results/synthetic_task.json`` (``synthetic_task_smoke.json`` with --smoke).

Protocol: 10 % of the training engines are held out (engines, not windows). One CNN trains
centrally on the rest (batch 256, Adam lr 2e-3), one epoch at a time. After each epoch: RMSE
on 3,000 training windows, on every window of the held-out engines (same distribution as the
training windows, so the gap between the two is the over-fitting), and on the test engines
(last window, true RUL capped at 125). The synthetic fleet is the embedded default
(``load_dataset(None)``: 100 training and 100 test engines from one fleet model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from federation.ml import carve_validation, evaluate, load_dataset, train_local

from bench._common import RESULTS_DIR, write_result

FD001_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmapss" / "FD001"
FULL = {"epochs": 6, "max_batches": None}
SMOKE = {"epochs": 1, "max_batches": 5}


def _run(prepared: Any, plan: dict[str, Any], seed: int) -> dict[str, Any]:
    fit_ids, held_ids = carve_validation(prepared.train.engines, 0.1, seed)
    fit, held = prepared.train.select(fit_ids), prepared.train.select(held_ids)
    sample = np.random.default_rng(seed).choice(len(fit), min(3000, len(fit)), replace=False)
    cfg = {
        "model_type": "cnn",
        "epochs": 1,
        "batch_size": 256,
        "learning_rate": 2e-3,
        "max_batches": plan["max_batches"],
    }
    baseline = float(np.sqrt(np.mean((prepared.test.y - fit.y.mean()) ** 2)))
    state, history, started = None, [], time.perf_counter()
    for epoch in range(1, plan["epochs"] + 1):
        state = train_local(state, fit.X, fit.y, cfg, seed=seed + epoch)["model_update"]
        row = {
            "epoch": epoch,
            "train_rmse": evaluate(state, fit.X[sample], fit.y[sample], "cnn")["rmse"],
            "held_out_rmse": evaluate(state, held.X, held.y, "cnn")["rmse"],
            "test_rmse": evaluate(state, prepared.test.X, prepared.test.y, "cnn")["rmse"],
        }
        history.append(row)
        print(
            f"  epoch {epoch}: train {row['train_rmse']:.2f}, held-out engines "
            f"{row['held_out_rmse']:.2f}, test {row['test_rmse']:.2f}",
            flush=True,
        )
    return {
        "engines": {"fit": len(fit_ids), "held_out": len(held_ids), "test": len(prepared.test)},
        "mean_predictor_test_rmse": baseline,
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 epoch of 5 batches")
    parser.add_argument("--datasets", default="synthetic,fd001")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = SMOKE if args.smoke else FULL
    results = {}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name == "synthetic":
            prepared = load_dataset(None, seed=args.seed)
        elif name == "fd001" and FD001_DIR.is_dir():
            prepared = load_dataset(FD001_DIR)
        elif name == "fd001":
            print(f"FD001 not found at {FD001_DIR}: skipping it", file=sys.stderr)
            continue
        else:
            parser.error(f"unknown dataset {name!r}")
        print(name, flush=True)
        results[name] = _run(prepared, plan, args.seed)
    out_name = "synthetic_task_smoke" if args.smoke else "synthetic_task"
    path = write_result(
        out_name,
        {"smoke": args.smoke, "plan": plan, "seed": args.seed, "datasets": results},
        args.out or RESULTS_DIR / f"{out_name}.json",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
