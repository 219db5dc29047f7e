"""Differential privacy for model updates: clipping, the Gaussian mechanism, central DP-FedAvg and a budgeted accountant."""

from federation.privacy.accountant import PrivacyAccountant, noise_multiplier_for
from federation.privacy.central import dp_fedavg
from federation.privacy.mechanisms import (
    add_gaussian_noise,
    clip_update,
    global_l2_norm,
    privatize_update,
)

__all__ = [
    "PrivacyAccountant",
    "add_gaussian_noise",
    "clip_update",
    "dp_fedavg",
    "global_l2_norm",
    "noise_multiplier_for",
    "privatize_update",
]
