"""Local and centralised RUL training, evaluation (RMSE, PHM08 score) and a plain FedAvg helper."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.errors import PrivacyError, TrainingError
from federation.ml.models import (
    RUL_SCALE,
    SUPPORTED_MODELS,
    ModelConfigError,
    build_model,
    is_known_model,
)
from federation.privacy.dpsgd import (
    DPSGDConfig,
    clip_per_sample,
    dpsgd_epsilon,
    noisy_gradient,
    parse_dp_config,
    per_sample_gradients,
    poisson_batch,
)

__all__ = [
    "ACCURACY_TOLERANCE",
    "DEFAULT_CONFIG",
    "evaluate",
    "fedavg",
    "phm08_score",
    "predict",
    "train_centralised",
    "train_local",
]

#: A prediction counts as "accurate" when it is within this many cycles of the true RUL.
ACCURACY_TOLERANCE = 15.0

#: Defaults for every key train_local understands (n_features/window default to X's shape).
DEFAULT_CONFIG: dict[str, Any] = {
    "model_type": "cnn",
    "epochs": 1,
    "learning_rate": 1e-3,
    "batch_size": 64,
    "max_batches": None,
    "weight_decay": 0.0,
    "trainable": "all",
    "average_iterates": False,
    "dp": None,
}

#: What ``trainable`` may name: every parameter, or only the model's dense head (the layers after
#: the feature extractor; fewer parameters to noise in private fine-tuning).
TRAINABLE = ("all", "head")

_EVAL_BATCH = 4096


def _as_float_array(a: Any, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{name} is not numeric: {exc}") from exc
    if arr.ndim != ndim:
        raise TrainingError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TrainingError(f"{name} contains NaN or infinite values")
    return arr


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    Xa = _as_float_array(X, "X", 3)
    ya = _as_float_array(y, "y", 1)
    if Xa.shape[0] != ya.shape[0]:
        raise TrainingError(f"X has {Xa.shape[0]} windows but y has {ya.shape[0]} labels")
    if Xa.shape[0] == 0:
        raise TrainingError("no training samples")
    return Xa, ya


def _resolve_config(config: Mapping[str, Any] | None, X: np.ndarray) -> dict[str, Any]:
    if config is not None and not isinstance(config, Mapping):
        raise TrainingError(f"config must be a mapping, got {type(config).__name__}")
    cfg = {**DEFAULT_CONFIG, **(dict(config) if config else {})}
    window = cfg.get("window") or X.shape[1]
    n_features = cfg.get("n_features") or X.shape[2]
    try:
        cfg["window"], cfg["n_features"] = int(window), int(n_features)
        cfg["epochs"] = int(cfg["epochs"])
        cfg["batch_size"] = int(cfg["batch_size"])
        cfg["learning_rate"] = float(cfg["learning_rate"])
        cfg["weight_decay"] = float(cfg["weight_decay"])
        if cfg["max_batches"] is not None:
            cfg["max_batches"] = int(cfg["max_batches"])
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid training config: {exc}") from exc
    if (X.shape[1], X.shape[2]) != (cfg["window"], cfg["n_features"]):
        raise TrainingError(
            f"X windows are {X.shape[1]}x{X.shape[2]} but config says "
            f"window={cfg['window']}, n_features={cfg['n_features']}"
        )
    if not is_known_model(cfg["model_type"]):
        raise ModelConfigError(
            f"unknown model_type {cfg['model_type']!r}; supported: {SUPPORTED_MODELS} "
            "or 'package.module:function'"
        )
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise TrainingError("epochs and batch_size must be >= 1")
    if not (cfg["learning_rate"] > 0 and math.isfinite(cfg["learning_rate"])):
        raise TrainingError(f"learning_rate must be positive, got {cfg['learning_rate']}")
    if cfg["max_batches"] is not None and cfg["max_batches"] < 1:
        raise TrainingError("max_batches must be >= 1 when given")
    cfg["average_iterates"] = bool(cfg["average_iterates"])
    if cfg["trainable"] not in TRAINABLE:
        raise TrainingError(f"trainable must be one of {TRAINABLE}, got {cfg['trainable']!r}")
    return cfg


def _freeze(model: nn.Module, trainable: str) -> None:
    """Leave only the ``trainable`` part's parameters with requires_grad (``head``: the dense head)."""
    if trainable == "all":
        return
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))


def _load_state(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Copy `state_dict` (tensors or numpy arrays) into `model`, with a typed error on mismatch."""
    try:
        converted = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
        model.load_state_dict(converted, strict=True)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelConfigError(f"state_dict does not fit the model: {exc}") from exc


def _fresh_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def predict(model: nn.Module, X: Any) -> np.ndarray:
    """RUL predictions in cycles for windows X (n, window, features), as float32 numpy."""
    Xa = _as_float_array(X, "X", 3)
    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, Xa.shape[0], _EVAL_BATCH):
            outs.append(model(torch.from_numpy(Xa[start : start + _EVAL_BATCH])).numpy())
    model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)


def phm08_score(pred: Any, true: Any) -> float:
    """PHM08 asymmetric score: sum of exp(-d/13)-1 for early (d<0) and exp(d/10)-1 for late."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0))))


def _metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred.astype(np.float64) - y.astype(np.float64)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "score": phm08_score(pred, y),
        "accuracy": float(np.mean(np.abs(err) <= ACCURACY_TOLERANCE)),
    }


