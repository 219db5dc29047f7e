"""Does the demo learn as well as central training on the same data? `pdmfed demo` next to it.

Run: ``.venv/bin/python -m bench.demo_learning [--rounds 5] [--seed 0] [--attack scaling]
[--central-only] [--out PATH]``. Writes ``bench/results/demo_learning.json``.

Protocol: the demo runs as ``pdmfed demo`` does (3 PySyft factories, the four services, its
default private recipe and epsilon, a compromised factory screened out), model CNN. Central
training then uses the same data: the same training windows, z-scored with the statistics the
demo's round 0 sums (each factory's ``window_stats``), the same model, the same budget (rounds x
local epochs passes over the data), no DP, no attack, evaluated on the same test engines (last
window, true RUL capped at 125) after the last epoch, with no model selection, as the demo. Two
central settings: the demo's own batch and learning rate, and bench/synthetic_task.py's (batch
256, Adam 2e-3); the gap is the demo's final RMSE against the better of the two. A third row
trains centrally on the honest factories only (the data the demo aggregates once it screens the
compromised factory out).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from federation.ml.fedstats import merge_stats, window_stats
from federation.ml.train import train_centralised
from federation.orchestrator import demo

from bench._common import RESULTS_DIR, write_result

#: bench/synthetic_task.py's central setting.
TASK_SETTING = {"batch_size": 256, "learning_rate": 2e-3}


def _run_demo(opts: demo.DemoOptions, folder: Path) -> dict[str, Any]:
    from federation.logs import divert_output
    from rich.console import Console

    started = time.perf_counter()
    with divert_output(folder / "demo.log") as stream:
        summary = asyncio.run(
            demo.run_demo(opts, run_dir=folder / "run", console=Console(file=stream, quiet=True))
        )
    rounds = [r.get("test_rmse") for r in summary["rounds"]]
    return {
        "test_rmse_by_round": rounds,  # round 0 (the initial model) first
        "final_test_rmse": summary["evaluation"]["rmse"],
        "train_mean_test_rmse": summary["evaluation"]["baseline"]["rmse"],
        "privacy": summary["privacy"],
        "rejections_by_reason": summary["rejections_by_reason"],
        "training": summary["config"]["training"],
        "wall_s": time.perf_counter() - started,
    }


def _central(
    X: np.ndarray, y: np.ndarray, test: Any, setting: dict, epochs: int, seed: int
) -> dict[str, Any]:
    cfg = {"model_type": "cnn", "epochs": epochs, **setting}
    out = train_centralised(X, y, cfg, seed=seed, X_eval=test[0], y_eval=test[1])
    by_epoch = [row["eval_rmse"] for row in out["history"]]
    print(f"    test RMSE by epoch: {', '.join(f'{v:.2f}' for v in by_epoch)}", flush=True)
    return {**setting, "epochs": epochs, "test_rmse_by_epoch": by_epoch, "final": by_epoch[-1]}


def run(opts: demo.DemoOptions, central_only: bool) -> dict[str, Any]:
    """The demo (unless ``central_only``) and central training on its data, side by side."""
    result: dict[str, Any] = {"rounds": opts.rounds, "seed": opts.seed, "attack": opts.attack}
    if not central_only:
        print(f"pdmfed demo --rounds {opts.rounds} --seed {opts.seed} --attack {opts.attack}")
        with tempfile.TemporaryDirectory(prefix="pdmfed-demo-learning-") as tmp:
            result["demo"] = _run_demo(opts, Path(tmp))
        shown = ", ".join(f"{v:.2f}" for v in result["demo"]["test_rmse_by_round"])
        print(f"  test RMSE by round: {shown}", flush=True)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    data, parts = demo._partitions(opts)
    dec = list(data.train.decimals)  # per operating regime, as the demo's datasites sum them
    stats = merge_stats(window_stats(a["X"], data.features, a["settings"], dec) for _, a in parts)
    norm = stats.normalizer()  # the demo's round 0: every factory's exact statistics summed
    test = (norm.transform_windows(data.test.X, data.test.settings), data.test.y)

    def scaled(chosen: list) -> np.ndarray:
        return norm.transform_windows(np.concatenate([a["X"] for _, a in chosen]),
                                      np.concatenate([a["settings"] for _, a in chosen]))  # fmt: skip

    epochs = opts.rounds * opts.epochs
    recipe = demo.demo_recipe(opts)
    own = {"batch_size": recipe["batch_size"], "learning_rate": recipe["learning_rate"]}
    X = scaled(parts)
    y = np.concatenate([a["y"] for _, a in parts])
    central = {}
    for name, setting in (("demo_setting", own), ("synthetic_task_setting", TASK_SETTING)):
        print(f"  central, every factory's data, {setting}", flush=True)
        central[name] = _central(X, y, test, setting, epochs, opts.seed)
    honest = parts[:-1] if opts.attack != "none" else parts  # the demo compromises the last
    print(f"  central, the honest factories' data only, {own}", flush=True)
    central["honest_factories_demo_setting"] = _central(
        scaled(honest),
        np.concatenate([a["y"] for _, a in honest]),
        test,
        own,
        epochs,
        opts.seed,
    )
    result["central"] = central
    result["factory_windows"] = {ds: int(len(a["y"])) for ds, a in parts}
    result["test_engines"] = int(len(data.test))
    best = min(central["demo_setting"]["final"], central["synthetic_task_setting"]["final"])
    result["central_best_final"] = best
    if "demo" in result:
        final = result["demo"]["final_test_rmse"]
        result["gap_vs_central"] = final / best - 1.0
        print(f"demo final {final:.2f} vs central {best:.2f}: {result['gap_vs_central']:+.1%}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack", default="scaling", choices=("scaling", "signflip", "none"))
    parser.add_argument("--central-only", action="store_true", help="skip the demo")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    opts = demo.DemoOptions(model="cnn", rounds=args.rounds, seed=args.seed, attack=args.attack)
    result = run(opts, args.central_only)
    name = "demo_learning_central" if args.central_only else "demo_learning"
    path = write_result(name, result, args.out or RESULTS_DIR / f"{name}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
