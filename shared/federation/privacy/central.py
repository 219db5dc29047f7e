"""Central DP-FedAvg: clip every update, sum, noise the sum once, divide by the count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from federation.errors import PrivacyError
from federation.privacy.mechanisms import _check_positive, add_gaussian_noise, clip_update

__all__ = ["dp_fedavg"]


def dp_fedavg(
    updates: Sequence[Mapping[str, torch.Tensor]],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Average ``updates`` with central DP (McMahan et al. 2018, fixed-size denominator).

    Each update is clipped to L2 ``clip_norm`` so one client changes the sum by at most C;
    the sum gets N(0, (z*C)^2) once, then is divided by n. Weights are deliberately not
    supported: per-client weights would change the sensitivity.
    """
    if not updates:
        raise PrivacyError("dp_fedavg needs at least one update")
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    clipped = [clip_update(u, clip_norm)[0] for u in updates]
    names = list(clipped[0].keys())
    for i, c in enumerate(clipped[1:], start=1):
        if list(c.keys()) != names and set(c.keys()) != set(names):
            raise PrivacyError(f"update {i} has different parameter names from update 0")
    summed: dict[str, torch.Tensor] = {}
    for name in names:
        ref = clipped[0][name]
        if ref.is_floating_point():
            try:
                summed[name] = torch.stack([c[name] for c in clipped]).sum(dim=0)
            except RuntimeError as exc:
                raise PrivacyError(f"parameter {name!r} has mismatched shapes: {exc}") from exc
        else:
            summed[name] = ref.clone()
    noisy = add_gaussian_noise(summed, noise_multiplier * float(clip_norm), generator)
    n = len(clipped)
    return {k: (v / n).to(v.dtype) if v.is_floating_point() else v for k, v in noisy.items()}
