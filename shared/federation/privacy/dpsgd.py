"""Record-level DP-SGD: per-sample clipping, Gaussian noise, Poisson sampling and their (epsilon, delta) ledger."""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dp_accounting
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from federation.errors import PrivacyBudgetExceeded, PrivacyError
from federation.privacy.accountant import METHODS, _fresh, noise_multiplier_for, round_event

__all__ = [
    "DPSGDConfig",
    "RecordLevelLedger",
    "clip_per_sample",
    "dpsgd_epsilon",
    "noise_for_target",
    "noisy_gradient",
    "parse_dp_config",
    "per_sample_gradients",
    "poisson_batch",
]

_LEDGER_VERSION = 1
#: Added to per-sample norms before dividing, as Opacus does, so a zero gradient stays zero.
_NORM_EPS = 1e-6
_DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD settings for one local training call.

    noise_seed None (the default) seeds sampling and noise from the OS's secure RNG, so nobody
    who knows the training seed (e.g. the orchestrator that sent it) can subtract the noise; an
    int makes the run reproducible, for tests and benchmarks only.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = _DEFAULT_DELTA
    noise_seed: int | None = None

    def generator(self) -> torch.Generator:
        """A fresh generator for Poisson sampling and noise."""
        seed = secrets.randbits(63) if self.noise_seed is None else int(self.noise_seed)
        return torch.Generator().manual_seed(seed)


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_dp_config(raw: Any) -> DPSGDConfig | None:
    """The DP-SGD settings in a training config's ``dp`` entry; None when absent or noise is 0.

    ``raw`` is ``{"noise_multiplier": z, "max_grad_norm": C, "delta": 1e-5}`` with optional
    ``noise_seed``. z == 0 means "no DP" (the plain path); anything malformed is a PrivacyError.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PrivacyError(f"dp config must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"noise_multiplier", "max_grad_norm", "delta", "noise_seed"}
    if unknown:
        raise PrivacyError(f"unknown dp config keys: {sorted(unknown)}")
    z = raw.get("noise_multiplier", 0.0)
    if not _finite_number(z) or z < 0:
        raise PrivacyError(f"dp.noise_multiplier must be a finite number >= 0, got {z!r}")
    if z == 0:
        return None
    c = raw.get("max_grad_norm")
    if not _finite_number(c) or c <= 0:
        raise PrivacyError(f"dp.max_grad_norm must be a positive finite number, got {c!r}")
    delta = raw.get("delta", _DEFAULT_DELTA)
    if not _finite_number(delta) or not 0 < delta < 1:
        raise PrivacyError(f"dp.delta must be in (0, 1), got {delta!r}")
    seed = raw.get("noise_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise PrivacyError(f"dp.noise_seed must be a non-negative int or None, got {seed!r}")
    return DPSGDConfig(float(z), float(c), float(delta), seed)


# --- per-sample gradients and the Gaussian mechanism ------------------------------------------------
def per_sample_gradients(
    model: nn.Module,
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of each sample's loss w.r.t. every trainable parameter, shaped (batch, *param).

    ``per_sample_loss(pred, target)`` returns one loss per sample. Uses torch.func (vmap of
    grad over a batch of one), so parameter names are the model's own. Also returns the losses.
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return per_sample_loss(pred, t.unsqueeze(0)).sum()

    with warnings.catch_warnings():
        # nn.LSTM has no vmap batching rule; the per-sample fallback is correct, only slower.
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        grads, losses = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))(params, X, y)
    return grads, losses.detach()


def clip_per_sample(
    grads: Mapping[str, torch.Tensor], max_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scale each sample's gradient (its L2 norm across all parameters) to at most ``max_norm``.

    ``grads`` maps names to (batch, *param) tensors; returns (clipped, per-sample norms before).
    """
    if not _finite_number(max_norm) or max_norm <= 0:
        raise PrivacyError(f"max_norm must be a positive finite number, got {max_norm!r}")
    if not grads:
        raise PrivacyError("no gradients to clip")
    flat = [g.reshape(g.shape[0], math.prod(g.shape[1:])) for g in grads.values()]
    norms = torch.linalg.vector_norm(torch.cat(flat, dim=1), dim=1)
    factor = (max_norm / (norms + _NORM_EPS)).clamp(max=1.0)
    clipped = {k: g * factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) for k, g in grads.items()}
    return clipped, norms


