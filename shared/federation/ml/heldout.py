"""What a maintenance engineer needs from a held-out test: error in cycles, its direction, a baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from federation.ml.data import DatasetError

__all__ = ["LATE_MARGIN", "FAR_OFF", "each_factory_alone", "held_out_report"]

#: A prediction is "late" when it over-estimates the remaining life (the dangerous direction:
#: maintenance planned after the failure); counted when above the truth by more than this.
LATE_MARGIN = 0.0
#: Errors beyond this many cycles, either way, are counted apart.
FAR_OFF = 30.0


def held_out_report(
    predicted: Any, true: Any, train_mean: float, *, split: str, units: Any = None
) -> dict[str, Any]:
    """RMSE (cycles) next to a train-mean predictor's, bias, late share, PHM08, per-unit pairs.

    ``predicted`` and ``true`` are RUL in cycles for the same held-out units (true as the
    evaluation protocol defines it, e.g. capped); ``train_mean`` is the mean training label, the
    naive baseline every model must beat.
    """
    from federation.ml.train import phm08_score

    p = np.asarray(predicted, np.float64).reshape(-1)
    t = np.asarray(true, np.float64).reshape(-1)
    if p.shape != t.shape or p.size == 0 or not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise DatasetError(
            f"held-out evaluation needs matching finite arrays, got {p.shape}, {t.shape}"
        )
    err = p - t
    base = np.full_like(t, float(train_mean)) - t
    ids = list(range(1, p.size + 1)) if units is None else [int(u) for u in np.asarray(units)]
    return {
        "split": split,
        "units": int(p.size),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "baseline": {
            "name": "train-mean predictor",
            "prediction": float(train_mean),
            "rmse": float(np.sqrt(np.mean(base**2))),
        },
        "bias": float(np.mean(err)),
        "late_share": float(np.mean(err > LATE_MARGIN)),
        "far_off_share": float(np.mean(np.abs(err) > FAR_OFF)),
        "far_off_cycles": FAR_OFF,
        "phm08": phm08_score(p, t),
        "pairs": [
            {"unit": u, "true": round(float(a), 2), "predicted": round(float(b), 2)}
            for u, a, b in zip(ids, t.tolist(), p.tolist(), strict=True)
        ],
    }


def each_factory_alone(
    parts: Sequence[tuple[str, Mapping[str, Any]]],
    test_X: Any,
    test_y: Any,
    train_mean: float,
    *,
    training: Mapping[str, Any],
    dp: Mapping[str, Any] | None,
    rounds: int,
    seed: int = 0,
    initial_state: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Each factory's model trained on its own windows alone, as long as the campaign trained
    (``rounds`` x its local epochs, same model, optimiser and DP-SGD, from the campaign's
    ``initial_state`` when given), on the same held-out units.

    What federation gained is the federated model's row next to these.
    """
    from federation.ml.models import build_model
    from federation.ml.train import _load_state, predict, train_local

    cfg = {k: training[k] for k in ("model_type", "epochs", "learning_rate", "batch_size",
                                     "max_batches", "average_iterates") if k in training}  # fmt: skip
    if dp:
        cfg["dp"] = dict(dp)
    out = []
    for k, (name, arrays) in enumerate(parts):
        state = initial_state
        for r in range(int(rounds)):
            state = train_local(state, arrays["X"], arrays["y"], cfg, seed=seed + 1000 * k + r)[
                "model_update"
            ]
        net = build_model(cfg.get("model_type", "cnn"), np.shape(test_X)[2], np.shape(test_X)[1])
        _load_state(net, state)
        rep = held_out_report(predict(net, test_X), test_y, train_mean, split="")
        out.append({"factory": name, "windows": int(len(arrays["y"])),
                    **{key: rep[key] for key in ("rmse", "bias", "late_share", "phm08")}})  # fmt: skip
    return out