def evaluate(
    model: nn.Module | Mapping[str, Any], X: Any, y: Any, model_type: str | None = None
) -> dict[str, float]:
    """RMSE (cycles), PHM08 score and ±15-cycle accuracy of a model or state dict on (X, y).

    A state dict needs `model_type`; the model's shape is taken from X.
    """
    Xa, ya = _check_xy(X, y)
    if not isinstance(model, nn.Module):
        if model_type is None:
            raise ModelConfigError("evaluate() needs model_type when given a state dict")
        net = build_model(model_type, Xa.shape[2], Xa.shape[1])
        _load_state(net, model)
        model = net
    return _metrics(predict(model, Xa), ya)


def _fit(
    model: nn.Module, X: np.ndarray, y: np.ndarray, cfg: dict[str, Any], seed: int
) -> tuple[float, int]:
    """Adam on MSE of RUL/RUL_SCALE; returns (last epoch's mean MSE in cycles², steps taken)."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
    )
    n, bs, steps = X.shape[0], cfg["batch_size"], 0
    model.train()
    last_loss = float("nan")
    for _ in range(cfg["epochs"]):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, bs):
            if cfg["max_batches"] is not None and steps >= cfg["max_batches"]:
                break
            idx = order[start : start + bs]
            pred = model(Xt[idx])
            loss = torch.mean(((pred - yt[idx]) / RUL_SCALE) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
            steps += 1
        if count:
            last_loss = total / count * RUL_SCALE**2
        if cfg["max_batches"] is not None and steps >= cfg["max_batches"]:
            break
    if not math.isfinite(last_loss):
        raise TrainingError("training diverged (loss is not finite)")
    return last_loss, steps


def _per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) / RUL_SCALE) ** 2


def _accumulate(
    averaged: dict[str, torch.Tensor], params: Mapping[str, nn.Parameter], count: int
) -> None:
    """Fold the parameters into their running mean (``count`` iterates so far, this one included)."""
    with torch.no_grad():
        for k, p in params.items():
            if count == 1:
                averaged[k] = p.detach().clone()
            else:
                averaged[k].add_(p.detach() - averaged[k], alpha=1.0 / count)


def _fit_dp(
    model: nn.Module, X: np.ndarray, y: np.ndarray, cfg: dict[str, Any], dp: DPSGDConfig
) -> tuple[float, int, float]:
    """DP-SGD with Adam: Poisson batches, per-sample clipping to C, N(0, (zC)^2) on each sum.

    The sample rate is 1 / ceil(n / batch_size) with ceil(n / batch_size) steps per epoch, as
    Opacus's DPDataLoader does, so the expected batch is about batch_size. Returns (last
    epoch's mean per-sample MSE in cycles^2, steps taken, sample rate).
    """
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = dp.generator()
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
    )
    n = X.shape[0]
    per_epoch = math.ceil(n / cfg["batch_size"])
    q = 1.0 / per_epoch
    expected = q * n
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    total_steps = per_epoch * cfg["epochs"]
    if cfg["max_batches"] is not None:
        total_steps = min(total_steps, cfg["max_batches"])
    averaged: dict[str, torch.Tensor] = {}
    steps = 0
    model.train()
    last_loss = float("nan")
    for _ in range(cfg["epochs"]):
        total, count = 0.0, 0
        for _ in range(per_epoch):
            if cfg["max_batches"] is not None and steps >= cfg["max_batches"]:
                break
            idx = poisson_batch(n, q, gen)
            if idx.numel():
                grads, losses = per_sample_gradients(model, _per_sample_mse, Xt[idx], yt[idx])
                total += float(losses.sum())
                count += idx.numel()
            else:  # an empty Poisson batch still releases (pure) noise
                grads = {k: torch.zeros((0, *p.shape), dtype=p.dtype) for k, p in params.items()}
            clipped, _ = clip_per_sample(grads, dp.max_grad_norm)
            noisy = noisy_gradient(clipped, dp.max_grad_norm, dp.noise_multiplier, expected, gen)
            for k, p in params.items():
                p.grad = noisy[k]
            opt.step()
            steps += 1
            if cfg["average_iterates"] and steps > total_steps // 2:
                _accumulate(averaged, params, steps - total_steps // 2)
        if count:
            last_loss = total / count * RUL_SCALE**2
        if cfg["max_batches"] is not None and steps >= cfg["max_batches"]:
            break
    if averaged:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(averaged[k])
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise TrainingError("DP training diverged (parameters are not finite)")
    return last_loss, steps, q


def _check_dp_support(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    from federation.privacy.dp_support import check_dpsgd_support

    try:
        check_dpsgd_support(model, cfg["n_features"], cfg["window"])
    except PrivacyError as exc:
        raise TrainingError(
            f"model {cfg['model_type']!r} cannot train under DP-SGD: {exc}"
        ) from exc


def train_local(
    state_dict: Mapping[str, Any] | None,
    X: Any,
    y: Any,
    config: Mapping[str, Any] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train from `state_dict` (None = a fresh model initialised from `seed`) on windows (X, y).

    Config keys: model_type, epochs, learning_rate, batch_size, n_features and window (default
    to X's shape), optional max_batches, weight_decay and trainable ("all", or "head": only the
    dense head learns, the feature extractor stays as given) and average_iterates (DP-SGD
    returns the mean of its last half of iterates, which averages much of the noise away; a
    post-processing step, free of privacy cost). Deterministic for a given seed and
    thread count; the caller owns torch.set_num_threads. Returns loss (last epoch's mean training
    MSE, cycles²), rmse and accuracy (fraction within ±ACCURACY_TOLERANCE cycles) of the trained
    model on its own training data, num_samples, model_update (the new state dict, CPU tensors)
    and training_time (seconds).

    Optional ``dp``: ``{"noise_multiplier": z, "max_grad_norm": C, "delta": 1e-5}`` with z > 0
    trains with record-level DP-SGD (see ``_fit_dp``) and adds ``dp``: noise_multiplier,
    max_grad_norm, sample_rate, steps, delta and epsilon (this call's steps alone). Sampling
    and noise come from the OS's secure RNG unless ``dp["noise_seed"]`` is given. Missing dp
    or z == 0 is the plain path, unchanged. loss, rmse and accuracy are computed on the
    private data without noise: they are not covered by the DP guarantee.
    """
    started = time.perf_counter()
    Xa, ya = _check_xy(X, y)
    cfg = _resolve_config(config, Xa)
    try:
        dp = parse_dp_config(cfg["dp"])
    except PrivacyError as exc:
        raise TrainingError(f"invalid dp config: {exc}") from exc
    dp_report: dict[str, Any] | None = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_model(cfg["model_type"], cfg["n_features"], cfg["window"])
        if state_dict is not None:
            if not isinstance(state_dict, Mapping):
                raise ModelConfigError(
                    f"state_dict must be a mapping, got {type(state_dict).__name__}"
                )
            _load_state(model, state_dict)
        _freeze(model, cfg["trainable"])
        if dp is None:
            loss, steps = _fit(model, Xa, ya, cfg, seed)
        else:
            _check_dp_support(model, cfg)
            loss, steps, q = _fit_dp(model, Xa, ya, cfg, dp)
            dp_report = {
                "noise_multiplier": dp.noise_multiplier,
                "max_grad_norm": dp.max_grad_norm,
                "sample_rate": q,
                "steps": steps,
                "delta": dp.delta,
                "epsilon": dpsgd_epsilon(dp.noise_multiplier, q, steps, dp.delta),
            }
    metrics = _metrics(predict(model, Xa), ya)
    result = {
        "loss": loss,
        "rmse": metrics["rmse"],
        "accuracy": metrics["accuracy"],
        "num_samples": int(Xa.shape[0]),
        "model_update": _fresh_state(model),
        "training_time": time.perf_counter() - started,
        "steps": steps,
    }
    if dp_report is not None:
        result["dp"] = dp_report
    return result