def noisy_gradient(
    clipped: Mapping[str, torch.Tensor],
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """(sum of clipped per-sample gradients + N(0, (z*C)^2)) / expected batch size, per parameter.

    Dividing by the *expected* (not the realised) Poisson batch size keeps the sensitivity of
    the sum at C, as Opacus does. An empty batch (batch dimension 0) still gets its noise.
    """
    if not _finite_number(noise_multiplier) or noise_multiplier < 0:
        raise PrivacyError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
    if not _finite_number(expected_batch_size) or expected_batch_size <= 0:
        raise PrivacyError(f"expected_batch_size must be positive, got {expected_batch_size!r}")
    std = float(noise_multiplier) * float(max_grad_norm)
    out = {}
    for k, g in clipped.items():
        total = g.sum(dim=0)
        noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * std
        out[k] = (total + noise) / float(expected_batch_size)
    return out


def poisson_batch(n: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each of ``n`` records is in it with prob ``sample_rate``."""
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten()


# --- accounting --------------------------------------------------------------------------------
def _check_event(noise_multiplier: Any, sample_rate: Any, steps: Any) -> None:
    if not _finite_number(noise_multiplier) or noise_multiplier <= 0:
        raise PrivacyError(f"noise_multiplier must be > 0 for DP-SGD, got {noise_multiplier!r}")
    if not _finite_number(sample_rate) or not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise PrivacyError(f"steps must be a non-negative int, got {steps!r}")


def _check_delta_method(delta: Any, method: str) -> None:
    if not _finite_number(delta) or not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")
    if method not in METHODS:
        raise PrivacyError(f"unknown accounting method {method!r}; choose one of {METHODS}")


def _epsilon_of(events: list[tuple[float, float, int]], delta: float, method: str) -> float:
    events = [e for e in events if e[2] > 0]
    if not events:
        return 0.0
    accountant = _fresh(method)
    accountant.compose(dp_accounting.ComposedDpEvent([round_event(z, q, s) for z, q, s in events]))
    return float(accountant.get_epsilon(delta))


def dpsgd_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float = _DEFAULT_DELTA,
    method: str = "rdp",
) -> float:
    """Record-level epsilon at ``delta`` of ``steps`` Poisson-sampled Gaussian DP-SGD steps.

    The event is dp-accounting's ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
    GaussianDpEvent(z)), steps)``; 0 steps cost nothing.
    """
    _check_event(noise_multiplier, sample_rate, steps)
    _check_delta_method(delta, method)
    return _epsilon_of([(float(noise_multiplier), float(sample_rate), steps)], delta, method)


def noise_for_target(
    target_eps: float,
    sample_rate: float,
    steps: int,
    delta: float = _DEFAULT_DELTA,
    method: str = "rdp",
) -> float:
    """Smallest noise multiplier whose DP-SGD epsilon after ``steps`` steps is <= ``target_eps``.

    Calibrated with ``dp_accounting.calibrate_dp_mechanism`` over the same event as
    ``dpsgd_epsilon``.
    """
    _check_event(1.0, sample_rate, steps)
    if steps < 1:
        raise PrivacyError("noise_for_target needs at least one step")
    return noise_multiplier_for(target_eps, steps, float(sample_rate), delta, method)


class RecordLevelLedger:
    """Per-datasite record-level privacy spent by DP-SGD, composed over rounds.

    Each datasite's epsilon is that of the composition of all its recorded DP-SGD calls (one
    dp-accounting ``ComposedDpEvent``), never a sum of per-round epsilons. Adjacency is
    add/remove of one record, i.e. one training window; an engine contributes many overlapping
    windows, so protecting a whole engine costs group privacy on top of this epsilon.
    """

    def __init__(self, delta: float = _DEFAULT_DELTA, method: str = "rdp") -> None:
        _check_delta_method(delta, method)
        self.delta = float(delta)
        self.method = method
        self._events: dict[str, list[tuple[float, float, int]]] = {}
        self._epsilon: dict[str, float] = {}

    @staticmethod
    def _check_id(datasite_id: Any) -> str:
        if not isinstance(datasite_id, str) or not datasite_id:
            raise PrivacyError(f"datasite_id must be a non-empty string, got {datasite_id!r}")
        return datasite_id

    def _with(
        self, datasite_id: str, noise_multiplier: float, sample_rate: float, steps: int
    ) -> list[tuple[float, float, int]]:
        _check_event(noise_multiplier, sample_rate, steps)
        events = list(self._events.get(datasite_id, []))
        new = (float(noise_multiplier), float(sample_rate), steps)
        if events and events[-1][:2] == new[:2]:
            # Same mechanism again: one self-composition with the summed step count.
            events[-1] = (new[0], new[1], events[-1][2] + steps)
        else:
            events.append(new)
        return events

    def epsilon_if(
        self, datasite_id: str, noise_multiplier: float, sample_rate: float, steps: int
    ) -> float:
        """Epsilon ``datasite_id`` would reach after one more call of these parameters."""
        ds = self._check_id(datasite_id)
        return _epsilon_of(
            self._with(ds, noise_multiplier, sample_rate, steps), self.delta, self.method
        )

    def would_exceed(
        self,
        budget: float,
        datasite_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> bool:
        """True when one more such call would take ``datasite_id`` over ``budget`` epsilon."""
        if not _finite_number(budget) or budget <= 0:
            raise PrivacyError(f"budget must be a positive finite number, got {budget!r}")
        return self.epsilon_if(datasite_id, noise_multiplier, sample_rate, steps) > budget

    def spend(
        self,
        datasite_id: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        *,
        budget: float | None = None,
    ) -> float:
        """Record one DP-SGD call at ``datasite_id``; returns its new epsilon.

        With ``budget``, a call that would exceed it raises PrivacyBudgetExceeded and nothing
        is recorded.
        """
        ds = self._check_id(datasite_id)
        events = self._with(ds, noise_multiplier, sample_rate, steps)
        eps = _epsilon_of(events, self.delta, self.method)
        if budget is not None and eps > budget:
            raise PrivacyBudgetExceeded(
                f"datasite {ds}: DP-SGD call would raise record-level epsilon from "
                f"{self.epsilon(ds):.4g} to {eps:.4g}, over the budget {budget:g} "
                f"(delta={self.delta:g})"
            )
        self._events[ds] = events
        self._epsilon[ds] = eps
        return eps

    def epsilon(self, datasite_id: str) -> float:
        """Record-level epsilon spent so far at ``datasite_id`` (0.0 if it never trained)."""
        return self._epsilon.get(self._check_id(datasite_id), 0.0)

    def max_epsilon(self) -> float:
        """The largest epsilon of any datasite (0.0 when nothing was spent)."""
        return max(self._epsilon.values(), default=0.0)

    def datasites(self) -> list[str]:
        """Datasites with at least one recorded call, sorted."""
        return sorted(self._events)

    def steps(self, datasite_id: str) -> int:
        """Total DP-SGD steps recorded for ``datasite_id``."""
        return sum(s for _, _, s in self._events.get(self._check_id(datasite_id), []))

    def to_dict(self) -> dict[str, Any]:
        """The ledger as plain JSON/msgpack-safe data."""
        return {
            "version": _LEDGER_VERSION,
            "delta": self.delta,
            "method": self.method,
            "datasites": {
                ds: {"events": [list(e) for e in events], "epsilon": self._epsilon[ds]}
                for ds, events in sorted(self._events.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> RecordLevelLedger:
        """Restore a ledger written by ``to_dict``; epsilons are recomputed, not trusted."""
        if not isinstance(data, Mapping) or data.get("version") != _LEDGER_VERSION:
            raise PrivacyError("not a record-level ledger (missing or unknown version)")
        try:
            ledger = cls(data["delta"], data["method"])
            sites = data["datasites"]
            if not isinstance(sites, Mapping):
                raise TypeError("datasites is not a mapping")
            for ds, entry in sites.items():
                for z, q, s in entry["events"]:
                    ledger._events[ledger._check_id(ds)] = ledger._with(ds, z, q, s)
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"corrupt record-level ledger: {exc}") from exc
        for ds, events in ledger._events.items():
            ledger._epsilon[ds] = _epsilon_of(events, ledger.delta, ledger.method)
        return ledger
