"""Central DP noise is calibrated to each rule's real sensitivity: worst-case neighbouring cohorts, n = 3..20.

Adjacency (what the accountant assumes): one client's clipped update is replaced by the zero
update, the cohort size n stays the same. For every rule the largest change of the aggregate
over such neighbours must not exceed the sensitivity the noise was calibrated to.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from federation.campaign import CampaignConfig
from federation.errors import PrivacyError
from federation.privacy import PrivacyAccountant
from federation.robust.pipeline import aggregation_rule

CLIP = 2.0
Z = 0.7
D = 6  # coordinates of the worst-case constructions
NOISE_D = 40_000  # extra zero coordinates on which the noise's std is measured

RULES = [
    {"name": "fedavg"},
    {"name": "trimmed_mean", "trim_ratio": 0.1},
    {"name": "trimmed_mean", "trim_ratio": 0.25, "min_clients": 3},
    {"name": "median"},
    {"name": "krum", "f": 1},
    {"name": "multi_krum", "f": 1, "m": 3},
    {"name": "centered_clipping", "tau": 0.5, "iters": 3},
]


def _e(j: int, scale: float) -> torch.Tensor:
    v = torch.zeros(D, dtype=torch.float64)
    v[j] = scale
    return v


def _cohorts(n: int) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Neighbouring pairs as (the other n - 1 updates, the moved client's update; 0 in the neighbour).

    Order-statistic worst case: k clients at +C, k at -C, the rest 0, for every k; selection
    worst case: two clusters at -C and +C (the -C one first: it wins ties) of every split.
    """
    out = []
    for k in range(0, (n - 1) // 2 + 1):
        rest = n - 1 - 2 * k
        others = [_e(0, CLIP)] * k + [_e(0, -CLIP)] * k + [_e(0, 0.0)] * rest
        out.append((others, _e(0, CLIP)))
    for a in range(1, n - 1):
        others = [_e(0, -CLIP)] * (n - 1 - a) + [_e(0, CLIP)] * a
        out.append((others, _e(0, CLIP)))
    gen = torch.Generator().manual_seed(n)
    for _ in range(4):  # random clipped cohorts, the moved client anywhere in the ball
        others = []
        for _ in range(n - 1):
            v = torch.randn(D, generator=gen, dtype=torch.float64)
            others.append(v / v.norm() * CLIP * float(torch.rand(1, generator=gen)))
        moved = torch.randn(D, generator=gen, dtype=torch.float64)
        out.append((others, moved / moved.norm() * CLIP))
    return out


def _smallest_n(rule: dict) -> int:
    return max(3, rule.get("f", 0) + 3) if "krum" in rule["name"] else 3


@functools.lru_cache(maxsize=64)
def _cfg_cached(rule_items: tuple, z: float) -> CampaignConfig:
    return _cfg(dict(rule_items), z)


def _cfg(rule: dict, z: float) -> CampaignConfig:
    return CampaignConfig.model_validate(
        {
            "privacy": {
                "enabled": True,
                "mode": "central",
                "noise_multiplier": z,
                "clip_norm": CLIP,
            },
            "robustness": {"enabled": True, "rule": rule},
        }
    )


def _aggregate(
    rule: dict, rows: list[torch.Tensor], z: float = 0.0, seed: int = 0, padded: bool = False
):
    cfg = _cfg_cached(tuple(rule.items()), z)
    base = {"w": torch.zeros(D + (NOISE_D if padded else 0), dtype=torch.float64)}
    pad = torch.zeros(NOISE_D if padded else 0, dtype=torch.float64)
    accepted = [{"delta": {"w": torch.cat([r, pad])}, "weight": 1.0} for r in rows]
    acct = PrivacyAccountant(z, 1.0, 1e-5) if z else None
    gen = torch.Generator().manual_seed(seed)
    rule = aggregation_rule(cfg.robustness, cfg.privacy, accountant=acct, generator=gen)
    out = rule.aggregate([u["delta"] for u in accepted], [u["weight"] for u in accepted])
    return base["w"] + out["w"], {"noise_std": rule.last_noise_std}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_when_one_client_moves__the_aggregate_moves_no_more_than_the_noise_was_calibrated_to(rule):
    worst_by_n: dict[int, tuple[float, float]] = {}
    for n in range(_smallest_n(rule), 21):
        _, info = _aggregate(rule, [_e(0, 0.0)] * n, z=Z)
        stated = info["noise_std"] / Z
        worst = 0.0
        for others, moved in _cohorts(n):
            with_client, _ = _aggregate(rule, [*others, moved])
            without, _ = _aggregate(rule, [*others, torch.zeros(D, dtype=torch.float64)])
            worst = max(worst, float((with_client - without).norm()))
        worst_by_n[n] = (worst, stated)
        assert worst <= stated * (1 + 1e-6), (
            f"{rule} at n={n}: one client moved the aggregate by {worst:.4f} but the noise was "
            f"calibrated to a sensitivity of {stated:.4f}"
        )
    # the constructions are worst cases: they reach the stated bound (order statistics, the
    # mean: for every n; Krum: for some n; Multi-Krum: close to it; the fixed-tau bound is loose)
    reached = [w >= s * (1 - 1e-6) for w, s in worst_by_n.values()]
    if rule["name"] in ("fedavg", "trimmed_mean", "median"):
        assert all(reached), worst_by_n
    elif rule["name"] == "krum":
        assert any(reached), worst_by_n
    elif rule["name"] == "multi_krum":  # the m selected flip from one cluster to the other
        assert max(w / s for w, s in worst_by_n.values()) >= 0.8, worst_by_n


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_when_central_dp_noises_a_rule__the_noise_std_is_the_multiplier_times_its_sensitivity(rule):
    from federation.robust import build_rule

    for n in (_smallest_n(rule), 5, 7, 12):
        rows = [_e(0, 0.0)] * n
        noisy, info = _aggregate(rule, rows, z=Z, seed=n, padded=True)
        clean, _ = _aggregate(rule, rows, padded=True)
        sensitivity = build_rule(rule).sensitivity(n, CLIP)
        assert info["noise_std"] == pytest.approx(Z * sensitivity, rel=1e-12)
        measured = float((noisy[D:] - clean[D:]).std())
        assert measured == pytest.approx(Z * sensitivity, rel=0.03)
        assert float(noisy[D:].mean()) == pytest.approx(
            0.0, abs=4 * Z * sensitivity / math.sqrt(NOISE_D)
        )


def test_when_the_trimmed_mean_trims_ceil_n_ratio__its_sensitivity_counts_the_same_rows():
    from federation.robust import build_rule

    rule = build_rule({"name": "trimmed_mean", "trim_ratio": 0.1})
    # ceil(n * 0.1) rows trimmed from each end at n >= 5: C/3, C/5, C/7, C/8
    assert [rule.sensitivity(n, 1.0) for n in (5, 7, 9, 12)] == pytest.approx(
        [1 / 3, 1 / 5, 1 / 7, 1 / 8]
    )


def test_when_a_rule_has_no_sound_bound__central_dp_refuses_it_with_a_reason():
    from federation.privacy import CentralDP
    from federation.robust import build_rule

    acct = PrivacyAccountant(Z, 1.0, 1e-5)
    rule = CentralDP(build_rule("centered_clipping"), CLIP, Z, accountant=acct)
    with pytest.raises(PrivacyError, match="sensitivity"):
        rule.aggregate([{"w": _e(0, 1.0)} for _ in range(5)])
    assert acct.rounds == 0  # refused before any budget was spent
