"""The compiled sorting-network order statistics against numpy's sort, and the aggregators built on them."""

import itertools

import numpy as np
import pytest
import torch
from federation.errors import RobustnessError
from federation.robust import CoordinateMedian, FedAvg, Krum, TrimmedMean
from federation.robust import _order_stats as order_stats
from federation.robust._order_stats import _network_arrays, batcher_network, sorted_range_mean
from federation.robust._tensors import _spec_of
from federation.robust.aggregators import (
    all_finite,
    gram_matrix,
    krum_scores,
    krum_scores_from_gram,
    median_rows,
    trimmed_mean_rows,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("n", range(1, 13))
def test_when_the_network_gets_every_zero_one_input__it_sorts_it(n):
    pairs = batcher_network(n)
    for bits in itertools.product((0, 1), repeat=n):  # 0-1 principle: then it sorts anything
        v = list(bits)
        for a, b in pairs:
            if v[a] > v[b]:
                v[a], v[b] = v[b], v[a]
        assert v == sorted(v)


def test_when_only_a_range_is_needed__pruning_removes_pairs():
    full = len(batcher_network(50))
    assert len(_network_arrays(50, 5, 45)[0]) < full
    assert len(_network_arrays(50, 24, 26)[0]) < full
    assert len(_network_arrays(7, 0, 7)[0]) == 0  # the whole range: a plain mean, no sorting


@pytest.fixture(params=["register", "blocked"])
def kernel_path(request, monkeypatch):
    """Run a test through the generated register kernels (up to 12 rows: each (n, k) compiles
    once), then through the blocked buffer kernel."""
    monkeypatch.setattr(order_stats, "REGISTER_MAX_N", 0 if request.param == "blocked" else 12)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_when_any_range_of_sorted_positions_is_averaged__it_equals_numpys_sort(dtype, kernel_path):
    rng = np.random.default_rng(3)
    for n in range(1, 21):
        x = rng.standard_normal((n, 777)).astype(dtype)  # 777: not a multiple of the block
        x[:, :200] = np.round(x[:, :200])  # many ties
        ref = np.sort(x, axis=0)
        for start in range(n):
            for stop in range(start + 1, n + 1):
                out, finite = sorted_range_mean(list(x), start, stop)
                assert finite and out.dtype == dtype
                np.testing.assert_allclose(out, ref[start:stop].mean(axis=0), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 80),
    d=st.integers(1, 3000),
    seed=st.integers(0, 2**31),
    blocked=st.booleans(),
    data=st.data(),
)
def test_when_shapes_are_arbitrary__the_trimmed_mean_equals_numpys(n, d, seed, blocked, data):
    k = data.draw(st.integers(0, (n - 1) // 2))
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32) * 1e3
    # register kernels for n <= 16 here (each new (n, k) compiles once); larger n, the blocked kernel
    limit = 0 if blocked else 16
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(order_stats, "REGISTER_MAX_N", limit)
        out, finite = sorted_range_mean(list(x), k, n - k)
    assert finite
    np.testing.assert_allclose(
        out, np.sort(x, axis=0)[k : n - k].mean(axis=0), rtol=1e-5, atol=1e-3
    )


@pytest.mark.parametrize("n", [33, 50, order_stats.REGISTER_MAX_N])
def test_when_many_clients_use_the_largest_register_kernels__trim_and_median_equal_numpys(n):
    x = np.random.default_rng(n).standard_normal((n, 4099), dtype=np.float32)
    x[:, :500] = np.round(x[:, :500])  # ties
    ref = np.sort(x, axis=0)
    k = max(1, n // 10)
    for start, stop in ((k, n - k), ((n - 1) // 2, n // 2 + 1)):
        out, finite = sorted_range_mean(list(x), start, stop)
        assert finite
        np.testing.assert_allclose(out, ref[start:stop].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_when_a_register_kernel_is_generated__it_is_kept_on_disk_and_in_memory(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(order_stats, "_generated", {})
    x = np.arange(12, dtype=np.float32).reshape(3, 4)[::-1].copy()
    out, finite = sorted_range_mean(list(x), 1, 2)
    assert finite
    np.testing.assert_array_equal(out, x[1])  # the middle row of three sorted rows
    (median,) = tmp_path.glob("pdmfed-networks-v*/network_3_trim_1.py")
    assert "min(x0, x1)" in median.read_text()
    kernel = order_stats._generated[(3, 1)]
    out, _ = sorted_range_mean(
        list(x), 0, 2
    )  # not symmetric: the blocked kernel, nothing generated
    np.testing.assert_allclose(out, (x[1] + x[2]) / 2)
    assert set(order_stats._generated) == {(3, 1)}
    assert len(list(tmp_path.glob("pdmfed-networks-v*/network_3*.py"))) == 1
    sorted_range_mean(list(x), 1, 2)
    assert order_stats._generated[(3, 1)] is kernel  # compiled once per process


def test_when_a_cache_directory_is_writable_by_others__generated_code_is_not_kept_there(
    tmp_path, monkeypatch
):
    shared = tmp_path / "shared"
    (shared / f"pdmfed-networks-v{order_stats._GENERATED_VERSION}").mkdir(parents=True)
    (shared / f"pdmfed-networks-v{order_stats._GENERATED_VERSION}").chmod(0o777)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "mine"))
    got = order_stats._generated_dir()
    assert got == tmp_path / "mine" / f"pdmfed-networks-v{order_stats._GENERATED_VERSION}"
    assert got.stat().st_mode & 0o077 == 0  # created private


def test_when_no_directory_is_writable__the_kernel_is_compiled_from_memory(monkeypatch):
    monkeypatch.setattr(order_stats, "_generated_dir", lambda: None)
    monkeypatch.setattr(order_stats, "_generated", {})
    x = np.random.default_rng(4).standard_normal((4, 100))
    out, finite = sorted_range_mean(list(x), 1, 3)
    assert finite
    np.testing.assert_allclose(out, np.sort(x, axis=0)[1:3].mean(axis=0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_when_one_value_is_not_finite__the_kernel_says_so_even_if_it_would_be_trimmed(
    bad, kernel_path
):
    x = np.random.default_rng(0).standard_normal((9, 5000), dtype=np.float32)
    x[4, 4321] = bad
    _, finite = sorted_range_mean(list(x), 2, 7)
    assert not finite
    with pytest.raises(RobustnessError, match="NaN or Inf"):
        trimmed_mean_rows(torch.from_numpy(x), 2)
    with pytest.raises(RobustnessError, match="NaN or Inf"):
        median_rows(torch.from_numpy(x))


def test_when_rows_disagree_in_length_or_range_is_bad__a_value_error_names_it():
    with pytest.raises(ValueError, match="row 1"):
        sorted_range_mean([np.zeros(3, np.float32), np.zeros(4, np.float32)], 0, 1)
    with pytest.raises(ValueError, match="range"):
        sorted_range_mean([np.zeros(3, np.float32)] * 3, 2, 2)


def test_when_rows_are_read_only_or_strided__they_are_still_used():
    x = np.random.default_rng(1).standard_normal((5, 40), dtype=np.float32)
    ro = [r.copy() for r in x]
    for r in ro:
        r.flags.writeable = False
    strided = [r for r in np.asfortranarray(x)]  # rows of a Fortran array are not contiguous
    ref = np.median(x, axis=0)
    for rows in (ro, strided):
        out, _ = sorted_range_mean(rows, 2, 3)
        np.testing.assert_allclose(out, ref)


def _updates(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "conv.weight": torch.randn(4, 3, 5, generator=g),
            "fc.bias": torch.randn(7, generator=g, dtype=torch.float64),
            "bn.num_batches_tracked": torch.tensor(10 + i),
        }
        for i in range(n)
    ]


def test_when_updates_have_several_tensors_and_dtypes__median_and_trim_match_torch_sort():
    ups = _updates(11)
    med = CoordinateMedian().aggregate(ups)
    trim = TrimmedMean(trim_ratio=0.2).aggregate(ups)  # k = 3
    for name in ups[0]:
        stacked = torch.stack([u[name].double() for u in ups])
        srt = torch.sort(stacked, dim=0).values
        assert med[name].dtype == ups[0][name].dtype and med[name].shape == ups[0][name].shape
        torch.testing.assert_close(med[name].double(), srt[5].to(ups[0][name].dtype).double())
        want = srt[3:8].mean(dim=0)
        if not ups[0][name].dtype.is_floating_point:
            want = want.round()
        torch.testing.assert_close(trim[name].double(), want, rtol=1e-6, atol=1e-6)


def test_when_an_update_holds_nan__every_aggregator_refuses_it():
    ups = _updates(6)
    ups[2]["conv.weight"][1, 1, 1] = float("nan")
    for agg in (FedAvg(), TrimmedMean(0.2), CoordinateMedian(), Krum(f=1, m=3)):
        with pytest.raises(RobustnessError, match="NaN or Inf"):
            agg.aggregate(ups)


def test_when_krum_uses_the_blocked_gram__scores_equal_the_stacked_computation():
    ups = _updates(9, seed=4)
    spec = _spec_of(ups)
    stacked = torch.cat(
        [torch.stack([u[n].double().reshape(-1) for u in ups]) for n in spec.names], dim=1
    )
    torch.testing.assert_close(gram_matrix(ups, spec), stacked @ stacked.T)
    torch.testing.assert_close(
        krum_scores_from_gram(gram_matrix(ups, spec), 2), krum_scores(stacked, 2)
    )


def test_when_finite_values_overflow_float32_squares__krum_still_aggregates():
    scale = (1.0, 1.1, 1.15, 1.3, 1.6)
    ups = [{"w": torch.full((4,), 1e20 * s)} for s in scale]  # |x|^2 > float32 max
    krum = Krum(f=1, m=2)
    out = krum.aggregate(ups)["w"]
    assert krum.last_selected == [1, 2]  # scores 0.0125 and 0.025 (x 1e40), the lowest two
    assert out[0].item() == pytest.approx(1e20 * 1.125, rel=1e-5)


def test_when_a_sum_overflows_but_values_are_finite__all_finite_still_says_true():
    assert all_finite(torch.full((8,), 3e38))
    assert not all_finite(torch.tensor([1.0, float("inf")]))
    assert not all_finite(torch.tensor([1.0, float("nan")]))


def _naive_centered_clipping(x, tau, iters):
    v = (
        torch.median(x, dim=0).values
        if x.shape[0] % 2
        else x.sort(dim=0).values[x.shape[0] // 2 - 1 : x.shape[0] // 2 + 1].mean(dim=0)
    )
    if tau is None:
        tau = float(torch.linalg.vector_norm(x - v, dim=1).median())
    for _ in range(iters):
        diff = x - v
        scale = torch.clamp(tau / torch.linalg.vector_norm(diff, dim=1, keepdim=True), max=1.0)
        v = v + (diff * scale).mean(dim=0)
    return v


@pytest.mark.parametrize("tau", [None, 0.5, 1e9])
def test_when_centered_clipping_runs_without_temporaries__it_equals_the_textbook_iteration(tau):
    from federation.robust import aggregators

    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 1000, generator=g, dtype=torch.float64)
    x[0] *= 50  # one far-away row gets clipped
    got = aggregators.centered_clipping_rows(x, tau, iters=3)
    torch.testing.assert_close(got, _naive_centered_clipping(x, tau, 3), rtol=1e-10, atol=1e-10)


def test_when_distances_are_blocked_off_cpu_or_compiled_on_cpu__both_equal_the_direct_norm(
    monkeypatch,
):
    from federation.robust import aggregators

    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(7, 3001, generator=g), torch.randn(3001, generator=g)
    want = torch.linalg.vector_norm(x.double() - v.double(), dim=1)
    torch.testing.assert_close(aggregators.row_distances(x, v), want, rtol=1e-9, atol=1e-9)
    monkeypatch.setattr(aggregators, "DISTANCE_BLOCK_BYTES", 256)  # the torch path, many blocks
    monkeypatch.setattr(aggregators, "squared_distances", None)
    xh = x.to(torch.bfloat16)  # not a compiled dtype: takes the blocked torch path
    want_h = torch.linalg.vector_norm(xh.double() - v.to(torch.bfloat16).double(), dim=1)
    torch.testing.assert_close(
        aggregators.row_distances(xh, v.to(torch.bfloat16)), want_h, rtol=1e-2, atol=1e-2
    )


def test_when_a_service_warms_up__both_kernel_signatures_are_ready():
    from federation.robust._order_stats import _range_mean_kernel, warm_up

    warm_up(ns=(2, 5))
    assert len(_range_mean_kernel.signatures) >= 2  # float32 and float64 rows
    assert {(2, 0), (5, 2), (5, 1)} <= set(order_stats._generated)  # medians, trimmed at 10%
    assert {(2, order_stats.SUM), (5, order_stats.SUM)} <= set(order_stats._generated)  # FedAvg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 7, 10, 33])
def test_when_rows_are_weighted_and_summed_in_one_pass__it_equals_numpys_sum(n, dtype):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 1001)).astype(dtype)
    w = rng.random(n)
    out, finite = order_stats.weighted_row_sum(list(x), list(w))
    assert finite and out.dtype == dtype
    np.testing.assert_allclose(
        out, (w[:, None] * x.astype(np.float64)).sum(axis=0), rtol=1e-5, atol=1e-5
    )
    x[n // 2, 500] = np.inf
    assert order_stats.weighted_row_sum(list(x), list(w))[1] is False


def test_when_rows_do_not_suit_a_register_kernel__the_weighted_sum_declines():
    x = np.ones((3, 5), dtype=np.float32)
    assert order_stats.weighted_row_sum([x[0]], [1.0]) is None  # one row: nothing to fuse
    assert order_stats.weighted_row_sum([x[0], x[1].astype(np.float64)], [1.0, 1.0]) is None
    assert order_stats.weighted_row_sum([x[0], x[1, :4]], [1.0, 1.0]) is None
    assert order_stats.weighted_row_sum([np.ones(5, np.int64)] * 2, [1.0, 1.0]) is None


@pytest.mark.parametrize(("max_n", "n"), [(4, 5), (4, 9), (4, 12), (2, 3), (12, 40)])
def test_when_more_rows_than_a_kernel_takes_are_summed__groups_of_rows_add_up_to_numpys_sum(
    max_n, n, monkeypatch
):
    monkeypatch.setattr(order_stats, "REGISTER_MAX_N", max_n)
    groups = order_stats._row_groups(n)
    assert groups[0][0] == 0 and groups[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:], strict=False))
    assert max(b - a for a, b in groups) <= max_n and len(groups) == -(-n // max_n)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 1001)).astype(np.float32)
    w = rng.random(n)
    out, finite = order_stats.weighted_row_sum(list(x), list(w))
    assert finite and out.dtype == np.float32
    np.testing.assert_allclose(
        out, (w[:, None] * x.astype(np.float64)).sum(axis=0), rtol=1e-5, atol=1e-5
    )
    x[n - 1, 7] = np.nan  # in the last group: the added parts carry it
    assert order_stats.weighted_row_sum(list(x), list(w))[1] is False


@pytest.mark.parametrize("fused", [True, False])
def test_when_fedavg_gives_a_nan_update_zero_weight__the_others_still_aggregate(fused, monkeypatch):
    from federation.robust import aggregators

    monkeypatch.setattr(aggregators, "FUSED_SUM_MIN_ELEMENTS", 1 if fused else 10**9)
    g = torch.Generator().manual_seed(8)
    ups = [{"w": torch.randn(300, generator=g)} for _ in range(4)]
    ups[2]["w"][7] = float("nan")
    got = FedAvg().aggregate(ups, [1.0, 3.0, 0.0, 2.0])["w"]
    want = (ups[0]["w"] + 3 * ups[1]["w"] + 2 * ups[3]["w"]) / 6
    torch.testing.assert_close(got, want)
    with pytest.raises(RobustnessError, match="NaN or Inf"):
        FedAvg().aggregate(ups, [1.0, 3.0, 1.0, 2.0])


@pytest.mark.parametrize(("n", "dtype"), [(70, np.float64), (130, np.float32)])
def test_when_columns_span_many_blocks__the_blocked_kernel_equals_numpys_sort(n, dtype):
    block = order_stats._block_columns(n, np.dtype(dtype).itemsize)
    d = 3 * block + 17  # several full blocks and a partial one
    x = np.random.default_rng(n).standard_normal((n, d)).astype(dtype)
    k = n // 10
    out, finite = order_stats.sorted_range_mean(list(x), k, n - k - 1)  # asymmetric: blocked kernel
    assert finite
    ref = np.sort(x.astype(np.float64), axis=0)[k : n - k - 1].mean(axis=0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
