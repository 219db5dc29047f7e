"""Tiny partitions and models shared by the datasite integration tests."""

from __future__ import annotations

import numpy as np
import torch
from federation.ml.models import build_model

WINDOW, N_FEATURES = 10, 4
ORCH_EMAIL = "orchestrator@pdm.fed"


def tiny_partition(seed: int, n: int = 48) -> dict[str, np.ndarray]:
    """Windows whose RUL depends on the last reading of the first sensor, plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, WINDOW, N_FEATURES)).astype(np.float32)
    y = (60.0 + 20.0 * X[:, -1, 0] + rng.normal(0, 2, n)).astype(np.float32)
    return {"X": X, "y": y}


def tiny_global_model(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("cnn", N_FEATURES, WINDOW)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
