"""The one defence pipeline: screening (detectors -> reputation -> verdicts), a robust rule, optional central DP.

The security and aggregator services, ``SecurePySyftCommunicationManager`` and
``pdmfed eval robustness`` all run these functions: ``judge`` and ``trusted`` (or both at once,
``screen_cohort``) screen a round's updates, ``quorum`` says whether enough were screened and
accepted to aggregate, ``aggregation_rule`` builds the configured rule (wrapped in ``CentralDP``
when client-level DP is on), and ``Defence.run`` chains them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from federation.errors import NoQuorumError, RobustnessError
from federation.robust.aggregators import Aggregator, FedAvg, build_rule
from federation.robust.detectors import TRUSTED_REPUTATION, Verdicts, screen
from federation.robust.reputation import ReputationBook

__all__ = [
    "Defence",
    "DefenceResult",
    "JUDGED_REASONS",
    "Quorum",
    "Screening",
    "ScreeningPolicy",
    "aggregation_rule",
    "defended_aggregate",
    "judge",
    "quorum",
    "screen_cohort",
    "screening_policy",
    "trusted",
]

Update = Mapping[str, torch.Tensor]

#: Rejections that mean screening judged the update: it counts toward ``min_clients``.
JUDGED_REASONS = ("byzantine", "reputation")


@dataclass(frozen=True)
class ScreeningPolicy:
    """How a cohort is screened: detector threshold, the smallest cohort judged, the reputation floor."""

    enabled: bool = True
    threshold: float = 2.0
    min_clients: int = 3
    reputation_threshold: float = 0.3


def screening_policy(robustness: Any) -> ScreeningPolicy:
    """The policy of a campaign's ``robustness`` section (any object with those attributes)."""
    return ScreeningPolicy(
        bool(robustness.enabled),
        float(robustness.threshold),
        int(robustness.min_clients),
        float(robustness.reputation_threshold),
    )


@dataclass(frozen=True)
class Screening:
    """One cohort's screening: accepted positions with their weights, rejections with reasons."""

    ids: list[str]
    accepted: list[int]
    weights: list[float]
    reputation: dict[str, float]
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: Verdicts | None = None

    @property
    def accepted_ids(self) -> list[str]:
        return [self.ids[i] for i in self.accepted]

    @property
    def flagged_ids(self) -> list[str]:
        return [c for c in self.ids if self.rejected.get(c, {}).get("reason") == "byzantine"]

    @property
    def low_reputation_ids(self) -> list[str]:
        return [c for c in self.ids if self.rejected.get(c, {}).get("reason") == "reputation"]

    @property
    def unscreened_ids(self) -> list[str]:
        return [c for c in self.ids if self.rejected.get(c, {}).get("reason") == "unscreened"]

    @property
    def judged_count(self) -> int:
        """Updates screening judged: the accepted ones and those refused on a verdict."""
        refused = sum(1 for r in self.rejected.values() if r.get("reason") in JUDGED_REASONS)
        return len(self.accepted) + refused


@dataclass(frozen=True)
class Quorum:
    """Whether a round may aggregate: at least ``required`` accepted updates, taken from a cohort
    of at least ``min_clients`` screened ones (``min_clients`` is 0 when screening is off)."""

    required: int
    accepted: int
    screened: int
    min_clients: int

    @property
    def met(self) -> bool:
        return self.accepted >= self.required and self.screened >= self.min_clients

    def to_dict(self) -> dict[str, int]:
        return {
            "required": self.required,
            "accepted": self.accepted,
            "screened": self.screened,
            "min_clients": self.min_clients,
        }

    def check(self) -> None:
        """Raise ``NoQuorumError`` (reason ``no_quorum``, carrying ``to_dict()``) unless met."""
        if not self.met:
            raise NoQuorumError(
                f"no quorum: {self.accepted} accepted of {self.screened} screened updates; "
                f"aggregation needs {self.required} accepted from at least {self.min_clients} "
                "screened",
                quorum=self.to_dict(),
            )


def quorum(accepted: int, screened: int, required: int, policy: ScreeningPolicy) -> Quorum:
    """The quorum of a round with ``accepted`` of ``screened`` updates under ``policy``."""
    need = int(policy.min_clients) if policy.enabled else 0
    return Quorum(int(required), int(accepted), int(screened), need)


def judge(
    updates: Sequence[Update],
    ids: Sequence[str],
    policy: ScreeningPolicy,
    book: ReputationBook | None,
    *,
    reference: Update | None = None,
) -> Verdicts | None:
    """Detectors, then reputation: the verdicts are folded into ``book``. None when screening is off.

    Non-finite updates are always flagged; the statistical tests run from ``policy.min_clients``
    finite updates on (see ``detectors.screen``). Below that nothing was judged, so only the
    flagged verdicts reach ``book``: an unjudged update earns no reputation. With ``book`` the
    direction test's centre comes from the clients whose reputation is above
    ``TRUSTED_REPUTATION`` (see ``detectors.screen``'s ``trusted``).
    """
    if not policy.enabled:
        return None
    ids = [str(i) for i in ids]
    trust = None if book is None else [book.score(c) > TRUSTED_REPUTATION for c in ids]
    verdicts = screen(
        updates, ids, policy.threshold, policy.min_clients, reference=reference, trusted=trust
    )
    if book is not None:
        book.record_round(v for v in verdicts if verdicts.screened or v.flagged)
    return verdicts


