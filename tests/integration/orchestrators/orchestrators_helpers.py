"""Tiny partitions, models and factory configs shared by the orchestrator integration tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from federation.ml.models import build_model

WINDOW, N_FEATURES = 10, 4
ORCH_EMAIL = "orchestrator@pdm.fed"
HONEST = ("automotive_detroit_main", "chemical_houston_reactor")
#: datasite id -> what its (compromised) training software does to the update it sends
COMPROMISED = {"aerospace_seattle_assembly": "scaling", "energy_rotterdam_turbines": "signflip:1"}


def tiny_partition(seed: int, n: int = 48) -> dict[str, np.ndarray]:
    """Windows whose RUL depends on the last reading of the first sensor, plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, WINDOW, N_FEATURES)).astype(np.float32)
    y = (60.0 + 20.0 * X[:, -1, 0] + rng.normal(0, 2, n)).astype(np.float32)
    return {"X": X, "y": y}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", N_FEATURES, WINDOW)


@dataclass
class Factories:
    handles: dict[str, Any]
    password: str

    def config(self, datasite_id: str) -> dict[str, Any]:
        """The seed's {'url', 'credentials', 'datasite_id'} entry for one factory."""
        return {
            "url": self.handles[datasite_id].url,
            "credentials": {"email": ORCH_EMAIL, "password": self.password},
            "datasite_id": datasite_id,
        }

    def configs(self, *ids: str) -> list[dict[str, Any]]:
        return [self.config(ds) for ds in ids]
