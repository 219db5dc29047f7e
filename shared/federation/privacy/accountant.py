"""(epsilon, delta) accounting for rounds of the subsampled Gaussian mechanism, via Google dp-accounting."""

from __future__ import annotations

import math
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp

from federation.errors import PrivacyBudgetExceeded, PrivacyError

__all__ = ["PrivacyAccountant", "noise_multiplier_for", "round_event", "METHODS"]

#: Accounting methods: Renyi DP (fast, slightly loose) and privacy-loss distributions (tight).
METHODS = ("rdp", "pld")
_LEDGER_VERSION = 1
#: PLD grid step: 1e-3 changes epsilon by < 1e-6 relative here and is ~10x faster than the 1e-4 default.
PLD_DISCRETIZATION = 1e-3


def _validate(noise_multiplier: float, sampling_rate: float, delta: float) -> None:
    if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier)):
        raise PrivacyError(f"noise_multiplier must be a finite number, got {noise_multiplier!r}")
    if noise_multiplier < 0:
        raise PrivacyError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not (isinstance(sampling_rate, int | float) and 0 < sampling_rate <= 1):
        raise PrivacyError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def _fresh(method: str) -> dp_accounting.PrivacyAccountant:
    if method == "rdp":
        return rdp.RdpAccountant()
    if method == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise PrivacyError(f"unknown accounting method {method!r}; choose one of {METHODS}")


def round_event(
    noise_multiplier: float, sampling_rate: float, rounds: int
) -> dp_accounting.DpEvent:
    """The DpEvent for ``rounds`` rounds of Gaussian noise at ``noise_multiplier``, Poisson-sampled at ``sampling_rate``."""
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    return dp_accounting.SelfComposedDpEvent(event, rounds)


def _epsilon(
    noise_multiplier: float, sampling_rate: float, delta: float, rounds: int, method: str
) -> float:
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = _fresh(method)
    accountant.compose(round_event(noise_multiplier, sampling_rate, rounds))
    return float(accountant.get_epsilon(delta))


