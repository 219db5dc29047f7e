"""Screening updates: the seed's 3-client outlier, each attack at n = 3, 5, 10, edge cases."""

import pytest
import torch
from federation.errors import RobustnessError
from federation.robust import screen
from federation.robust.attacks import craft
from federation.robust.detectors import iqr_fences, robust_zscores


def test_when_three_clients_include_one_x100_outlier__median_mad_flags_it_over_many_seeds():
    for seed in range(300):
        torch.manual_seed(seed)
        ups = [
            {"param": torch.randn(3, 3)},
            {"param": torch.randn(3, 3)},
            {"param": torch.randn(3, 3) * 100},
        ]
        verdicts = screen(ups, ["normal_1", "normal_2", "outlier"], threshold=2.0, min_clients=3)
        assert "outlier" in verdicts.flagged_ids, seed
        assert "norm_zscore" in verdicts["outlier"].reasons


def test_when_three_norms_include_a_x100_outlier__plain_zscore_and_iqr_cannot_flag_it():
    # Why the detector uses median/MAD: with n = 3 a plain z-score is at most (n-1)/sqrt(n) = 1.15.
    norms = torch.tensor([3.0, 3.2, 300.0])
    plain_z = (norms - norms.mean()) / norms.std(unbiased=False)
    assert float(plain_z.max()) < 2.0
    lo, hi = iqr_fences(norms)
    assert hi > 300.0
    assert float(robust_zscores(norms)[2]) > 100


