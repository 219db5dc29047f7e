"""Round 0 against a Byzantine factory: its statistics cannot wreck the merged normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from federation.ml.fedstats import SensorStats, StatisticsError, merge_stats
from federation.ml.robust_stats import StatsScreen, robust_merge

COLUMNS = ("a", "b", "c")
SCALE = np.array([1.0, 1e-3, 1e3])


def _rows(seed: int, n: int, shift: float = 0.0) -> np.ndarray:
    """Sensor rows around 50 (x scale) with std 3 (x scale); ``shift`` moves the mean (in std)."""
    rng = np.random.default_rng(seed)
    return ((rng.normal(50.0 + 3.0 * shift, 3.0, size=(n, 3))) * SCALE).astype(np.float32)


def _honest(k: int = 2) -> dict[str, SensorStats]:
    """Non-IID honest factories: means 0.3 std apart, sizes 1.6x apart (as FD001's profile split)."""
    sizes, shifts = (4800, 7700, 6000, 5200), (0.0, 0.3, -0.2, 0.1)
    return {f"f{i}": SensorStats.of_rows(_rows(i, sizes[i], shifts[i]), COLUMNS) for i in range(k)}


def _scaled(stats: SensorStats, times: int) -> SensorStats:
    """The same mean and std over ``times`` as many rows (a well-formed count inflation)."""
    ((n, s, q),) = stats.regimes.values()
    return SensorStats(stats.columns, {(0.0,): (n * times, [v * times for v in s],
                                                [v * times for v in q])}, stats.decimals)  # fmt: skip


def _gap(norm, ref) -> tuple[float, float]:
    """(max |mean shift| in the reference's std, max |std ratio - 1|) over the columns."""
    m, s = np.asarray(norm.mean[0]), np.asarray(norm.std[0])
    rm, rs = np.asarray(ref.mean[0]), np.asarray(ref.std[0])
    return float(np.max(np.abs(m - rm) / rs)), float(np.max(np.abs(s / rs - 1.0)))


ATTACKS = {
    "mean shifted by 1e6": lambda: SensorStats.of_rows(_rows(9, 6000) + np.float32(1e6), COLUMNS),
    "variance blown up 1e6x": lambda: SensorStats.of_rows(
        (_rows(9, 6000) - 50 * SCALE) * 1e3 + 50 * SCALE, COLUMNS
    ),  # fmt: skip
    "count inflated 1e9x, mean off by 10 std": lambda: _scaled(
        SensorStats.of_rows(_rows(9, 6000, shift=10.0), COLUMNS), 10**9
    ),
    "one row at float32 max": lambda: SensorStats.of_rows(
        np.full((1, 3), np.finfo(np.float32).max, np.float32), COLUMNS
    ),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_one_factory_of_three_wrecks_the_plain_merge_but_not_the_robust_one(attack):
    honest = _honest(2)
    ref = merge_stats(honest.values()).normalizer()  # what the honest factories alone give
    bad = ATTACKS[attack]()
    plain_shift, plain_std = _gap(merge_stats([*honest.values(), bad]).normalizer(), ref)
    assert max(plain_shift, plain_std) > 1.0  # the attack works on a plain sum...
    result = robust_merge({**honest, "evil": bad})
    assert result.kept == ["f0", "f1"] and "evil" in result.rejected  # ...and is screened out
    assert result.normalizer.to_dict() == ref.to_dict()


def test_honest_non_iid_factories_merge_exactly_as_the_plain_sum():
    honest = _honest(4)
    result = robust_merge(honest)
    assert result.rejected == {} and result.capped == {}
    assert result.normalizer.to_dict() == merge_stats(honest.values()).normalizer().to_dict()
    assert result.count == sum(p.count for p in honest.values())


@pytest.mark.parametrize("k_honest, k_bad", [(2, 1), (3, 2)])
def test_a_byzantine_minority_moves_the_merged_mean_and_std_by_a_bounded_amount(k_honest, k_bad):
    # Worst case over a grid of well-formed lies: means up to 1e6 std off, stds 0..1e4 x,
    # counts 1..1e12 x. With mean_radius 3, std_ratio 3, count_cap 2 the accepted lies sit at
    # most 3 spreads off with at most 3x the std and 2x the median count: for these factories
    # that bounds the shift at 1.9 honest std and the std at 2.8x (measured: 1.63 / 2.68x for
    # one liar of three, 1.89 / 2.75x for two of five; a plain sum: 1e6 std off).
    honest = _honest(k_honest)
    ref = merge_stats(honest.values()).normalizer()
    worst_shift, worst_std = 0.0, 0.0
    for shift in (0.0, 1.0, 2.5, 2.9, 3.1, 4.5, 1e3, 1e6):
        for spread in (0.0, 0.01, 1.0, 2.9, 3.1, 1e4):
            for times in (1, 2, 10**12):
                rows = 50.0 + 3.0 * (
                    np.random.default_rng(7).normal(size=(4000, 3)) * spread + shift
                )
                lie = _scaled(
                    SensorStats.of_rows((rows * SCALE).astype(np.float32), COLUMNS), times
                )
                bad = {f"evil{i}": lie for i in range(k_bad)}
                mean_gap, std_gap = _gap(robust_merge({**honest, **bad}).normalizer, ref)
                worst_shift, worst_std = max(worst_shift, mean_gap), max(worst_std, std_gap)
    assert worst_shift <= 1.9 and worst_std <= 1.8
    assert worst_shift > 0.5  # the grid reaches the edge of what the screen accepts


def test_a_factory_sending_zero_variance_cannot_shrink_the_std_below_half():
    honest = _honest(2)
    ref = merge_stats(honest.values()).normalizer()
    flat = _scaled(SensorStats.of_rows(np.full((6000, 3), 50.0, np.float32) * SCALE.astype(np.float32),
                                       COLUMNS), 10**6)  # fmt: skip
    result = robust_merge({**honest, "evil": flat})
    assert result.capped == {"evil": 2 * 7700}  # twice the median count
    _, std_gap = _gap(result.normalizer, ref)
    assert std_gap <= 0.5


def test_a_factory_with_other_columns_is_left_out():
    honest = _honest(3)
    other = SensorStats.of_rows(_rows(5, 100), ("x", "y", "z"))
    result = robust_merge({**honest, "odd": other})
    assert (
        list(result.rejected) == ["odd"]
        and "statistics over ['x', 'y', 'z']" in result.rejected["odd"]
    )


def test_when_no_majority_agrees__the_merge_refuses():
    # each of three factories lies on its own sensor: three of four are outliers somewhere
    far = {}
    for i in range(4):
        rows = _rows(i, 500)
        if i < 3:
            rows[:, i] += np.float32(1e3 * SCALE[i])
        far[f"f{i}"] = SensorStats.of_rows(rows, COLUMNS)
    with pytest.raises(StatisticsError, match="no majority agrees"):
        robust_merge(far)


def test_below_min_factories_there_is_no_median__statistics_merge_as_sent():
    honest = _honest(2)
    assert (
        robust_merge(honest).normalizer.to_dict()
        == merge_stats(honest.values()).normalizer().to_dict()
    )
    # two cannot out-vote each other: their median is their midpoint
    strict = robust_merge(_honest(2), StatsScreen(min_factories=2))
    assert strict.rejected == {}


def _wire(n, s, q, columns=("a",)) -> dict:
    return {"version": 1, "columns": list(columns), "decimals": [],
            "regimes": [{"key": [0.0], "count": n, "sum": [str(v) for v in s],
                         "sumsq": [str(v) for v in q]}]}  # fmt: skip


F32_MAX_UNITS = ((1 << 24) - 1) << (104 + 149)


@pytest.mark.parametrize(
    "bad, why",
    [
        (_wire(2, [10], [49]), "negative variance"),  # 10**2 > 2 * 49: sum**2 > count * sumsq
        (_wire(1, [-(1 << 160)], [0]), "negative variance"),
        (_wire(0, [0], [0]), "malformed"),
        (_wire(-3, [0], [0]), "malformed"),
        (_wire(1 << 54, [0], [0]), r"not in \[1, 2\*\*53\]"),
        (_wire(1, [F32_MAX_UNITS + 1], [(F32_MAX_UNITS + 1) ** 2]), "beyond float32"),
        (_wire(1, [0], [F32_MAX_UNITS**2 + 1]), "beyond float32"),
        (_wire(2, [0, 0], [0, 0], columns=("a", "a")), "distinct"),
        (_wire(1, ["9" * 5000], ["1"]), "malformed"),
        (_wire(1, ["nan"], ["1"]), "malformed"),
    ],
)
def test_statistics_no_partition_can_have_are_a_typed_rejection(bad, why):
    with pytest.raises(StatisticsError, match=why) as err:
        SensorStats.from_dict(bad)
    assert err.value.reason == "invalid_stats"


def test_honest_extremes_pass_the_checks():
    rows = np.array([[np.finfo(np.float32).max], [-np.finfo(np.float32).max], [0.0]], np.float32)
    stats = SensorStats.of_rows(rows, ("a",))
    assert SensorStats.from_dict(stats.to_dict()) == stats
    one = SensorStats.of_rows(np.array([[np.float32(1e-45)]]), ("a",))  # variance exactly 0
    assert SensorStats.from_dict(one.to_dict()) == one
