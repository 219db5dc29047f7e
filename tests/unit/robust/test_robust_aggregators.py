"""Robust aggregators on small hand-checked inputs."""

import pytest
import torch
from federation.errors import RobustnessError
from federation.robust import (
    CenteredClipping,
    CoordinateMedian,
    FedAvg,
    Krum,
    TrimmedMean,
    get_aggregator,
)
from federation.robust.aggregators import krum_scores, trim_count


def _ups(*values):
    return [{"w": torch.tensor([float(v)])} for v in values]


def test_when_fedavg_is_weighted__heavier_clients_count_more():
    out = FedAvg().aggregate(_ups(1, 3), weights=[1, 3])
    assert out["w"].item() == pytest.approx(2.5)
    assert FedAvg().aggregate(_ups(1, 3))["w"].item() == pytest.approx(2.0)


def test_when_trimmed_mean_sees_five_clients__it_drops_the_extremes_per_coordinate():
    ups = [
        {"w": torch.tensor([1.0, 50.0])},
        {"w": torch.tensor([2.0, 40.0])},
        {"w": torch.tensor([3.0, 30.0])},
        {"w": torch.tensor([4.0, 20.0])},
        {"w": torch.tensor([100.0, -90.0])},
    ]
    out = TrimmedMean(trim_ratio=0.2).aggregate(ups)["w"]
    torch.testing.assert_close(out, torch.tensor([3.0, 30.0]))


def test_when_trim_ratio_is_ten_percent_of_five__one_value_is_still_trimmed_each_side():
    assert trim_count(5, 0.1) == 1 and trim_count(10, 0.1) == 1 and trim_count(10, 0.2) == 2
    assert trim_count(3, 0.4) == 1 and trim_count(4, 0.0) == 0
    out = TrimmedMean(trim_ratio=0.1).aggregate(_ups(1, 2, 3, 4, 100))["w"]
    assert out.item() == pytest.approx(3.0)


def test_when_fewer_than_five_clients__trimmed_mean_falls_back_to_the_plain_mean_like_the_seed():
    assert TrimmedMean(0.1).aggregate(_ups(1, 2, 3, 100))["w"].item() == pytest.approx(26.5)


def test_when_nothing_is_trimmed_and_weights_are_given__trimmed_mean_is_the_weighted_mean():
    ups = _ups(1, 2, 3, 100)
    out = TrimmedMean(0.1).aggregate(ups, weights=[1, 1, 1, 7])["w"].item()
    assert out == pytest.approx((1 + 2 + 3 + 700) / 10)
    trimmed = TrimmedMean(0.1, min_clients=4).aggregate(ups, weights=[1, 1, 1, 7])["w"].item()
    assert trimmed == pytest.approx(2.5)  # rows trimmed: weights are ignored


def test_when_a_default_campaign_defends_five_factories__nothing_is_trimmed_but_ten_trim_one_each_side():
    from federation.campaign import RobustnessConfig
    from federation.robust import build_rule

    rule = build_rule(RobustnessConfig().rule_spec())
    assert [rule.trimmed(n) for n in (3, 5, 6, 10, 20)] == [0, 0, 1, 1, 2]


def test_when_median_aggregates__odd_and_even_counts_give_the_hand_computed_values():
    assert CoordinateMedian().aggregate(_ups(1, 2, 3, 4, 100))["w"].item() == pytest.approx(3.0)
    assert CoordinateMedian().aggregate(_ups(1, 2, 3, 10))["w"].item() == pytest.approx(2.5)


def test_when_krum_scores_five_points__the_hand_computed_scores_come_out():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [50.0]])
    scores = krum_scores(x, f=1)  # n - f - 2 = 2 nearest neighbours
    torch.testing.assert_close(scores, torch.tensor([5.0, 2.0, 2.0, 5.0, 4513.0]))


def test_when_krum_selects__it_returns_the_best_scored_update_and_multi_krum_averages_m():
    ups = _ups(0, 1, 2, 3, 50)
    krum = Krum(f=1)
    assert krum.aggregate(ups)["w"].item() == pytest.approx(1.0)
    assert krum.last_selected == [1]
    assert Krum(f=1, m=3).aggregate(ups)["w"].item() == pytest.approx(1.0)  # mean(1, 2, 0)


def test_when_krum_has_too_few_updates_for_f__it_raises_robustness_error():
    with pytest.raises(RobustnessError):
        Krum(f=2).aggregate(_ups(1, 2, 3, 4))


def test_when_centered_clipping_tau_is_huge__one_step_from_the_median_is_the_mean():
    out = CenteredClipping(tau=1e9, iters=1).aggregate(_ups(1, 2, 3, 4, 100))["w"]
    assert out.item() == pytest.approx(22.0)


def test_when_centered_clipping_tau_is_one__the_outlier_moves_the_centre_by_at_most_tau_over_n():
    out = CenteredClipping(tau=1.0, iters=1).aggregate(_ups(1, 2, 3, 4, 100))["w"]
    # from median 3: clipped diffs are -1, -1, 0, +1, +1 -> mean 0
    assert out.item() == pytest.approx(3.0)


def test_when_updates_have_several_tensors_and_int_buffers__shapes_and_dtypes_survive():
    ups = [
        {
            "a": torch.full((2, 3), float(i)),
            "b": torch.tensor([i], dtype=torch.float64),
            "n": torch.tensor(i),
        }
        for i in range(5)
    ]
    for name in ("fedavg", "trimmed_mean", "median", "krum", "multi_krum", "centered_clipping"):
        out = get_aggregator(name).aggregate(ups)
        assert out["a"].shape == (2, 3) and out["a"].dtype == torch.float32
        assert out["b"].dtype == torch.float64 and out["n"].dtype == torch.int64


def test_when_a_sign_flipper_joins_nine_honest_clients__robust_rules_stay_near_the_honest_mean():
    g = torch.Generator().manual_seed(0)
    honest = [{"w": 1.0 + 0.1 * torch.randn(100, generator=g)} for _ in range(8)]
    evil = [{"w": -20.0 * torch.ones(100)} for _ in range(2)]
    target = torch.stack([u["w"] for u in honest]).mean(0)
    plain = FedAvg().aggregate(honest + evil)["w"]
    assert float((plain - target).norm()) > 30
    for agg in (TrimmedMean(0.2), CoordinateMedian(), Krum(f=2, m=3), CenteredClipping()):
        out = agg.aggregate(honest + evil)["w"]
        assert float((out - target).norm()) < 1.5, agg


@pytest.mark.parametrize(
    "ups",
    [
        [],
        [{"w": torch.zeros(2)}, {"w": torch.zeros(3)}],
        [{"w": torch.zeros(2)}, {"v": torch.zeros(2)}],
        [{"w": torch.zeros(2)}, {"w": torch.tensor([1.0, float("nan")])}],
        [{"w": [1.0, 2.0]}],
    ],
)
def test_when_updates_are_malformed__aggregation_raises_robustness_error(ups):
    with pytest.raises(RobustnessError):
        FedAvg().aggregate(ups)


def test_when_weights_or_names_are_bad__aggregation_raises_robustness_error():
    with pytest.raises(RobustnessError):
        FedAvg().aggregate(_ups(1, 2), weights=[1.0])
    with pytest.raises(RobustnessError):
        FedAvg().aggregate(_ups(1, 2), weights=[0.0, 0.0])
    with pytest.raises(RobustnessError):
        get_aggregator("bulyan")
    with pytest.raises(RobustnessError):
        TrimmedMean(trim_ratio=0.5)