def _round(n, f, attack, seed, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(64, generator=g)
    honest = [{"w": base + noise * torch.randn(64, generator=g)} for _ in range(n)]
    bad = craft(attack, honest[:f], honest[f:], n, generator=g)
    return bad + honest[f:], [f"c{i}" for i in range(n)]


@pytest.mark.parametrize("n,f", [(3, 1), (5, 1), (10, 2), (10, 3)])
@pytest.mark.parametrize("attack", ["sign_flip", "scaling", "gaussian", "ipm"])
def test_when_byzantine_clients_attack__screening_flags_them_and_spares_the_honest(n, f, attack):
    caught, false_alarms, trials = 0, 0, 40
    for seed in range(trials):
        ups, ids = _round(n, f, attack, seed)
        flagged = set(screen(ups, ids, 2.0, 3).flagged_ids)
        caught += all(f"c{i}" in flagged for i in range(f))
        false_alarms += len(flagged - {f"c{i}" for i in range(f)})
    assert caught >= 0.95 * trials
    assert false_alarms <= 0.02 * trials * (n - f)


def test_when_clients_are_honest__screening_rarely_flags_anyone():
    flagged = 0
    for seed in range(50):
        ups, ids = _round(10, 0, "none", seed)
        flagged += len(screen(ups, ids, 2.0, 3).flagged_ids)
    assert flagged <= 5


def test_when_a_client_sends_a_near_zero_update__the_two_sided_norm_test_flags_it():
    ups, ids = _round(5, 0, "none", 1)
    ups[2] = {"w": ups[2]["w"] * 1e-3}
    v = screen(ups, ids, 2.0, 3)
    assert v.flagged_ids == ["c2"] and v["c2"].scores["norm_z"] < -2


def _norm_cohort(honest_norms, other_norms, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(64, generator=g)
    ups = []
    for norm in list(other_norms) + list(honest_norms):
        w = direction + 0.3 * torch.randn(64, generator=g)
        ups.append({"w": w * (norm / torch.linalg.vector_norm(w))})
    return ups, [f"c{i}" for i in range(len(ups))]


def test_when_label_flippers_send_updates_1_6x_the_honest_norm__the_norm_test_flags_them():
    # FD001, 10 factories, 3 training on flipped RUL: their updates were 1.3-2.4x the median
    # norm (robust z 3-14) while honest ones stayed within 0.74-1.25x. The old gate (2x)
    # let them through in most rounds.
    honest = [1.27, 1.35, 1.40, 1.42, 1.45, 1.46, 1.51]
    ups, ids = _norm_cohort(honest, [2.35, 2.25, 2.20])
    v = screen(ups, ids, 2.0, 3)
    assert v.flagged_ids == ["c0", "c1", "c2"]
    assert all("norm_zscore" in v[c].reasons for c in ("c0", "c1", "c2"))
    assert screen(ups, ids, 2.0, 3, norm_ratio=2.0).flagged_ids == []  # the old gate


def test_when_honest_norms_spread_to_1_25x_the_median__the_norm_gate_spares_them():
    # Tightly clustered honest norms give a tiny MAD, so |z| > 2 alone would flag 1.25x.
    ups, ids = _norm_cohort([1.00, 1.01, 1.02, 1.02, 1.03, 1.03, 1.04, 1.05, 1.25], [0.80])
    v = screen(ups, ids, 2.0, 3)
    assert abs(v["c9"].scores["norm_z"]) > 2 and abs(v["c0"].scores["norm_z"]) > 2
    assert v.flagged_ids == []


def test_when_an_update_has_nan__it_is_flagged_even_below_min_clients():
    ups = [{"w": torch.ones(3)}, {"w": torch.tensor([1.0, float("inf"), 0.0])}]
    v = screen(ups, ["a", "b"], 2.0, min_clients=3)
    assert v.flagged_ids == ["b"] and v["b"].reasons == ("non_finite",)
    assert not v.screened


def test_when_fewer_than_min_clients__no_statistical_flag_is_raised():
    ups = [{"w": torch.ones(3)}, {"w": torch.ones(3) * 100}]
    v = screen(ups, ["a", "b"], 2.0, min_clients=3)
    assert v.flagged_ids == [] and not v.screened and v.kept_ids == ["a", "b"]


def test_when_full_weights_are_sent__a_reference_model_lets_screening_see_a_flipped_delta():
    g = torch.Generator().manual_seed(5)
    global_w = 10.0 + torch.randn(64, generator=g)
    direction = torch.randn(64, generator=g)
    deltas = [0.1 * (direction + 0.5 * torch.randn(64, generator=g)) for _ in range(5)]
    deltas[0] = -deltas[0]
    ups = [{"w": global_w + d} for d in deltas]
    ids = [f"c{i}" for i in range(5)]
    assert "c0" not in screen(ups, ids, 2.0, 3).flagged_ids
    v = screen(ups, ids, 2.0, 3, reference={"w": global_w})
    assert v.flagged_ids == ["c0"] and "direction" in v["c0"].reasons


def test_when_ids_do_not_match_updates__screening_raises_robustness_error():
    with pytest.raises(RobustnessError):
        screen([{"w": torch.ones(2)}], ["a", "b"])
    with pytest.raises(RobustnessError):
        screen([{"w": torch.ones(2)}, {"w": torch.ones(2)}], ["a", "a"])


def test_when_verdicts_are_serialised__they_carry_flags_reasons_and_scores():
    ups, ids = _round(5, 1, "scaling", 0)
    d = screen(ups, ids, 2.0, 3).to_dict()
    assert d["screened"] and d["verdicts"]["c0"]["flagged"]
    assert set(d["verdicts"]["c1"]["scores"]) >= {"norm", "norm_ratio", "norm_z", "cosine"}


def test_when_two_of_five_sign_flip_and_honest_updates_decorrelate__the_trusted_centre_catches_them():
    # Honest pairwise cosine ~0.3 (FD001 after round 2): the whole cohort's median leans toward
    # the flipped pair, so it misses them in most rounds; the median of the three trusted
    # updates does not.
    trust = [False, False, True, True, True]
    caught_all = caught_trusted = false_alarms = 0
    for seed in range(60):
        ups, ids = _round(5, 2, "sign_flip", seed, noise=1.5)
        caught_all += {"c0", "c1"} <= set(screen(ups, ids, 2.0, 3).flagged_ids)
        v = screen(ups, ids, 2.0, 3, trusted=trust)
        caught_trusted += {"c0", "c1"} <= set(v.flagged_ids)
        false_alarms += len(set(v.flagged_ids) - {"c0", "c1"})
    assert caught_trusted >= 58 and false_alarms == 0
    assert caught_all <= 30


def test_when_untrusted_clients_are_honest__the_trusted_centre_does_not_flag_them():
    flagged = 0
    for seed in range(60):
        ups, ids = _round(5, 0, "none", seed, noise=1.5)
        flagged += len(
            screen(ups, ids, 2.0, 3, trusted=[False, False, True, True, True]).flagged_ids
        )
    assert flagged <= 2


def test_when_the_trusted_clients_are_not_a_majority__the_whole_cohort_forms_the_centre():
    ups, ids = _round(5, 2, "sign_flip", 3, noise=1.5)
    plain = screen(ups, ids, 2.0, 3).to_dict()
    for trust in ([True, True, False, False, False], [True] * 5):
        assert screen(ups, ids, 2.0, 3, trusted=trust).to_dict() == plain
    with pytest.raises(RobustnessError):
        screen(ups, ids, 2.0, 3, trusted=[True, False])
