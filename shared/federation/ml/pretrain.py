"""Public pre-training: a starting model trained on the synthetic fleet, which holds no factory's data.

Pre-training on public data costs no privacy (De et al. 2022): the factories' DP-SGD then only
fine-tunes. The synthetic fleet's informative sensors are C-MAPSS's 14 with their published
trend directions (``data.CMAPSS_TRENDS``), so a model for FD001-style features (those sensors, in
that order, each normalised on its own data) can start from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from federation.ml.data import DEFAULT_WINDOW, DatasetError, prepare, synthetic_fleet
from federation.ml.pretrain_cache import cached_state
from federation.ml.train import train_local

__all__ = [
    "initial_state",
    "PUBLIC_FLEET_SEED",
    "PUBLIC_PRETRAIN_EPOCHS",
    "public_features",
    "public_pretrained_state",
]

#: The public fleet's seed: distinct from the seeds the demo and tests draw factories from.
PUBLIC_FLEET_SEED = 1000
PUBLIC_PRETRAIN_EPOCHS = 3


@lru_cache(maxsize=4)
def _public(window: int, seed: int):
    return prepare(synthetic_fleet(seed=seed), window=window)


def public_features(window: int = DEFAULT_WINDOW, seed: int = PUBLIC_FLEET_SEED) -> tuple[str, ...]:
    """The sensors a publicly pre-trained model reads, in order."""
    return _public(int(window), int(seed)).features


def public_pretrained_state(
    model_type: str,
    features: Sequence[str] | int,
    window: int = DEFAULT_WINDOW,
    *,
    epochs: int = PUBLIC_PRETRAIN_EPOCHS,
    seed: int = PUBLIC_FLEET_SEED,
) -> dict[str, torch.Tensor]:
    """A ``model_type`` state dict trained centrally for ``epochs`` on the public synthetic fleet.

    ``features`` are the sensor names the model will read (or their count): they must be the
    public fleet's informative sensors, else a DatasetError says which ones it has.
    Deterministic for a given seed and thread count.
    """
    if int(epochs) < 1:
        raise DatasetError(f"public pre-training needs epochs >= 1, got {epochs}")
    public = _public(int(window), int(seed))
    want = int(features) if isinstance(features, int) else tuple(features)
    have = len(public.features) if isinstance(want, int) else public.features
    if want != have:
        raise DatasetError(
            f"public pre-training covers the sensors {list(public.features)}; the model reads {want}"
        )
    trained = _pretrain(str(model_type), int(window), int(epochs), int(seed))
    return {k: v.clone() for k, v in trained.items()}


@lru_cache(maxsize=4)
def _pretrain(model_type: str, window: int, epochs: int, seed: int) -> dict[str, torch.Tensor]:
    """Trained once per machine (``pretrain_cache``) and held per process and arguments: the
    demo's orchestrator, dispatch and comparisons all start from these same weights."""
    return cached_state(
        model_type, window, epochs, seed, lambda: _train_public(model_type, window, epochs, seed)
    )


def _train_public(model_type: str, window: int, epochs: int, seed: int) -> dict[str, torch.Tensor]:
    public = _public(window, seed)
    cfg = {"model_type": model_type, "epochs": 1, "batch_size": 256, "learning_rate": 2e-3}
    state = None
    for epoch in range(epochs):
        state = train_local(state, public.train.X, public.train.y, cfg, seed=seed + epoch)[
            "model_update"
        ]
    assert state is not None
    return state


def initial_state(training: Any, seed: int) -> dict[str, torch.Tensor]:
    """A campaign's starting model (``training`` as ``campaign.TrainingConfig``): seeded
    initialisation, or with ``init: public`` the model pre-trained on the public fleet."""
    if training.init == "public":
        return public_pretrained_state(training.model_type, training.n_features, training.window)
    from federation.ml.models import build_model

    torch.manual_seed(seed)
    model = build_model(training.model_type, training.n_features, training.window)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
