"""Unit tests for non-IID engine partitioning and the validation carve-out."""

from __future__ import annotations

import numpy as np
import pytest
from federation.ml.data import DatasetError, prepare, synthetic_fleet
from federation.ml.partition import (
    carve_validation,
    partition_engines,
    site_partitions,
    split_partition,
)

ENGINES = np.arange(1, 31)
LIFETIMES = {int(e): int(200 + ((e * 37) % 101)) for e in ENGINES}


@pytest.mark.parametrize("mode", ["engine", "profile"])
def test_when_partitioning__no_engine_is_in_two_sites_and_none_is_lost(mode):
    groups = partition_engines(ENGINES, 3, seed=1, mode=mode, lifetimes=LIFETIMES)
    assert len(groups) == 3 and all(g.size >= 9 for g in groups)
    joined = np.concatenate(groups)
    assert joined.size == np.unique(joined).size == ENGINES.size
    assert set(joined.tolist()) == set(ENGINES.tolist())


@pytest.mark.parametrize("mode", ["engine", "profile"])
def test_when_the_seed_is_the_same__partitions_are_identical(mode):
    a = partition_engines(ENGINES, 4, seed=9, mode=mode, lifetimes=LIFETIMES)
    b = partition_engines(ENGINES, 4, seed=9, mode=mode, lifetimes=LIFETIMES)
    assert [g.tolist() for g in a] == [g.tolist() for g in b]


def test_when_the_seed_changes__random_engine_split_changes():
    a = partition_engines(ENGINES, 3, seed=1, mode="engine")
    b = partition_engines(ENGINES, 3, seed=2, mode="engine")
    assert [g.tolist() for g in a] != [g.tolist() for g in b]


def test_when_partitioning_by_profile__sites_see_non_overlapping_lifetime_ranges():
    groups = partition_engines(ENGINES, 3, seed=0, mode="profile", lifetimes=LIFETIMES)
    ranges = sorted(
        (min(LIFETIMES[int(e)] for e in g), max(LIFETIMES[int(e)] for e in g)) for g in groups
    )
    for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi <= lo


def test_when_partition_arguments_are_bad__a_dataset_error_is_raised():
    with pytest.raises(DatasetError):
        partition_engines(ENGINES, 0, seed=0)
    with pytest.raises(DatasetError):
        partition_engines(ENGINES, 31, seed=0)
    with pytest.raises(DatasetError):
        partition_engines(ENGINES, 3, seed=0, mode="profile")
    with pytest.raises(DatasetError):
        partition_engines(ENGINES, 3, seed=0, mode="by-colour")
    with pytest.raises(DatasetError):
        partition_engines([1, 1, 2], 2, seed=0)


def test_when_carving_validation__fit_and_validation_engines_are_disjoint():
    fit, val = carve_validation(ENGINES, 0.2, seed=3)
    assert val.size == 6 and fit.size == 24
    assert not set(fit.tolist()) & set(val.tolist())
    again = carve_validation(ENGINES, 0.2, seed=3)
    assert again[1].tolist() == val.tolist()
    with pytest.raises(DatasetError):
        carve_validation(ENGINES, 1.0, seed=0)


def test_when_splitting_windows_by_site__each_window_belongs_to_its_sites_engines():
    p = prepare(synthetic_fleet(9, seed=2, n_test_engines=3))
    fit, val = carve_validation(p.train.engines, 0.2, seed=0)
    groups = partition_engines(fit, 3, seed=0, mode="profile", lifetimes=p.train_lifetimes)
    parts = split_partition(p.train, groups)
    for g, part in zip(groups, parts, strict=True):
        assert set(np.unique(part.engine_ids).tolist()) == set(g.tolist())
    assert sum(len(x) for x in parts) + len(p.train.select(val)) == len(p.train)
    with pytest.raises(DatasetError, match="two groups"):
        split_partition(p.train, [groups[0], groups[0]])


def test_when_building_site_partitions__test_engines_and_validation_stay_out_of_fitting():
    p = prepare(synthetic_fleet(12, seed=4, n_test_engines=3))
    sites, val = site_partitions(p, 3, seed=1, mode="engine", val_fraction=0.25)
    site_engines = [set(s.engines.tolist()) for s in sites]
    assert all(a.isdisjoint(b) for i, a in enumerate(site_engines) for b in site_engines[i + 1 :])
    assert val is not None and set(val.engines.tolist()).isdisjoint(set().union(*site_engines))
    assert sum(len(s) for s in sites) + len(val) == len(p.train)
    # Test windows are the truncated test fleet, never part of any site's data.
    for s in sites:
        assert not np.any((s.X[:, None] == p.test.X[None]).all(axis=(2, 3)))
