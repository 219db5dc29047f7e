"""Byzantine attacks for evaluating defences (never used in production paths)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from federation.errors import RobustnessError
from federation.robust._tensors import _stack, _unflatten

__all__ = [
    "sign_flip",
    "scaling",
    "gaussian_noise",
    "alie",
    "alie_z",
    "ipm",
    "label_flip",
    "craft",
    "ATTACKS",
]

Update = Mapping[str, torch.Tensor]


def sign_flip(update: Update, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Send the update pointing the other way: -scale x update."""
    return {k: (-scale * v) if v.is_floating_point() else v.clone() for k, v in update.items()}


def scaling(update: Update, factor: float = 10.0) -> dict[str, torch.Tensor]:
    """Boost the update: factor x update."""
    return {k: (factor * v) if v.is_floating_point() else v.clone() for k, v in update.items()}


def gaussian_noise(
    like: Update, std: float = 1.0, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """An update of pure N(0, std^2) noise shaped like ``like``."""
    return {
        k: (torch.randn(v.shape, generator=generator, dtype=torch.float32) * std).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in like.items()
    }


def alie_z(n_total: int, n_byzantine: int) -> float:
    """Baruch et al. 2019's z_max: s = floor(n/2 + 1) - f supporters needed, z = Phi^-1((n - s) / n)."""
    s = math.floor(n_total / 2 + 1) - n_byzantine
    p = (n_total - s) / n_total
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


def alie(
    honest: Sequence[Update], n_total: int, n_byzantine: int, z: float | None = None
) -> dict[str, torch.Tensor]:
    """A Little Is Enough (Baruch et al. 2019): mean - z x std per coordinate of the honest updates."""
    if len(honest) < 2:
        raise RobustnessError("ALIE needs at least two honest updates to estimate a spread")
    x, spec = _stack(honest)
    zz = alie_z(n_total, n_byzantine) if z is None else float(z)
    return _unflatten(x.mean(dim=0) - zz * x.std(dim=0), spec)


def ipm(honest: Sequence[Update], epsilon: float = 0.5) -> dict[str, torch.Tensor]:
    """Inner-product manipulation (Xie et al. 2020): -epsilon x mean of the honest updates."""
    x, spec = _stack(honest)
    return _unflatten(-float(epsilon) * x.mean(dim=0), spec)


def label_flip(y: torch.Tensor, max_value: float | None = None) -> torch.Tensor:
    """Datasite-side poisoning: 0/1 labels become 1 - y; regression targets become max - y (RUL reversed)."""
    if not y.is_floating_point() and not bool(((y == 0) | (y == 1)).all()):
        raise RobustnessError("label_flip on integer labels expects 0/1 classes")
    if not y.is_floating_point():
        return 1 - y
    top = float(y.max()) if max_value is None else float(max_value)
    return top - y


#: Update-crafting attacks by name (label flipping acts on data, see ``label_flip``).
ATTACKS = ("none", "sign_flip", "scaling", "gaussian", "alie", "ipm")


def craft(
    attack: str,
    own: Sequence[Update],
    honest: Sequence[Update],
    n_total: int,
    *,
    generator: torch.Generator | None = None,
    scale_factor: float = 10.0,
    noise_std: float | None = None,
    ipm_epsilon: float = 0.5,
) -> list[dict[str, torch.Tensor]]:
    """Replace each Byzantine client's own update ``own[i]`` by the named attack's output.

    Omniscient attacks (ALIE, IPM) see every ``honest`` update, as in their papers. The
    Gaussian attack's default std is 10x the honest updates' per-coordinate spread.
    """
    if attack not in ATTACKS:
        raise RobustnessError(f"unknown attack {attack!r}; choose one of {ATTACKS}")
    f = len(own)
    if attack == "none" or f == 0:
        return [dict(u) for u in own]
    if attack == "sign_flip":
        return [sign_flip(u) for u in own]
    if attack == "scaling":
        return [scaling(u, scale_factor) for u in own]
    if attack == "gaussian":
        if noise_std is None:
            x, _ = _stack(honest)
            noise_std = 10.0 * float(x.std(dim=0).mean()) if len(honest) > 1 else 1.0
        return [gaussian_noise(u, noise_std, generator) for u in own]
    if attack == "alie":
        evil = alie(honest, n_total, f)
        return [dict(evil) for _ in own]
    evil = ipm(honest, ipm_epsilon)
    return [dict(evil) for _ in own]
