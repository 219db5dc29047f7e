"""Whether DP-SGD's per-sample gradients (torch.func) are correct for a model, or why not."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from federation.errors import PrivacyError
from federation.privacy.dpsgd import per_sample_gradients

__all__ = ["check_dpsgd_support"]

_PROBE_SAMPLES = 3
#: Float32 sums in another order: equal within this share of the gradient's norm.
_RTOL = 1e-4


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target) ** 2


def _refuse_batch_statistics(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            raise PrivacyError(
                f"{type(module).__name__} at {name or 'the model'!r} normalises each sample with "
                "its batch's statistics, so one record's gradient depends on the others and "
                "per-sample clipping bounds nothing; use LayerNorm or GroupNorm"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_dpsgd_support(model: nn.Module, n_features: int, window: int) -> None:
    """PrivacyError (with the reason) unless DP-SGD can train ``model`` with correct per-sample
    gradients.

    Refuses layers that mix the samples of a batch (BatchNorm), then probes a few random
    windows: the torch.func (vmap) per-sample gradients must exist and sum to the gradient of
    one ordinary backward pass over the batch. A layer torch.func cannot batch or one that
    draws randomness (dropout: vmap refuses it) fails the first; one that reads other samples
    fails the second. The model's parameters and the global
    RNG are left as they were.
    """
    _refuse_batch_statistics(model)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn((_PROBE_SAMPLES, window, n_features), generator=gen)
    y = torch.rand(_PROBE_SAMPLES, generator=gen) * 100.0
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise PrivacyError("the model has no trainable parameters")
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            try:
                grads, _ = per_sample_gradients(model, _loss, X, y)
            except Exception as exc:
                raise PrivacyError(
                    f"torch.func cannot compute per-sample gradients through this model "
                    f"({_first_line(exc)})"
                ) from exc
            loss = _loss(model(X), y).sum()  # one forward pass over the whole batch
            ref = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (name, _), expected in zip(params.items(), ref, strict=True):
                summed = grads[name].sum(dim=0)
                expected = torch.zeros_like(summed) if expected is None else expected
                gap = torch.linalg.vector_norm(summed - expected)
                if gap > _RTOL * torch.linalg.vector_norm(expected) + 1e-9:
                    raise PrivacyError(
                        f"the batch gradient of {name!r} is not the sum of its per-sample "
                        "gradients: a layer mixes the samples of a batch, so per-sample "
                        "clipping cannot bound one record's influence"
                    )
    finally:
        model.train(was_training)
