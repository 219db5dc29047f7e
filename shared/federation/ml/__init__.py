"""Predictive-maintenance learning task: C-MAPSS/synthetic data, non-IID partitions, RUL models."""

from federation.ml.data import (
    CmapssData,
    DatasetError,
    Fleet,
    Normalizer,
    Partition,
    Prepared,
    load_cmapss,
    load_dataset,
    make_windows,
    prepare,
    synthetic_fleet,
)
from federation.ml.models import SUPPORTED_MODELS, ModelConfigError, build_model
from federation.ml.partition import (
    carve_validation,
    partition_engines,
    site_partitions,
    split_partition,
)
from federation.ml.train import evaluate, fedavg, train_centralised, train_local

__all__ = [
    "SUPPORTED_MODELS",
    "CmapssData",
    "DatasetError",
    "Fleet",
    "ModelConfigError",
    "Normalizer",
    "Partition",
    "Prepared",
    "build_model",
    "carve_validation",
    "evaluate",
    "fedavg",
    "load_cmapss",
    "load_dataset",
    "make_windows",
    "partition_engines",
    "prepare",
    "site_partitions",
    "split_partition",
    "synthetic_fleet",
    "train_centralised",
    "train_local",
]
