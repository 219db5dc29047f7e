"""Per-client reputation: an exponential moving average of screening verdicts that falls fast and recovers slowly."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from federation.errors import RobustnessError

__all__ = ["ReputationBook"]

_VERSION = 1


class ReputationBook:
    """Scores in [0, 1]; a new client starts at ``initial``.

    Each verdict moves the score toward 0 (flagged) with weight ``alpha_bad`` or toward 1
    (clean) with the smaller ``alpha_good``: with the defaults two flags take a client from
    1.0 below 0.3, and climbing back above 0.9 from there takes about twenty clean rounds.
    """

    def __init__(
        self, alpha_bad: float = 0.5, alpha_good: float = 0.1, initial: float = 1.0
    ) -> None:
        for name, value in (("alpha_bad", alpha_bad), ("alpha_good", alpha_good)):
            if not 0 < value <= 1:
                raise RobustnessError(f"{name} must be in (0, 1], got {value}")
        if not 0 <= initial <= 1:
            raise RobustnessError(f"initial must be in [0, 1], got {initial}")
        self.alpha_bad = float(alpha_bad)
        self.alpha_good = float(alpha_good)
        self.initial = float(initial)
        self._scores: dict[str, float] = {}
        self._flags: dict[str, int] = {}
        self._rounds: dict[str, int] = {}
        self.updates = 0

    def score(self, client_id: str) -> float:
        """Current reputation (``initial`` for an unknown client)."""
        return self._scores.get(str(client_id), self.initial)

    def scores(self) -> dict[str, float]:
        """A snapshot of every known client's reputation."""
        return dict(self._scores)

    def record(self, client_id: str, flagged: bool) -> float:
        """Fold one verdict into the client's score and return the new score."""
        cid = str(client_id)
        old = self.score(cid)
        new = (
            (1 - self.alpha_bad) * old if flagged else (1 - self.alpha_good) * old + self.alpha_good
        )
        self._scores[cid] = min(1.0, max(0.0, new))
        self._flags[cid] = self._flags.get(cid, 0) + int(bool(flagged))
        self._rounds[cid] = self._rounds.get(cid, 0) + 1
        self.updates += 1
        return self._scores[cid]

    def record_round(self, verdicts: Iterable[Any]) -> dict[str, float]:
        """Fold a screening's verdicts (objects with ``client_id`` and ``flagged``) in; return new scores."""
        return {v.client_id: self.record(v.client_id, v.flagged) for v in verdicts}

    def filter(self, client_ids: Sequence[str], threshold: float) -> list[str]:
        """The ids whose reputation is at least ``threshold``, in input order."""
        return [c for c in client_ids if self.score(c) >= threshold]

    def weights(self, client_ids: Sequence[str]) -> list[float]:
        """Reputations as aggregation weights, in input order (multiply with sample counts)."""
        return [self.score(c) for c in client_ids]

    def flags(self, client_id: str) -> int:
        """How many times the client has been flagged."""
        return self._flags.get(str(client_id), 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data snapshot for persistence."""
        return {
            "version": _VERSION,
            "alpha_bad": self.alpha_bad,
            "alpha_good": self.alpha_good,
            "initial": self.initial,
            "scores": dict(self._scores),
            "flags": dict(self._flags),
            "rounds": dict(self._rounds),
            "updates": self.updates,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReputationBook:
        """Restore a book written by ``to_dict``."""
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise RobustnessError("not a reputation book (missing or unknown version)")
        try:
            book = cls(data["alpha_bad"], data["alpha_good"], data["initial"])
            book._scores = {str(k): min(1.0, max(0.0, float(v))) for k, v in data["scores"].items()}
            book._flags = {str(k): int(v) for k, v in data.get("flags", {}).items()}
            book._rounds = {str(k): int(v) for k, v in data.get("rounds", {}).items()}
            book.updates = int(data.get("updates", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RobustnessError(f"corrupt reputation book: {exc}") from exc
        return book
