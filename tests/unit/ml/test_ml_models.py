"""Unit tests for the RUL model zoo."""

from __future__ import annotations

import pytest
import torch
from federation.ml.models import SUPPORTED_MODELS, ModelConfigError, build_model, count_parameters


@pytest.mark.parametrize("kind", SUPPORTED_MODELS)
def test_when_a_batch_of_windows_goes_through_a_model__one_rul_per_window_comes_out(kind):
    torch.manual_seed(0)
    model = build_model(kind, n_features=14, window=30)
    out = model(torch.randn(5, 30, 14))
    assert out.shape == (5,)
    assert torch.isfinite(out).all()
    assert count_parameters(model) <= 50_000


@pytest.mark.parametrize("kind", SUPPORTED_MODELS)
def test_when_window_and_features_change__the_model_adapts(kind):
    model = build_model(kind, n_features=3, window=12)
    assert model(torch.randn(2, 12, 3)).shape == (2,)


@pytest.mark.parametrize(
    "kind, n_features, window",
    [("transformer", 14, 30), ("cnn", 0, 30), ("lstm", "x", 30), (None, 3, 3)],
)
def test_when_model_request_is_invalid__a_model_config_error_is_raised(kind, n_features, window):
    with pytest.raises(ModelConfigError):
        build_model(kind, n_features, window)
