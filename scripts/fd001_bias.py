"""Where a bundle's held-out bias on FD001 comes from: error by true-RUL band, the RUL cap, training.

    python scripts/fd001_bias.py RUN_DIR [--epochs 3]

Prints the bundle's held-out figures, its error per band of true RUL, what clipping predictions
to [0, cap] changes, and the same figures for one model trained centrally on all training
engines after each epoch, without and with record-level DP-SGD (z = 1, C = 1), for comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from federation.ml.bundle import load_bundle
from federation.ml.data import load_dataset
from federation.ml.heldout import held_out_report
from federation.ml.models import build_model
from federation.ml.train import _load_state, predict, train_local

FD001 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmapss" / "FD001"


def _line(name: str, pred: np.ndarray, true: np.ndarray, mean: float) -> str:
    r = held_out_report(pred, true, mean, split="FD001 test")
    return (f"{name}: RMSE {r['rmse']:.2f} (train-mean baseline {r['baseline']['rmse']:.2f}), "
            f"bias {r['bias']:+.2f}, late {r['late_share']:.0%}, off by >30 {r['far_off_share']:.0%}, "
            f"PHM08 {r['phm08']:.0f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder holding bundle.json (an FD001 demo)")
    ap.add_argument("--epochs", type=int, default=3, help="central training epochs to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.run)
    data = load_dataset(FD001)
    true, mean = data.test.y, float(data.train.y.mean())
    cap = float(bundle.manifest.get("rul_cap") or 125.0)
    pred = predict(bundle.model, data.test.X)
    print(f"training label mean {mean:.1f}, held-out label mean {float(true.mean()):.1f}")
    print(_line("bundle", pred, true, mean))
    for lo, hi in ((0, 25), (25, 50), (50, 75), (75, 100), (100, cap), (cap, cap + 1)):
        band = (true >= lo) & (true < hi)
        if band.any():
            print(f"  true RUL in [{lo:g}, {hi:g}): {int(band.sum())} units, "
                  f"bias {float((pred - true)[band].mean()):+.1f}")  # fmt: skip
    print(
        f"  predictions above the cap: {int((pred > cap).sum())}, below zero: {int((pred < 0).sum())}"
    )
    print(_line("bundle clipped to [0, cap]", np.clip(pred, 0, cap), true, mean))
    model_type = bundle.manifest["architecture"]["model_type"]
    for label, extra in (("central", {}), ("central DP-SGD", {"dp": {"noise_multiplier": 1.0,
                                                                      "max_grad_norm": 1.0}})):  # fmt: skip
        state = None
        for epoch in range(1, args.epochs + 1):
            cfg = {"model_type": model_type, "epochs": 1, "batch_size": 64, "learning_rate": 0.003}
            state = train_local(state, data.train.X, data.train.y, {**cfg, **extra}, seed=epoch)[
                "model_update"]  # fmt: skip
            net = build_model(model_type, data.n_features, data.window)
            _load_state(net, state)
            print(_line(f"{label}, epoch {epoch}", predict(net, data.test.X), true, mean))


if __name__ == "__main__":
    main()
