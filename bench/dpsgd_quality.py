"""Record-level DP-SGD at the datasites: FedAvg test RMSE and per-factory epsilon, versus no DP.

Run: ``.venv/bin/python -m bench.dpsgd_quality [--smoke] [--datasets synthetic,fd001] [--curve]
[--seeds N] [--out PATH]``. Writes ``bench/results/dpsgd_quality.json`` (``dpsgd_quality_smoke.json``
with --smoke; ``dpsgd_curve.json`` with --curve).

Protocol: the training engines are split across 3 factories by degradation profile (sorted
lifetimes, contiguous blocks: non-IID). Each round every factory runs train_local for one local
epoch (CNN, batch 64, Adam lr 2e-3) from the global model and the server takes the
sample-weighted FedAvg; no client-level DP, no attack. DP settings: none, and DP-SGD with
noise multiplier z in {0.8, 1.2}, clip C = 1.0, Poisson sampling at q = 1/ceil(n/64), delta =
1e-5. Each factory's record-level epsilon composes all its rounds in a RecordLevelLedger (RDP).
The reported RMSE is the global model after the last round on the held-out test engines (last
window, true RUL capped at 125); no model selection. Noise seeds are fixed for reproducibility
(production leaves them unset so the noise comes from the OS's secure RNG).

The private recipe (``federation.privacy.recipe.RECIPE``): the global model starts from public
pre-training on the synthetic fleet (``federation.ml.pretrain``, no factory data, no privacy
cost); each factory then runs DP-SGD with the recipe's batch, learning rate and clip, returns
the mean of its last half of iterates (post-processing), and the noise multiplier is calibrated
with PLD accounting so every factory ends the 5 rounds at the target epsilon (``--curve``: for
each epsilon in EPSILONS). Its hyper-parameters were chosen on a validation carve-out of the
training engines (10 %), never on the test engines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from federation.ml import evaluate, fedavg, load_dataset, partition_engines, split_partition
from federation.ml.models import RUL_SCALE, build_model
from federation.ml.pretrain import public_pretrained_state
from federation.ml.train import train_local
from federation.privacy import RecordLevelLedger
from federation.privacy.dpsgd import per_sample_gradients
from federation.privacy.recipe import RECIPE, RECIPE_DELTA
from federation.privacy.recipe import recipe_noise as _recipe_noise

from bench._common import RESULTS_DIR, write_result

FD001_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmapss" / "FD001"
DELTA = RECIPE_DELTA
FULL = {"rounds": 5, "batch_size": 64, "learning_rate": 2e-3, "max_batches": None}
SMOKE = {"rounds": 2, "batch_size": 64, "learning_rate": 2e-3, "max_batches": 5}
SETTINGS: dict[str, dict[str, float] | None] = {
    "no_dp": None,
    "dpsgd_z0.8": {"noise_multiplier": 0.8, "max_grad_norm": 1.0},
    "dpsgd_z1.2": {"noise_multiplier": 1.2, "max_grad_norm": 1.0},
}
#: The recipe's rows in the default run.
RECIPE_TARGETS = (3.0, 1.0)
EPSILONS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)


def _grad_norm_quantiles(prepared: Any, seed: int) -> dict[str, float]:
    """Per-sample gradient norms of a fresh CNN on 256 training windows (is C = 1 binding?)."""
    torch.manual_seed(seed)
    model = build_model("cnn", prepared.n_features, prepared.window)
    idx = np.random.default_rng(seed).choice(len(prepared.train), 256, replace=False)
    X = torch.from_numpy(prepared.train.X[idx])
    y = torch.from_numpy(prepared.train.y[idx])
    grads, _ = per_sample_gradients(model, lambda p, t: ((p - t) / RUL_SCALE) ** 2, X, y)
    norms = torch.linalg.vector_norm(torch.cat([g.flatten(1) for g in grads.values()], 1), dim=1)
    q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9])).tolist()
    return {"p10": q[0], "p50": q[1], "p90": q[2]}


def recipe_noise(
    sites: list[Any], plan: dict[str, Any], recipe: dict[str, Any], target: float
) -> float:
    """``federation.privacy.recipe.recipe_noise`` for these sites and this plan."""
    return _recipe_noise(
        [len(site) for site in sites],
        plan["rounds"],
        target,
        max_batches=plan["max_batches"],
        recipe=recipe,
        delta=DELTA,
    )


def _campaign(sites, prepared, plan, dp, seed, recipe=None) -> dict[str, Any]:
    torch.manual_seed(seed)
    recipe = recipe or {}
    if recipe.get("init") == "public":
        global_state = public_pretrained_state("cnn", prepared.features, prepared.window)
    else:
        global_state = build_model("cnn", prepared.n_features, prepared.window).state_dict()
    ledger = RecordLevelLedger(delta=DELTA, method=recipe.get("accountant", "rdp"))
    history = []
    started = time.perf_counter()
    for rnd in range(1, plan["rounds"] + 1):
        results = []
        for i, site in enumerate(sites):
            cfg = {
                "model_type": "cnn",
                "epochs": 1,
                "batch_size": recipe.get("batch_size", plan["batch_size"]),
                "learning_rate": recipe.get("learning_rate", plan["learning_rate"]),
                "max_batches": plan["max_batches"],
                "average_iterates": recipe.get("average_iterates", False),
            }
            run_seed = seed * 1000 + rnd * 10 + i
            if dp is not None:
                cfg["dp"] = {**dp, "delta": DELTA, "noise_seed": run_seed}
            res = train_local(global_state, site.X, site.y, cfg, seed=run_seed)
            if dp is not None:
                d = res["dp"]
                ledger.spend(f"factory-{i}", d["noise_multiplier"], d["sample_rate"], d["steps"])
            results.append(res)
        global_state = fedavg(
            [r["model_update"] for r in results], [r["num_samples"] for r in results]
        )
        test_rmse = evaluate(global_state, prepared.test.X, prepared.test.y, "cnn")["rmse"]
        row = {"round": rnd, "test_rmse": test_rmse}
        if dp is not None:
            row["epsilon"] = {ds: ledger.epsilon(ds) for ds in ledger.datasites()}
        history.append(row)
        print(f"    round {rnd}: test RMSE {test_rmse:.2f}", flush=True)
    final = evaluate(global_state, prepared.test.X, prepared.test.y, "cnn")
    out: dict[str, Any] = {
        "test_rmse": final["rmse"],
        "test_score": final["score"],
        "history": history,
        "seconds": time.perf_counter() - started,
    }
    if recipe:
        out["recipe"] = dict(recipe)
    if dp is not None:
        out["noise_multiplier"] = dp["noise_multiplier"]
        out["max_grad_norm"] = dp["max_grad_norm"]
        out["sample_rate"] = [r["dp"]["sample_rate"] for r in results]
        out["steps_per_round"] = [r["dp"]["steps"] for r in results]
        out["accountant"] = ledger.method
        out["epsilon_per_factory"] = {ds: ledger.epsilon(ds) for ds in ledger.datasites()}
        out["max_epsilon"] = ledger.max_epsilon()
    return out


def _recipe_run(sites, prepared, plan, seed, target: float | None) -> dict[str, Any]:
    """The recipe at ``target`` epsilon (None: the recipe without DP, pre-training kept)."""
    if target is None:
        return _campaign(sites, prepared, plan, None, seed, RECIPE)
    z = recipe_noise(sites, plan, RECIPE, target)
    dp = {"noise_multiplier": z, "max_grad_norm": RECIPE["max_grad_norm"]}
    out = _campaign(sites, prepared, plan, dp, seed, RECIPE)
    out["target_epsilon"] = target
    return out


def _dataset(
    name: str, plan: dict[str, Any], seed: int, curve: bool = False, seeds: int = 1
) -> dict[str, Any] | None:
    if name == "synthetic":
        prepared, source = load_dataset(None, seed=seed), "synthetic fleet (load_dataset(None))"
    elif FD001_DIR.is_dir():
        prepared, source = load_dataset(FD001_DIR), str(FD001_DIR)
    else:
        print(f"FD001 not found at {FD001_DIR}: skipping it", file=sys.stderr)
        return None
    groups = partition_engines(
        prepared.train.engines, 3, seed, mode="profile", lifetimes=prepared.train_lifetimes
    )
    sites = split_partition(prepared.train, groups)
    mean_pred = float(np.sqrt(np.mean((prepared.test.y - prepared.train.y.mean()) ** 2)))
    print(f"{name}: factories {[len(s) for s in sites]} windows, {len(prepared.test)} test")
    runs = {}
    if curve:
        for s in range(seeds):
            for target in EPSILONS:
                label = f"recipe_eps{target:g}" + (f"_seed{s}" if seeds > 1 else "")
                print(f"  {label}", flush=True)
                runs[label] = _recipe_run(sites, prepared, plan, seed + s, target)
    else:
        for label, dp in SETTINGS.items():
            print(f"  {label}", flush=True)
            runs[label] = _campaign(sites, prepared, plan, dp, seed)
        print("  recipe_no_dp", flush=True)
        runs["recipe_no_dp"] = _recipe_run(sites, prepared, plan, seed, None)
        for target in RECIPE_TARGETS:
            print(f"  recipe_eps{target:g}", flush=True)
            runs[f"recipe_eps{target:g}"] = _recipe_run(sites, prepared, plan, seed, target)
    return {
        "source": source,
        "factory_windows": [len(s) for s in sites],
        "test_engines": len(prepared.test),
        "mean_predictor_test_rmse": mean_pred,
        "per_sample_grad_norm_at_init": _grad_norm_quantiles(prepared, seed),
        "runs": runs,
    }


def run(
    smoke: bool, datasets: list[str], seed: int, threads: int, curve: bool = False, seeds: int = 1
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    plan = SMOKE if smoke else FULL
    results = {}
    for name in datasets:
        res = _dataset(name, plan, seed, curve, seeds)
        if res is not None:
            results[name] = res
    return {
        "smoke": smoke,
        "seed": seed,
        "plan": plan,
        "delta": DELTA,
        "accounting": "dp-accounting, Poisson-sampled Gaussian, composed over rounds: RDP for "
        "the no-recipe rows, PLD for the recipe",
        "recipe": dict(RECIPE),
        "torch_threads": torch.get_num_threads(),
        "datasets": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 rounds of 5 batches")
    parser.add_argument("--datasets", default="synthetic,fd001")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--curve", action="store_true", help="the recipe at every epsilon of EPSILONS"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per curve point")
    args = parser.parse_args(argv)
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = set(names) - {"synthetic", "fd001"}
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}")
    result = run(args.smoke, names, args.seed, args.threads, args.curve, args.seeds)
    name = "dpsgd_curve" if args.curve else "dpsgd_quality"
    name += "_smoke" if args.smoke else ""
    path = write_result(name, result, args.out or RESULTS_DIR / f"{name}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
