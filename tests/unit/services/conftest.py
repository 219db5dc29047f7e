"""Fixtures for the service flow tests: a local stand-in for the datasites (unit tier)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_partitions():
    from federation.ml.data import load_dataset
    from federation.ml.partition import partition_engines, split_partition

    data = load_dataset(None, seed=3)
    groups = partition_engines(data.train.engines, 3, seed=1)
    parts = split_partition(data.train, groups)
    ids = ["factory_a", "factory_b", "factory_c"]
    return data, {ds: (p.X[:256], p.y[:256]) for ds, p in zip(ids, parts, strict=True)}
