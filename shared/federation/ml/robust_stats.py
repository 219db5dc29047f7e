"""Byzantine-robust merge of the factories' round-0 statistics: screen outliers, cap counts, merge.

One compromised factory could otherwise poison every factory's z-scoring with a shifted mean,
a blown-up variance or a huge count. With at least ``min_factories`` factories holding a
regime, a factory is left out of the statistics when, on any sensor of that regime, its mean
lies more than ``mean_radius`` robust spreads from the factories' median mean (the spread is
the larger of the median per-factory std and 1.4826 x the median absolute deviation of the
means), or its std exceeds ``std_ratio`` x the median per-factory std; each remaining
factory's weight is its count, capped at ``count_cap`` x the median count. The rest merge
exactly (as merge_stats: identical to it when nobody is screened out or capped). With a
strict majority honest, the medians lie within the honest factories' range, so a Byzantine
minority moves the merged mean by at most its capped weight share x (mean_radius x spread +
the honest means' spread), and the variance likewise (see docs/security.md, round 0).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from federation.ml.data import Normalizer
from federation.ml.fedstats import SensorStats, StatisticsError, moments, normalizer_of

__all__ = ["StatsScreen", "RobustMerge", "robust_merge"]

#: 1.4826 x MAD estimates a normal distribution's std.
_MAD_TO_STD = 1.4826
#: A spread floor relative to the mean: constant sensors (std 0) compare exactly, not by 0/0.
_REL_FLOOR = 1e-9


@dataclass(frozen=True)
class StatsScreen:
    """How far one factory's statistics may sit from the others' before they are left out."""

    mean_radius: float = 3.0  # robust spreads between a factory's mean and the median mean
    std_ratio: float = 3.0  # a factory's std over the median std
    count_cap: float = 2.0  # a factory's weight over the median count
    min_factories: int = 3  # fewer holding a regime: no median to compare with, merged as sent


@dataclass
class RobustMerge:
    """The merged normaliser and who was left out (reason) or down-weighted (count used)."""

    normalizer: Normalizer
    kept: list[str]
    rejected: dict[str, str] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)
    #: Rows (or window values) the merge weighs, after capping, over every regime.
    count: int = 0


def robust_merge(
    parts: Mapping[str, SensorStats], screen: StatsScreen | None = None
) -> RobustMerge:
    """The factories' statistics ({factory: stats}) merged robustly; StatisticsError when no
    strict majority of them agrees (nobody can tell the honest ones apart then)."""
    screen = screen or StatsScreen()
    if not parts:
        raise StatisticsError("no partition statistics to merge")
    for part in parts.values():
        part.check()
    rejected = _other_columns(parts)
    for key in sorted({k for p in parts.values() for k in p.regimes}):
        holders = {ds: p for ds, p in parts.items() if ds not in rejected and key in p.regimes}
        if len(holders) >= screen.min_factories:
            rejected.update(_outliers(key, holders, screen))
    kept = sorted(ds for ds in parts if ds not in rejected)
    if len(parts) >= screen.min_factories and 2 * len(kept) <= len(parts):
        why = "; ".join(f"{ds}: {reason}" for ds, reason in sorted(rejected.items()))
        raise StatisticsError(f"the factories' statistics disagree, no majority agrees ({why})")
    first = parts[kept[0]]
    by_regime, capped, total = {}, {}, Fraction(0)
    for key in sorted({k for ds in kept for k in parts[ds].regimes}):
        holders = {ds: parts[ds].regimes[key] for ds in kept if key in parts[ds].regimes}
        weights = _weights({ds: n for ds, (n, _, _) in holders.items()}, screen)
        width = len(first.columns)
        n, sums, squares = Fraction(0), [Fraction(0)] * width, [Fraction(0)] * width
        for ds, (count, s, q) in holders.items():
            rho = Fraction(weights[ds], count)
            if weights[ds] != count:
                capped[ds] = weights[ds]
            n += rho * count
            sums = [a + rho * b for a, b in zip(sums, s, strict=True)]
            squares = [a + rho * b for a, b in zip(squares, q, strict=True)]
        by_regime[key] = moments(n, sums, squares)
        total += n
    norm = normalizer_of(first.columns, first.decimals, by_regime)
    return RobustMerge(norm, kept, rejected, capped, int(total))


def _other_columns(parts: Mapping[str, SensorStats]) -> dict[str, str]:
    """Factories whose columns or regime rounding differ from the most common ones."""
    shape = {ds: (tuple(p.columns), None if p.decimals is None else tuple(p.decimals))
             for ds, p in parts.items() if p.regimes}  # fmt: skip
    if not shape:
        raise StatisticsError("no statistics to normalise with: every partition was empty")
    common, _ = Counter(shape.values()).most_common(1)[0]
    return {ds: f"statistics over {list(s[0])} (rounding {s[1]}), the others' over "
                f"{list(common[0])} (rounding {common[1]})"
            for ds, s in shape.items() if s != common}  # fmt: skip


def _outliers(key: tuple[float, ...], holders: Mapping[str, SensorStats], screen: StatsScreen
              ) -> dict[str, str]:  # fmt: skip
    """Factories whose mean or std on some sensor of regime ``key`` is far from the others'."""
    ms = {ds: moments(*p.regimes[key]) for ds, p in holders.items()}
    out: dict[str, str] = {}
    columns = next(iter(holders.values())).columns
    for j, col in enumerate(columns):
        means = {ds: m[j] for ds, (m, _) in ms.items()}
        stds = {ds: s[j] for ds, (_, s) in ms.items()}
        centre = statistics.median(means.values())
        mad = statistics.median(abs(v - centre) for v in means.values())
        floor = _REL_FLOOR * max(1.0, abs(centre))
        typical = max(statistics.median(stds.values()), floor)
        spread = max(typical, _MAD_TO_STD * mad)
        for ds in sorted(holders):
            if ds in out:
                continue
            shift = abs(means[ds] - centre) / spread
            if shift > screen.mean_radius:
                out[ds] = (f"regime {list(key)}, column {col!r}: mean {means[ds]:.6g} is "
                           f"{shift:.3g} spreads from the factories' median {centre:.6g}")  # fmt: skip
            elif stds[ds] > screen.std_ratio * typical:
                out[ds] = (f"regime {list(key)}, column {col!r}: std {stds[ds]:.6g} is "
                           f"{stds[ds] / typical:.3g}x the factories' median {typical:.6g}")  # fmt: skip
    return out


def _weights(counts: Mapping[str, int], screen: StatsScreen) -> dict[str, int]:
    """Each factory's count, capped at count_cap x the median count (>= min_factories)."""
    if len(counts) < screen.min_factories:
        return dict(counts)
    cap = max(1, int(screen.count_cap * statistics.median(counts.values())))
    return {ds: min(n, cap) for ds, n in counts.items()}
