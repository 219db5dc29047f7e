"""Clipping, Gaussian noise and central DP-FedAvg on model updates."""

import math

import pytest
import torch
from federation.errors import PrivacyError
from federation.privacy import (
    add_gaussian_noise,
    clip_update,
    dp_fedavg,
    global_l2_norm,
    privatize_update,
)
from hypothesis import given, settings
from hypothesis import strategies as st

_shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3)


@st.composite
def _updates(draw):
    n = draw(st.integers(1, 4))
    scale = draw(st.floats(1e-4, 1e4))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return {
        f"p{i}": (torch.randn(draw(_shapes), generator=g, dtype=torch.float64) * scale).to(dtype)
        for i in range(n)
    }


@settings(max_examples=200, deadline=None)
@given(update=_updates(), max_norm=st.floats(1e-3, 1e3))
def test_when_any_update_is_clipped__its_global_norm_never_exceeds_the_bound(update, max_norm):
    clipped, original = clip_update(update, max_norm)
    assert global_l2_norm(clipped) <= max_norm
    assert original == pytest.approx(global_l2_norm(update))
    if original <= max_norm:
        for k in update:
            torch.testing.assert_close(clipped[k], update[k], rtol=2e-6, atol=0)


def test_when_clipping_a_3_4_vector_to_norm_1__it_becomes_0_6_0_8():
    clipped, norm = clip_update({"w": torch.tensor([3.0, 4.0])}, 1.0)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)


def test_when_clipping_across_tensors__the_norm_is_global_not_per_tensor():
    update = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0]), "steps": torch.tensor(7)}
    clipped, norm = clip_update(update, 2.5)
    assert norm == pytest.approx(5.0)
    torch.testing.assert_close(clipped["a"], torch.tensor([1.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(clipped["b"], torch.tensor([2.0]), rtol=1e-5, atol=0)
    assert clipped["steps"].dtype == torch.int64 and int(clipped["steps"]) == 7


def test_when_clipping__the_input_is_not_modified():
    w = torch.tensor([30.0, 40.0])
    clip_update({"w": w}, 1.0)
    assert w.tolist() == [30.0, 40.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_when_max_norm_is_not_positive_finite__clipping_raises_privacy_error(bad):
    with pytest.raises(PrivacyError):
        clip_update({"w": torch.ones(2)}, bad)


def test_when_an_update_contains_nan__clipping_raises_privacy_error():
    with pytest.raises(PrivacyError):
        clip_update({"w": torch.tensor([1.0, float("nan")])}, 1.0)


def test_when_an_update_entry_is_not_a_tensor__noise_raises_privacy_error():
    with pytest.raises(PrivacyError):
        add_gaussian_noise({"w": [1.0, 2.0]}, 1.0)


def test_when_noise_is_drawn_many_times__its_std_is_within_one_percent_of_the_target():
    g = torch.Generator().manual_seed(0)
    noisy = add_gaussian_noise({"w": torch.zeros(400_000)}, 0.5, g)["w"]
    assert float(noisy.std()) == pytest.approx(0.5, rel=0.01)
    assert abs(float(noisy.mean())) < 0.005


def test_when_the_same_seed_is_used__noise_is_reproducible_and_a_new_seed_differs():
    u = {"w": torch.zeros(10)}
    a = add_gaussian_noise(u, 1.0, torch.Generator().manual_seed(7))["w"]
    b = add_gaussian_noise(u, 1.0, torch.Generator().manual_seed(7))["w"]
    c = add_gaussian_noise(u, 1.0, torch.Generator().manual_seed(8))["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_when_noise_is_added__each_tensor_keeps_its_dtype_and_ints_are_untouched(dtype):
    u = {"w": torch.zeros(1000, dtype=dtype), "n": torch.arange(5)}
    out = add_gaussian_noise(u, 1.0, torch.Generator().manual_seed(0))
    assert out["w"].dtype == dtype and out["w"].device == u["w"].device
    assert float(out["w"].float().std()) == pytest.approx(1.0, rel=0.1)
    assert torch.equal(out["n"], u["n"])


def test_when_std_is_zero__the_update_is_returned_unchanged_and_negative_std_is_refused():
    u = {"w": torch.randn(4)}
    assert torch.equal(add_gaussian_noise(u, 0.0)["w"], u["w"])
    with pytest.raises(PrivacyError):
        add_gaussian_noise(u, -0.1)


def test_when_privatizing__noise_std_is_noise_multiplier_times_clip_norm():
    g = torch.Generator().manual_seed(1)
    big = {"w": torch.full((200_000,), 10.0)}
    out = privatize_update(big, clip_norm=2.0, noise_multiplier=0.75, generator=g)["w"]
    clipped = clip_update(big, 2.0)[0]["w"]
    assert float((out - clipped).std()) == pytest.approx(1.5, rel=0.01)


def test_when_central_dp_fedavg_runs_without_noise__it_is_the_mean_of_clipped_updates():
    ups = [{"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.3, 0.4])}]
    out = dp_fedavg(ups, clip_norm=1.0, noise_multiplier=0.0)
    torch.testing.assert_close(out["w"], torch.tensor([0.45, 0.6]), rtol=1e-5, atol=0)


def test_when_central_dp_fedavg_adds_noise__the_noise_on_the_mean_has_std_z_c_over_n():
    n, z, c = 4, 1.5, 0.5
    ups = [{"w": torch.zeros(200_000)} for _ in range(n)]
    out = dp_fedavg(ups, c, z, torch.Generator().manual_seed(3))["w"]
    assert float(out.std()) == pytest.approx(z * c / n, rel=0.01)


def test_when_central_dp_fedavg_gets_no_updates_or_mismatched_shapes__it_raises_privacy_error():
    with pytest.raises(PrivacyError):
        dp_fedavg([], 1.0, 1.0)
    with pytest.raises(PrivacyError):
        dp_fedavg([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}], 1.0, 1.0)


def test_when_global_norm_is_taken__it_matches_the_hand_computed_value():
    u = {"a": torch.ones(4), "b": torch.full((2, 2), 2.0)}
    assert global_l2_norm(u) == pytest.approx(math.sqrt(4 + 16))


def test_when_a_tensor_spans_many_float64_pieces__the_norm_equals_a_whole_float64_sum():
    from federation.privacy import mechanisms

    gen = torch.Generator().manual_seed(7)
    big = torch.randn(3 * mechanisms.NORM_PIECE_ELEMENTS + 123, generator=gen) * 1e3
    update = {"w": big.reshape(-1, 1), "b": torch.ones(5), "n": torch.tensor([7])}
    expected = math.sqrt(float((big.double() ** 2).sum()) + 5.0)
    assert global_l2_norm(update) == pytest.approx(expected, rel=1e-12)
    big[-1] = float("nan")
    assert math.isnan(global_l2_norm({"w": big}))
