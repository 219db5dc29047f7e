"""The default defence as one pure step: screen, update reputations, filter, robust-aggregate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from federation.errors import RobustnessError
from federation.robust.aggregators import Aggregator
from federation.robust.detectors import Verdicts, screen
from federation.robust.reputation import ReputationBook

__all__ = ["DefenceResult", "defended_aggregate"]


@dataclass(frozen=True)
class DefenceResult:
    """The aggregate, every verdict, and which clients were used or dropped (and why)."""

    aggregate: dict[str, torch.Tensor]
    verdicts: Verdicts
    kept_ids: list[str]
    flagged_ids: list[str]
    low_reputation_ids: list[str]


def defended_aggregate(
    updates: Sequence[Mapping[str, torch.Tensor]],
    ids: Sequence[str],
    aggregator: Aggregator,
    *,
    book: ReputationBook | None = None,
    threshold: float = 2.0,
    min_clients: int = 3,
    reputation_threshold: float = 0.3,
    weights: Sequence[float] | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> DefenceResult:
    """Screen ``updates``, fold the verdicts into ``book``, drop flagged and low-reputation clients, aggregate the rest.

    ``weights`` (e.g. sample counts) are multiplied by reputation, so weighted rules down-weight
    doubtful clients. RobustnessError when no update survives.
    """
    ids = [str(i) for i in ids]
    verdicts = screen(updates, ids, threshold, min_clients, reference=reference)
    if book is not None:
        book.record_round(verdicts)
    flagged = set(verdicts.flagged_ids)
    low = [
        c
        for c in ids
        if c not in flagged and book is not None and book.score(c) < reputation_threshold
    ]
    keep = [i for i, c in enumerate(ids) if c not in flagged and c not in low]
    if not keep:
        raise RobustnessError(f"no update survived screening ({len(ids)} received)")
    w = None
    if weights is not None:
        if len(weights) != len(ids):
            raise RobustnessError(f"got {len(weights)} weights for {len(ids)} updates")
        rep = book.weights([ids[i] for i in keep]) if book is not None else [1.0] * len(keep)
        w = [float(weights[i]) * r for i, r in zip(keep, rep, strict=True)]
    agg = aggregator.aggregate([updates[i] for i in keep], w)
    return DefenceResult(agg, verdicts, [ids[i] for i in keep], sorted(flagged, key=ids.index), low)