def trusted(
    ids: Sequence[str],
    verdicts: Verdicts | None,
    policy: ScreeningPolicy,
    book: ReputationBook | None,
    num_samples: Sequence[float] | None = None,
) -> Screening:
    """Verdicts -> accepted (not flagged, reputation at least the floor) and rejected with reasons.

    An accepted update's weight is its sample count (1 when unknown) times its reputation. When
    screening is on but ``verdicts`` could not judge the cohort (fewer than
    ``policy.min_clients`` finite updates), nothing is accepted: every update not flagged is
    rejected as ``unscreened``, so an update that was never judged never reaches a rule.
    """
    ids = [str(i) for i in ids]
    if num_samples is not None and len(num_samples) != len(ids):
        raise RobustnessError(f"got {len(num_samples)} sample counts for {len(ids)} updates")
    on = policy.enabled
    rep = {c: (float(book.score(c)) if (on and book is not None) else 1.0) for c in ids}
    accepted, weights, rejected = [], [], {}
    unjudged = verdicts is not None and not verdicts.screened
    finite = sum(1 for v in verdicts or () if "non_finite" not in v.reasons)
    for i, c in enumerate(ids):
        v = verdicts[c] if verdicts is not None else None
        if v is not None and v.flagged:
            rejected[c] = {"reason": "byzantine", "why": list(v.reasons), "scores": dict(v.scores)}
        elif unjudged:
            rejected[c] = {
                "reason": "unscreened",
                "why": [
                    f"{finite} update{'s' if finite != 1 else ''} to judge; screening needs "
                    f"min_clients {policy.min_clients}"
                ],
            }
        elif on and rep[c] < policy.reputation_threshold:
            rejected[c] = {"reason": "reputation", "why": [f"reputation {rep[c]:.2f}"]}
        else:
            accepted.append(i)
            samples = 1.0 if num_samples is None else max(float(num_samples[i]), 1.0)
            weights.append(samples * rep[c])
    return Screening(ids, accepted, weights, rep, rejected, verdicts)


def screen_cohort(
    updates: Sequence[Update],
    ids: Sequence[str],
    policy: ScreeningPolicy,
    book: ReputationBook | None,
    *,
    num_samples: Sequence[float] | None = None,
    reference: Update | None = None,
) -> Screening:
    """``judge`` then ``trusted``: the security service's whole screening step."""
    if len(updates) != len(ids):
        raise RobustnessError(f"{len(updates)} updates but {len(ids)} ids")
    verdicts = judge(updates, ids, policy, book, reference=reference)
    return trusted(ids, verdicts, policy, book, num_samples)


def aggregation_rule(
    robustness: Any,
    privacy: Any = None,
    *,
    accountant: Any = None,
    generator: torch.Generator | None = None,
) -> Aggregator:
    """The configured rule (FedAvg when robustness is off), wrapped in ``CentralDP`` when
    ``privacy`` is enabled in central mode. ``robustness.rule`` is a name or a mapping with the
    name and parameters; ``privacy`` needs enabled, mode, clip_norm and noise_multiplier."""
    rule = build_rule(robustness.rule_spec()) if robustness.enabled else FedAvg()
    if privacy is not None and privacy.enabled and privacy.mode == "central":
        from federation.privacy.central import CentralDP

        return CentralDP(
            rule,
            privacy.clip_norm,
            privacy.noise_multiplier,
            accountant=accountant,
            generator=generator,
        )
    return rule


@dataclass(frozen=True)
class DefenceResult:
    """The aggregate, every verdict, and which clients were used or dropped (and why)."""

    aggregate: dict[str, torch.Tensor]
    verdicts: Verdicts | None
    kept_ids: list[str]
    flagged_ids: list[str]
    low_reputation_ids: list[str]
    screening: Screening | None = None


@dataclass
class Defence:
    """Screening policy + rule (possibly ``CentralDP``-wrapped): the services' defence in one call."""

    policy: ScreeningPolicy
    rule: Aggregator

    def run(
        self,
        updates: Sequence[Update],
        ids: Sequence[str],
        book: ReputationBook | None = None,
        *,
        num_samples: Sequence[float] | None = None,
        reference: Update | None = None,
    ) -> DefenceResult:
        """Screen, then aggregate the accepted updates with their weights. RobustnessError when none is left."""
        s = screen_cohort(
            updates, ids, self.policy, book, num_samples=num_samples, reference=reference
        )
        if not s.accepted:
            raise RobustnessError(f"no update survived screening ({len(s.ids)} received)")
        agg = self.rule.aggregate([updates[i] for i in s.accepted], s.weights)
        return DefenceResult(
            agg, s.verdicts, s.accepted_ids, s.flagged_ids, s.low_reputation_ids, s
        )


def defended_aggregate(
    updates: Sequence[Update],
    ids: Sequence[str],
    aggregator: Aggregator,
    *,
    book: ReputationBook | None = None,
    threshold: float = 2.0,
    min_clients: int = 3,
    reputation_threshold: float = 0.3,
    weights: Sequence[float] | None = None,
    reference: Update | None = None,
) -> DefenceResult:
    """``Defence(ScreeningPolicy(...), aggregator).run(...)`` with ``weights`` as the sample counts."""
    policy = ScreeningPolicy(True, threshold, min_clients, reputation_threshold)
    return Defence(policy, aggregator).run(
        updates, ids, book, num_samples=weights, reference=reference
    )
