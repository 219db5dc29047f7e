"""The largest message a campaign's model can fill: the cap on a chunked update's claimed size."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["max_update_bytes", "HEADROOM_BYTES"]

#: Room for everything a model-carrying message holds besides the tensors (ids, metrics,
#: verdicts, expected cohort) and for the codec's framing.
HEADROOM_BYTES = 1024 * 1024
_ALIGN = 64


def max_update_bytes(cfg: Any) -> int:
    """Bytes of the largest payload that carries one model of ``cfg`` (a CampaignConfig).

    A delta, an update or a global model is one tensor per state-dict entry, floats as at most
    8 bytes each (deltas travel as float32; float64 is allowed for), each aligned to 64 bytes
    with its descriptor, plus HEADROOM_BYTES. The model is built on the ``meta`` device: its
    shapes, no memory, no initialisation.
    """
    from federation.ml.models import build_model

    training = cfg.training
    with torch.device("meta"):
        model = build_model(training.model_type, training.n_features, training.window)
    total = HEADROOM_BYTES
    for name, tensor in model.state_dict().items():
        itemsize = 8 if tensor.is_floating_point() else tensor.element_size()
        nbytes = tensor.numel() * itemsize
        total += nbytes + (-nbytes % _ALIGN) + len(name.encode("utf-8")) + 64
    return total