def train_centralised(
    X: Any,
    y: Any,
    config: Mapping[str, Any] | None,
    seed: int = 0,
    *,
    X_eval: Any = None,
    y_eval: Any = None,
) -> dict[str, Any]:
    """Train one fresh model on all of (X, y) for config["epochs"], one epoch at a time.

    Returns train_local's keys plus `history`: per-epoch training loss and, when (X_eval,
    y_eval) are given, the eval RMSE after each epoch (for reporting, not model selection).
    """
    cfg = dict(config or {})
    epochs = int(cfg.get("epochs", 1))
    per_epoch = {**cfg, "epochs": 1}
    state: Mapping[str, Any] | None = None
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    result: dict[str, Any] = {}
    for epoch in range(epochs):
        result = train_local(state, X, y, per_epoch, seed=seed + epoch)
        state = result["model_update"]
        row = {"epoch": epoch + 1, "loss": result["loss"]}
        if X_eval is not None:
            row["eval_rmse"] = evaluate(state, X_eval, y_eval, per_epoch.get("model_type", "cnn"))[
                "rmse"
            ]
        history.append(row)
    result["history"] = history
    result["training_time"] = time.perf_counter() - started
    return result


def fedavg(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (for the quality benchmark; services use federation.robust)."""
    if not states:
        raise TrainingError("fedavg needs at least one state dict")
    w = np.ones(len(states)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(states),) or np.any(w < 0) or w.sum() <= 0:
        raise TrainingError("fedavg weights must be non-negative, one per state, not all zero")
    w = w / w.sum()
    keys = list(states[0].keys())
    if any(list(s.keys()) != keys for s in states):
        raise TrainingError("fedavg state dicts have different keys")
    out = {}
    for k in keys:
        acc = sum(
            float(wi) * torch.as_tensor(s[k]).double() for wi, s in zip(w, states, strict=True)
        )
        out[k] = acc.to(torch.as_tensor(states[0][k]).dtype)
    return out
