"""Differential privacy: update clipping, the Gaussian mechanism, central DP-FedAvg, record-level DP-SGD and their accountants."""

from federation.privacy.accountant import PrivacyAccountant, noise_multiplier_for
from federation.privacy.central import CentralDP, dp_fedavg
from federation.privacy.dpsgd import (
    RecordLevelLedger,
    dpsgd_epsilon,
    noise_for_target,
)
from federation.privacy.mechanisms import (
    add_gaussian_noise,
    clip_update,
    global_l2_norm,
    privatize_update,
)

__all__ = [
    "CentralDP",
    "PrivacyAccountant",
    "RecordLevelLedger",
    "add_gaussian_noise",
    "clip_update",
    "dp_fedavg",
    "dpsgd_epsilon",
    "global_l2_norm",
    "noise_for_target",
    "noise_multiplier_for",
    "privatize_update",
]
