"""Client-level central DP as a wrapper around any aggregation rule: clip, aggregate, noise once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from federation.errors import PrivacyError
from federation.privacy.mechanisms import _check_positive, add_gaussian_noise, clip_update

__all__ = ["CentralDP", "dp_fedavg"]

Update = Mapping[str, torch.Tensor]


class CentralDP:
    """``rule`` under client-level DP (in the spirit of Flower's
    ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``): every update is clipped to
    L2 ``clip_norm``, the rule aggregates them unweighted, and the output gets N(0, (z x S)^2)
    once, where S = ``rule.sensitivity(n, clip_norm)`` is the rule's own L2 sensitivity to one
    client (zero-out adjacency, n fixed). With ``accountant``, one round is spent before any
    noise is drawn (PrivacyBudgetExceeded leaves nothing changed); a rule without a sound
    sensitivity bound is refused (PrivacyError) before anything is spent.

    Weights are dropped on purpose: per-client weights would change the sensitivity. The
    guarantee covers the rule applied to the cohort it is given; which clients a screening step
    accepted before it is not privatised.
    """

    def __init__(
        self,
        rule: Any,
        clip_norm: float,
        noise_multiplier: float,
        *,
        accountant: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not hasattr(rule, "sensitivity"):
            raise PrivacyError(
                f"rule {getattr(rule, 'name', rule)!r} states no sensitivity; central DP refuses it"
            )
        self.rule = rule
        self.clip_norm = _check_positive("clip_norm", clip_norm)
        self.noise_multiplier = _check_positive(
            "noise_multiplier", noise_multiplier, allow_zero=True
        )
        self.accountant = accountant
        self.generator = generator
        self.last_noise_std = 0.0

    @property
    def name(self) -> str:
        return str(getattr(self.rule, "name", type(self.rule).__name__))

    def params(self) -> dict[str, Any]:
        return dict(self.rule.params()) if hasattr(self.rule, "params") else {}

    def sensitivity(self, n: int, clip: float | None = None) -> float:
        """The wrapped rule's sensitivity for n clients at this clip norm."""
        return float(self.rule.sensitivity(n, self.clip_norm if clip is None else clip))

    def noise_std(self, n: int) -> float:
        """Standard deviation of the noise added to an aggregate of n updates."""
        return self.noise_multiplier * self.sensitivity(n)

    def aggregate(
        self, updates: Sequence[Update], weights: Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        if not updates:
            raise PrivacyError("central DP needs at least one update")
        std = self.noise_std(len(updates))  # refuses an unbounded rule before spending
        if self.accountant is not None:
            self.accountant.spend_round()
        clipped = [clip_update(u, self.clip_norm)[0] for u in updates]
        out = self.rule.aggregate(clipped, None)
        self.last_noise_std = std
        return add_gaussian_noise(out, std, self.generator) if std > 0 else out


def dp_fedavg(
    updates: Sequence[Update],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """DP-FedAvg (McMahan et al. 2018, fixed-size denominator): ``CentralDP(FedAvg(), ...)``.

    Each update is clipped to ``clip_norm``, the unweighted mean gets N(0, (z C / n)^2): the
    same as noising the sum with N(0, (z C)^2) and dividing by n.
    """
    from federation.errors import RobustnessError
    from federation.robust.aggregators import FedAvg

    try:
        return CentralDP(FedAvg(), clip_norm, noise_multiplier, generator=generator).aggregate(
            updates
        )
    except RobustnessError as exc:  # mismatched names or shapes
        raise PrivacyError(str(exc)) from exc