class PrivacyAccountant:
    """A campaign's privacy ledger: epsilon spent so far, and a budget that refuses the round that would exceed it.

    Each round is one application of the Gaussian mechanism (std = noise_multiplier x clip
    norm) to data sampled at ``sampling_rate``; epsilon for k rounds comes from dp-accounting's
    accountant over ``SelfComposedDpEvent(event, k)``, never a hand-rolled formula.
    """

    def __init__(
        self,
        noise_multiplier: float,
        sampling_rate: float = 1.0,
        delta: float = 1e-5,
        max_epsilon: float | None = None,
        method: str = "rdp",
    ) -> None:
        _validate(noise_multiplier, sampling_rate, delta)
        if method not in METHODS:
            raise PrivacyError(f"unknown accounting method {method!r}; choose one of {METHODS}")
        if max_epsilon is not None and not (
            isinstance(max_epsilon, int | float) and max_epsilon > 0 and not math.isnan(max_epsilon)
        ):
            raise PrivacyError(
                f"max_epsilon must be a positive number or None, got {max_epsilon!r}"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.delta = float(delta)
        self.max_epsilon = None if max_epsilon is None else float(max_epsilon)
        self.method = method
        self._rounds = 0
        self._epsilon = 0.0
        self._history: list[float] = []

    @property
    def rounds(self) -> int:
        """Rounds spent so far."""
        return self._rounds

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta``."""
        return self._epsilon

    @property
    def history(self) -> list[float]:
        """Epsilon after each spent round."""
        return list(self._history)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds in total (inf without noise)."""
        if not isinstance(rounds, int) or rounds < 0:
            raise PrivacyError(f"rounds must be a non-negative int, got {rounds!r}")
        return _epsilon(self.noise_multiplier, self.sampling_rate, self.delta, rounds, self.method)

    def remaining_rounds(self, limit: int = 100_000) -> int | None:
        """How many more rounds fit in the budget (None without a budget), searched up to ``limit``."""
        if self.max_epsilon is None:
            return None
        lo, hi = self._rounds, self._rounds + limit
        if self.epsilon_after(lo + 1) > self.max_epsilon:
            return 0
        while lo < hi:  # largest total r with epsilon_after(r) <= max_epsilon
            mid = (lo + hi + 1) // 2
            if self.epsilon_after(mid) <= self.max_epsilon:
                lo = mid
            else:
                hi = mid - 1
        return lo - self._rounds

    def spend_round(self) -> float:
        """Record one more round and return the new epsilon; refuse (nothing spent) if it would exceed the budget."""
        nxt = self.epsilon_after(self._rounds + 1)
        if self.max_epsilon is not None and nxt > self.max_epsilon:
            raise PrivacyBudgetExceeded(
                f"round {self._rounds + 1} would raise epsilon from {self._epsilon:.4g} to {nxt:.4g}, "
                f"over max_epsilon={self.max_epsilon:g} (delta={self.delta:g})"
            )
        self._rounds += 1
        self._epsilon = nxt
        self._history.append(nxt)
        return nxt

    def to_dict(self) -> dict[str, Any]:
        """The ledger as plain data (JSON/msgpack-safe) for persistence."""
        return {
            "version": _LEDGER_VERSION,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "method": self.method,
            "rounds": self._rounds,
            "epsilon": self._epsilon,
            "history": list(self._history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyAccountant:
        """Restore a ledger written by ``to_dict``; epsilon is recomputed, not trusted."""
        if not isinstance(data, dict) or data.get("version") != _LEDGER_VERSION:
            raise PrivacyError("not a privacy ledger (missing or unknown version)")
        try:
            acct = cls(
                data["noise_multiplier"],
                data["sampling_rate"],
                data["delta"],
                data["max_epsilon"],
                data["method"],
            )
            rounds = data["rounds"]
            history = [float(e) for e in data.get("history", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise PrivacyError(f"corrupt privacy ledger: {exc}") from exc
        if not isinstance(rounds, int) or rounds < 0:
            raise PrivacyError(f"corrupt privacy ledger: rounds={rounds!r}")
        acct._rounds = rounds
        acct._epsilon = acct.epsilon_after(rounds)
        acct._history = history if len(history) == rounds else [acct._epsilon] * (rounds > 0)
        return acct


def noise_multiplier_for(
    target_epsilon: float,
    rounds: int,
    sampling_rate: float = 1.0,
    delta: float = 1e-5,
    method: str = "rdp",
    tol: float = 1e-4,
) -> float:
    """Smallest noise multiplier whose epsilon after ``rounds`` rounds is <= ``target_epsilon`` (dp-accounting calibration)."""
    _validate(1.0, sampling_rate, delta)
    if not (
        isinstance(target_epsilon, int | float)
        and target_epsilon > 0
        and math.isfinite(target_epsilon)
    ):
        raise PrivacyError(
            f"target_epsilon must be a positive finite number, got {target_epsilon!r}"
        )
    if not isinstance(rounds, int) or rounds < 1:
        raise PrivacyError(f"rounds must be a positive int, got {rounds!r}")
    _fresh(method)

    def calibrate(m: str, bracket: dp_accounting.mechanism_calibration.BracketInterval) -> float:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: _fresh(m),
                lambda sigma: round_event(sigma, sampling_rate, rounds),
                target_epsilon,
                delta,
                bracket_interval=bracket,
                tol=tol,
            )
        )

    try:
        z_rdp = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(0.01, 1.0))
        if method == "rdp":
            return z_rdp
        # PLD is tighter than RDP, so its answer lies below z_rdp; bracketing there keeps the
        # slow PLD evaluations away from tiny noise multipliers.
        try:
            return calibrate("pld", dp_accounting.ExplicitBracketInterval(z_rdp / 4, z_rdp))
        except ValueError:
            return calibrate("pld", dp_accounting.ExplicitBracketInterval(0.01, z_rdp))
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as exc:
        raise PrivacyError(
            f"cannot calibrate a noise multiplier for epsilon={target_epsilon} over {rounds} rounds: {exc}"
        ) from exc
