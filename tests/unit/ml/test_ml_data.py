"""Unit tests for the C-MAPSS loader, synthetic fleet, normaliser and windowing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from federation.ml.data import (
    FD001_INFORMATIVE_SENSORS,
    DatasetError,
    Normalizer,
    Partition,
    informative_sensors,
    load_cmapss,
    load_dataset,
    make_windows,
    piecewise_rul,
    prepare,
    synthetic_fleet,
)


def test_when_loading_tiny_nasa_files__rows_engines_and_rul_are_read(tiny_cmapss):
    data = load_cmapss(tiny_cmapss)
    assert data.name == "FD009"
    assert len(data.train) == 8 and len(data.test) == 6
    assert data.train.engine_ids.tolist() == [1, 2]
    assert data.train.lifetimes() == {1: 5, 2: 3}
    assert data.test_rul.tolist() == [7.0, 200.0]
    assert data.train.sensors.shape == (8, 21) and data.train.sensors.dtype == np.float32
    assert data.train.sensors[0, 0] == pytest.approx(101.01)


def test_when_engine_runs_to_failure__rul_counts_down_to_zero_and_is_capped():
    data = load_cmapss_like_rows(lengths={1: 5})
    assert piecewise_rul(data, cap=125).tolist() == [4, 3, 2, 1, 0]
    assert piecewise_rul(data, cap=2).tolist() == [2, 2, 2, 1, 0]


def load_cmapss_like_rows(lengths):
    from federation.ml.data import Fleet

    units = np.concatenate([np.full(n, u) for u, n in lengths.items()]).astype(np.int64)
    cycles = np.concatenate([np.arange(1, n + 1) for n in lengths.values()]).astype(np.int64)
    return Fleet(units, cycles, np.zeros((units.size, 3), np.float32), np.zeros((units.size, 2)))


def test_when_windowing_a_hand_checked_engine__each_window_ends_at_its_labelled_row():
    # Feature = cycle number, so every window's content is readable.
    units = np.array([1] * 5 + [2] * 3)
    feats = np.array([[1], [2], [3], [4], [5], [1], [2], [3]], dtype=np.float32)
    labels = np.array([4, 3, 2, 1, 0, 2, 1, 0], dtype=np.float32)
    X, y, ids = make_windows(feats, units, labels, window=3)
    assert X[:, :, 0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [1, 2, 3]]
    assert y.tolist() == [2, 1, 0, 0]
    assert ids.tolist() == [1, 1, 1, 2]


def test_when_engine_is_shorter_than_window__front_is_padded_with_its_first_row():
    units = np.array([7, 7])
    feats = np.array([[10.0], [11.0]], dtype=np.float32)
    X, y, ids = make_windows(feats, units, np.array([1.0, 0.0]), window=4)
    assert X.shape == (1, 4, 1)
    assert X[0, :, 0].tolist() == [10, 10, 10, 11]
    assert y.tolist() == [0.0] and ids.tolist() == [7]


def test_when_preparing__test_set_is_the_last_window_with_capped_true_rul(tiny_cmapss):
    data = load_cmapss(tiny_cmapss)
    p = prepare(data, window=3, rul_cap=125, sensors=("s1", "s2"))
    assert p.test.engine_ids.tolist() == [1, 2]
    assert p.test.y.tolist() == [7.0, 125.0]  # 200 is capped
    # Undo the normalisation: the last test window of engine 1 is its cycles 2..4 (offset 1000).
    mean, std = np.array(p.normalizer.mean[0]), np.array(p.normalizer.std[0])
    raw = p.test.X[0] * std + mean
    np.testing.assert_allclose(raw[:, 0], [1000 + 100 + c + 0.01 for c in (2, 3, 4)], rtol=1e-5)
    # Engine 2 has 2 test cycles: padded with its first row.
    raw2 = p.test.X[1] * std + mean
    np.testing.assert_allclose(raw2[:, 0], [1000 + 200 + c + 0.01 for c in (1, 1, 2)], rtol=1e-5)
    # Training windows come from the training file only (values < 1000).
    raw_train = p.train.X * std + mean
    assert raw_train.max() < 1000
    assert p.train.y.tolist() == [2, 1, 0, 0]


def test_when_fitting_the_normaliser__only_training_rows_are_used(tiny_cmapss):
    data = load_cmapss(tiny_cmapss)
    p = prepare(data, window=2, sensors=("s1",))
    train_s1 = data.train.sensors[:, 0].astype(np.float64)
    assert p.normalizer.mean[0][0] == pytest.approx(train_s1.mean())
    assert p.normalizer.std[0][0] == pytest.approx(train_s1.std())
    # Test rows are shifted by +1000 and must stay far from zero after normalisation.
    assert p.test.X.mean() > 10


def test_when_normaliser_is_serialised__it_is_plain_json_and_round_trips(rng):
    values = rng.normal(5, 2, size=(50, 3))
    settings = np.zeros((50, 3))
    norm = Normalizer().fit(values, settings, ("a", "b", "c"))
    text = json.dumps(norm.to_dict())
    again = Normalizer.from_dict(json.loads(text))
    np.testing.assert_array_equal(
        again.transform(values, settings), norm.transform(values, settings)
    )


def test_when_normaliser_dict_is_malformed__a_dataset_error_is_raised():
    with pytest.raises(DatasetError):
        Normalizer.from_dict(
            {"columns": ["a"], "regimes": [[0, 0, 0]], "mean": [[0]], "std": [[0]]}
        )
    with pytest.raises(DatasetError):
        Normalizer.from_dict({"columns": ["a"]})


def test_when_a_regime_was_never_seen_in_training__transform_refuses(rng):
    norm = Normalizer().fit(rng.normal(size=(10, 2)), np.zeros((10, 3)), ("a", "b"))
    with pytest.raises(DatasetError, match="regime"):
        norm.transform(np.zeros((1, 2)), np.array([[20.0, 0.0, 100.0]]))


@pytest.mark.parametrize(
    "content, match",
    [
        ("1 1 0 0 100 5\n", "26 columns"),
        ("1 1 " + "x " * 24 + "\n", "numeric"),
        ("", "empty"),
    ],
)
def test_when_a_train_file_is_malformed__loading_raises_dataset_error(tmp_path, content, match):
    (tmp_path / "train_FD001.txt").write_text(content)
    (tmp_path / "test_FD001.txt").write_text(content)
    (tmp_path / "RUL_FD001.txt").write_text("1\n")
    with pytest.raises(DatasetError, match=match):
        load_cmapss(tmp_path)


def test_when_cycles_have_gaps_or_rul_count_mismatches__loading_raises(tiny_cmapss):
    (tiny_cmapss / "RUL_FD009.txt").write_text("7\n")
    with pytest.raises(DatasetError, match="test engines"):
        load_cmapss(tiny_cmapss)
    lines = (tiny_cmapss / "train_FD009.txt").read_text().splitlines()
    (tiny_cmapss / "train_FD009.txt").write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    with pytest.raises(DatasetError, match="without gaps"):
        load_cmapss(tiny_cmapss)


def test_when_directory_is_missing__loading_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError):
        load_cmapss(tmp_path / "nope")


def test_when_synthetic_fleet_uses_the_same_seed__it_is_identical_and_other_seeds_differ():
    a, b, c = synthetic_fleet(8, seed=3), synthetic_fleet(8, seed=3), synthetic_fleet(8, seed=4)
    for fa, fb in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(fa.sensors, fb.sensors)
        np.testing.assert_array_equal(fa.units, fb.units)
    np.testing.assert_array_equal(a.test_rul, b.test_rul)
    assert not np.array_equal(a.train.sensors, c.train.sensors)


def test_when_synthetic_fleet_is_generated__it_has_the_loader_structure_and_regimes():
    data = synthetic_fleet(10, seed=0, n_test_engines=6, n_sensors=8, n_constant=2, n_regimes=3)
    assert data.train.engine_ids.size == 10 and data.test.engine_ids.size == 6
    assert data.test_rul.shape == (6,) and np.all(data.test_rul > 0)
    # Train engines run to failure: rows per engine equal the last cycle.
    assert sum(data.train.lifetimes().values()) == len(data.train)
    p = prepare(data)
    assert len(p.normalizer.regimes) == 3
    assert p.features == tuple(f"s{i}" for i in range(1, 7))  # the 2 constant sensors dropped
    assert p.train.X.dtype == np.float32 and p.test.X.shape == (6, 30, 6)


def test_when_no_data_path_is_given__the_synthetic_fleet_is_the_default():
    p = load_dataset(None, seed=5)
    assert p.name == "synthetic-5"
    assert len(p.test) == p.test.engines.size


def test_when_partition_goes_through_arrays__it_round_trips_and_validates(rng):
    part = Partition(
        rng.normal(size=(4, 3, 2)).astype(np.float32),
        np.arange(4, dtype=np.float32),
        np.array([1, 1, 2, 2]),
    )
    arrays = part.to_arrays()
    assert set(arrays) == {"X", "y", "engine_ids"}
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = Partition.from_arrays(arrays)
    np.testing.assert_array_equal(back.X, part.X)
    np.testing.assert_array_equal(back.engine_ids, part.engine_ids)
    with pytest.raises(DatasetError):
        Partition.from_arrays(
            {"X": arrays["X"], "y": arrays["y"][:3], "engine_ids": arrays["engine_ids"]}
        )
    with pytest.raises(DatasetError):
        Partition.from_arrays({"X": arrays["X"]})


def test_when_loading_real_fd001__it_has_100_engines_20631_rows_and_100_test_windows(fd001_dir):
    data = load_cmapss(fd001_dir)
    assert data.train.engine_ids.size == 100
    assert len(data.train) == 20631
    derived = informative_sensors(data.train, data.sensor_names)
    assert derived == tuple(f"s{i}" for i in FD001_INFORMATIVE_SENSORS)
    p = prepare(data)
    assert p.test.X.shape == (100, 30, 14)
    assert p.train.X.shape == (20631 - 100 * 29, 30, 14)
    assert p.test.y.max() <= 125 and p.train.y.max() == 125 and p.train.y.min() == 0


def test_when_a_partition_is_saved_to_npz__it_loads_back_without_pickle(tmp_path, rng):
    part = Partition(
        rng.normal(size=(3, 4, 2)).astype(np.float32),
        np.array([3.0, 2.0, 1.0], np.float32),
        np.array([5, 5, 6]),
    )
    back = Partition.load(part.save(tmp_path / "site.npz"))
    np.testing.assert_array_equal(back.X, part.X)
    np.testing.assert_array_equal(back.y, part.y)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError):
        Partition.load(tmp_path / "bad.npz")


def test_a_partition_with_settings_round_trips_and_an_old_one_has_none(tmp_path):
    import numpy as np
    from federation.ml.data import DatasetError, Partition

    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 4, 2)).astype(np.float32)
    y, e = np.arange(5, dtype=np.float32), np.array([1, 1, 2, 2, 3])
    S = rng.standard_normal((5, 4, 3)).astype(np.float32)
    part = Partition(X, y, e, S, (0, 1, 0))
    back = Partition.load(part.save(tmp_path / "p.npz"))
    assert back.decimals == (0, 1, 0) and np.array_equal(back.settings, S)
    sub = back.select([2])
    assert np.array_equal(sub.settings, S[2:4]) and sub.decimals == (0, 1, 0)
    old = Partition.load(Partition(X, y, e).save(tmp_path / "old.npz"))
    assert old.settings is None and old.decimals == ()
    with pytest.raises(DatasetError, match="settings must be"):
        Partition(X, y, e, S[:, :2], (0, 1, 0))
    with pytest.raises(DatasetError, match="non-finite"):
        Partition.from_arrays({**part.to_arrays(), "settings": S * np.nan})
