"""Clipping and the Gaussian mechanism on model updates (pure tensor math, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from federation.errors import PrivacyError

__all__ = ["global_l2_norm", "clip_update", "add_gaussian_noise", "privatize_update"]

Update = Mapping[str, torch.Tensor]


def _check_update(update: Update) -> None:
    if not isinstance(update, Mapping):
        raise PrivacyError(
            f"a model update must be a mapping of name -> tensor, got {type(update).__name__}"
        )
    for name, value in update.items():
        if not isinstance(value, torch.Tensor):
            raise PrivacyError(
                f"update entry {name!r} is {type(value).__name__}, not a torch.Tensor"
            )


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise PrivacyError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise PrivacyError(f"{name} must be finite and {bound}, got {value}")
    return value


#: Elements cast to float64 at a time by ``global_l2_norm``: a cache-sized piece (2 MiB),
#: instead of a float64 copy of a whole 10M-parameter tensor. Each piece's sum of squares is one
#: float64 dot product: 9 ms for 10M parameters where ``vector_norm`` of each piece took 53 ms
#: (float32 accumulation is no option: 4e-4 relative error there, and clipping relies on the
#: norm to 1e-6).
NORM_PIECE_ELEMENTS = 1 << 18


def global_l2_norm(update: Update) -> float:
    """L2 norm of all floating-point tensors of an update taken together (ints are ignored),
    accumulated in float64 piece by piece."""
    _check_update(update)
    total = 0.0
    for t in update.values():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        for piece in flat.split(NORM_PIECE_ELEMENTS):
            wide = piece.to(torch.float64)
            total += float(torch.dot(wide, wide))
    return math.sqrt(total)


def clip_update(update: Update, max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """``update`` scaled so its global L2 norm is at most ``max_norm``: a scaled copy, or, when
    it is within the norm already, its own tensors (detached; callers never modify them: a
    10M-parameter copy costs 23 ms for nothing).

    Returns ``(clipped, original_norm)``. Integer tensors (e.g. BatchNorm counters) are
    copied untouched. A non-finite update cannot be clipped and raises PrivacyError.
    """
    max_norm = _check_positive("max_norm", max_norm)
    norm = global_l2_norm(update)
    if not math.isfinite(norm):
        raise PrivacyError("update contains NaN or Inf; it cannot be clipped")
    # The tiny safety margin keeps the clipped norm <= max_norm despite float32 rounding.
    factor = min(1.0, max_norm / norm * (1.0 - 1e-6)) if norm > 0 else 1.0
    if factor == 1.0:
        return {name: t.detach() for name, t in update.items()}, norm
    clipped = {
        name: (t.detach() * factor).to(t.dtype) if t.is_floating_point() else t.detach().clone()
        for name, t in update.items()
    }
    return clipped, norm


def _gaussian_like(t: torch.Tensor, std: float, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device in at least float32 (randn has no int/half kernels
    # everywhere), then move/cast to the tensor's own device and dtype.
    device = generator.device if generator is not None else t.device
    draw_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    noise = torch.randn(t.shape, generator=generator, device=device, dtype=draw_dtype)
    return (noise * std).to(device=t.device, dtype=t.dtype)


def add_gaussian_noise(
    update: Update, std: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Return a copy of ``update`` with N(0, std^2) added to every floating-point entry.

    Integer tensors are copied untouched. Noise is drawn from ``generator`` when given (seeded
    runs), on the generator's device, and cast to each tensor's device and dtype.
    """
    _check_update(update)
    std = _check_positive("std", std, allow_zero=True)
    out: dict[str, torch.Tensor] = {}
    for name, t in update.items():
        t = t.detach()
        if t.is_floating_point() and std > 0:
            out[name] = t + _gaussian_like(t, std, generator)
        else:
            out[name] = t.clone()
    return out


def privatize_update(
    update: Update,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Local DP: clip to L2 ``clip_norm`` then add N(0, (noise_multiplier * clip_norm)^2)."""
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    clipped, _ = clip_update(update, clip_norm)
    return add_gaussian_noise(clipped, noise_multiplier * float(clip_norm), generator)
