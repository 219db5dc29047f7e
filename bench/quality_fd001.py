"""RUL quality on C-MAPSS FD001: centralised training vs FedAvg over 3 non-IID factories.

Run: ``.venv/bin/python -m bench.quality_fd001 [--smoke] [--models cnn,lstm,hybrid] [--out PATH]``.
Writes ``bench/results/quality_fd001.json`` (``quality_fd001_smoke.json`` with --smoke).

Protocol: the FD001 training engines are split into a 10% validation carve-out (engines, not
windows) and the rest; the normaliser is fitted on the training file only. Centralised: one
model on all fit engines, E epochs. Federated: fit engines split across 3 sites by degradation
profile (sorted lifetimes, contiguous blocks: non-IID) and, for reference, by random engine
split; each round every site runs train_local for one local epoch from the global model and
the server takes the sample-weighted FedAvg (no DP, no attack). In both settings the
epoch/round with the lowest validation RMSE is the reported model, then evaluated once on the
100 held-out test engines (last window, true RUL capped at 125). Bars: centralised test RMSE
<= 18; federated (profile split) test RMSE within 15% of centralised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from federation.ml import (
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
from federation.ml.models import build_model

from bench._common import RESULTS_DIR, write_result

FD001_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmapss" / "FD001"
CENTRAL_RMSE_BAR = 18.0
FEDERATED_RATIO_BAR = 1.15

FULL = {"epochs": 12, "rounds": 15, "batch_size": 256, "learning_rate": 2e-3, "max_batches": None}
SMOKE = {"epochs": 2, "rounds": 2, "batch_size": 256, "learning_rate": 2e-3, "max_batches": 6}


def _config(kind: str, plan: dict[str, Any], prepared: Any) -> dict[str, Any]:
    return {
        "model_type": kind,
        "epochs": 1,
        "learning_rate": plan["learning_rate"],
        "batch_size": plan["batch_size"],
        "max_batches": plan["max_batches"],
        "n_features": prepared.n_features,
        "window": prepared.window,
    }


def _centralised(kind, fit, val, test, plan, prepared, seed) -> dict[str, Any]:
    cfg = _config(kind, plan, prepared)
    state, best, history = None, None, []
    started = time.perf_counter()
    for epoch in range(1, plan["epochs"] + 1):
        res = train_local(state, fit.X, fit.y, cfg, seed=seed + epoch)
        state = res["model_update"]
        val_rmse = evaluate(state, val.X, val.y, kind)["rmse"]
        history.append({"epoch": epoch, "train_loss": res["loss"], "val_rmse": val_rmse})
        if best is None or val_rmse < best[0]:
            best = (val_rmse, epoch, state)
        print(f"  central {kind} epoch {epoch}: val RMSE {val_rmse:.2f}", flush=True)
    test_best = evaluate(best[2], test.X, test.y, kind)
    test_last = evaluate(state, test.X, test.y, kind)
    return {
        "model": kind,
        "best_epoch": best[1],
        "val_rmse": best[0],
        "test_rmse": test_best["rmse"],
        "test_score": test_best["score"],
        "test_rmse_last_epoch": test_last["rmse"],
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def _federated(kind, sites, val, test, plan, prepared, seed) -> dict[str, Any]:
    cfg = _config(kind, plan, prepared)
    torch.manual_seed(seed)

    global_state = build_model(kind, prepared.n_features, prepared.window).state_dict()
    best, history = None, []
    started = time.perf_counter()
    for rnd in range(1, plan["rounds"] + 1):
        results = [
            train_local(global_state, s.X, s.y, cfg, seed=seed * 1000 + rnd * 10 + i)
            for i, s in enumerate(sites)
        ]
        global_state = fedavg(
            [r["model_update"] for r in results], [r["num_samples"] for r in results]
        )
        val_rmse = evaluate(global_state, val.X, val.y, kind)["rmse"]
        history.append(
            {
                "round": rnd,
                "site_loss": [r["loss"] for r in results],
                "val_rmse": val_rmse,
            }
        )
        if best is None or val_rmse < best[0]:
            best = (val_rmse, rnd, global_state)
        print(f"  federated {kind} round {rnd}: val RMSE {val_rmse:.2f}", flush=True)
    test_best = evaluate(best[2], test.X, test.y, kind)
    test_last = evaluate(global_state, test.X, test.y, kind)
    return {
        "model": kind,
        "best_round": best[1],
        "val_rmse": best[0],
        "test_rmse": test_best["rmse"],
        "test_score": test_best["score"],
        "test_rmse_last_round": test_last["rmse"],
        "site_samples": [len(s) for s in sites],
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def run(smoke: bool, models: list[str], seed: int, data_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(2)
    plan = SMOKE if smoke else FULL
    if data_dir.is_dir():
        data, source = load_cmapss(data_dir), str(data_dir)
    elif smoke:
        data, source = synthetic_fleet(40, seed=seed), "synthetic (FD001 not found)"
    else:
        raise SystemExit(f"FD001 not found at {data_dir}; the full benchmark needs the real data")
    prepared = prepare(data)
    fit_engines, val_engines = carve_validation(prepared.train.engines, 0.1, seed=seed)
    fit, val, test = (
        prepared.train.select(fit_engines),
        prepared.train.select(val_engines),
        prepared.test,
    )
    print(f"{prepared.name}: {len(fit)} fit / {len(val)} val / {len(test)} test windows")

    central = {k: _centralised(k, fit, val, test, plan, prepared, seed) for k in models}
    best_kind = min(central, key=lambda k: central[k]["val_rmse"])
    federated = {}
    modes = ["profile"] if smoke else ["profile", "engine"]
    for mode in modes:
        groups = partition_engines(
            fit_engines, 3, seed=seed, mode=mode, lifetimes=prepared.train_lifetimes
        )
        sites = split_partition(fit, groups)
        res = _federated(best_kind, sites, val, test, plan, prepared, seed)
        res["site_lifetimes"] = [
            [
                min(prepared.train_lifetimes[int(e)] for e in g),
                max(prepared.train_lifetimes[int(e)] for e in g),
            ]
            for g in groups
        ]
        federated[mode] = res

    c_rmse = central[best_kind]["test_rmse"]
    f_rmse = federated["profile"]["test_rmse"]
    return {
        "smoke": smoke,
        "dataset": prepared.name,
        "source": source,
        "seed": seed,
        "plan": plan,
        "features": list(prepared.features),
        "windows": {"fit": len(fit), "val": len(val), "test": len(test)},
        "torch_threads": torch.get_num_threads(),
        "centralised": central,
        "best_model": best_kind,
        "federated": federated,
        "summary": {
            "central_test_rmse": c_rmse,
            "federated_profile_test_rmse": f_rmse,
            "federated_over_central": f_rmse / c_rmse,
            "central_bar_met": bool(c_rmse <= CENTRAL_RMSE_BAR),
            "federated_bar_met": bool(f_rmse <= FEDERATED_RATIO_BAR * c_rmse),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few batches, for CI")
    parser.add_argument("--models", default="cnn", help="comma-separated subset of cnn,lstm,hybrid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=FD001_DIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = run(args.smoke, models, args.seed, args.data)
    name = "quality_fd001_smoke" if args.smoke else "quality_fd001"
    path = write_result(name, result, args.out or RESULTS_DIR / f"{name}.json")
    s = result["summary"]
    print(
        f"central {result['best_model']} test RMSE {s['central_test_rmse']:.2f} "
        f"(bar <= {CENTRAL_RMSE_BAR}: {s['central_bar_met']}); federated profile split "
        f"{s['federated_profile_test_rmse']:.2f} = {s['federated_over_central']:.3f}x "
        f"(bar <= {FEDERATED_RATIO_BAR}x: {s['federated_bar_met']}) -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
