"""Small RUL regressors (CNN, LSTM, CNN+LSTM) over sensor windows shaped (batch, window, features).

A campaign may instead name its own model as ``package.module:function`` (``federation.ml.own_model``).
"""

from __future__ import annotations

import torch
from torch import nn

from federation.errors import TrainingError

__all__ = [
    "SUPPORTED_MODELS",
    "RUL_SCALE",
    "ModelConfigError",
    "build_model",
    "count_parameters",
    "is_known_model",
]

#: The seed's capability names for model architectures.
SUPPORTED_MODELS = ("cnn", "lstm", "hybrid")

#: Heads predict RUL / RUL_SCALE; the models multiply back so outputs are in cycles. Keeping the
#: last layer's targets near [0, 1] makes a fresh model start close to a sensible range.
RUL_SCALE = 125.0


class _CNN(nn.Module):
    """Three 1-D convolutions over time, then a small dense head on the flattened feature map."""

    def __init__(self, n_features: int, window: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 8, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(8 * window, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2))
        return self.head(h.flatten(1)).squeeze(-1) * RUL_SCALE


class _LSTM(nn.Module):
    """Two stacked LSTM layers; the last time step's hidden state feeds a dense head."""

    def __init__(self, n_features: int, window: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, 40, num_layers=2, batch_first=True)
        self.head = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :]).squeeze(-1) * RUL_SCALE


class _Hybrid(nn.Module):
    """Convolutions extract local patterns; an LSTM summarises them over the window."""

    def __init__(self, n_features: int, window: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_features, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(32, 40, batch_first=True)
        self.head = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(h)
        return self.head(out[:, -1, :]).squeeze(-1) * RUL_SCALE


class ModelConfigError(TrainingError):
    """An unknown model kind or impossible model shape was requested."""


_BUILDERS = {"cnn": _CNN, "lstm": _LSTM, "hybrid": _Hybrid}


def is_known_model(kind: object) -> bool:
    """A built-in name, or spelled as an own model's ``package.module:function`` entry point."""
    from federation.ml.own_model import is_entry_point

    return (isinstance(kind, str) and kind in _BUILDERS) or is_entry_point(kind)


def build_model(kind: str, n_features: int, window: int = 30) -> nn.Module:
    """A fresh model of `kind` for inputs (batch, window, n_features); outputs RUL in cycles.

    ``kind`` is a built-in (SUPPORTED_MODELS) or an own model's ``package.module:function``.
    """
    if not is_known_model(kind):
        raise ModelConfigError(
            f"unknown model kind {kind!r}; supported: {SUPPORTED_MODELS} or 'package.module:function'"
        )
    try:
        n_features, window = int(n_features), int(window)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"n_features and window must be integers: {exc}") from exc
    if n_features < 1 or window < 1:
        raise ModelConfigError(
            f"n_features and window must be positive, got {n_features}, {window}"
        )
    if kind not in _BUILDERS:
        from federation.ml.own_model import build_own_model

        return build_own_model(kind, n_features, window)
    return _BUILDERS[kind](n_features, window)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
