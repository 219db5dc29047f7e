"""Temporal convolutional network: dilated causal convolutions with residuals over sensor windows."""

from __future__ import annotations

import torch
from torch import nn

#: The head predicts RUL / RUL_SCALE (targets near [0, 1]); forward returns cycles.
RUL_SCALE = 125.0


class CausalBlock(nn.Module):
    """Two dilated causal convolutions (each step sees only the past) and a residual path."""

    def __init__(self, channels_in: int, channels: int, dilation: int, kernel: int = 3) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels_in, channels, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.skip = (
            nn.Conv1d(channels_in, channels, 1) if channels_in != channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0))))
        h = torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0))))
        return torch.relu(h + self.skip(x))


class TemporalConvNet(nn.Module):
    """Blocks with dilations 1, 2, 4 (receptive field 29 steps); the last step feeds the head."""

    def __init__(self, n_features: int, window: int, channels: int = 24) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.Sequential(
            CausalBlock(n_features, channels, 1),
            CausalBlock(channels, channels, 2),
            CausalBlock(channels, channels, 4),
        )
        self.head = nn.Sequential(nn.Linear(channels, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x.transpose(1, 2))  # (batch, channels, window)
        return self.head(h[:, :, -1]).squeeze(-1) * RUL_SCALE


def build(n_features: int, window: int) -> nn.Module:
    """The model for windows shaped (batch, window, n_features); returns RUL in cycles."""
    return TemporalConvNet(n_features, window)
