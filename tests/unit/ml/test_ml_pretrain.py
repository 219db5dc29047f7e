"""Public pre-training: a model from the synthetic fleet alone, for FD001-style features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from federation.ml import evaluate, load_dataset
from federation.ml.data import DatasetError
from federation.ml.models import build_model
from federation.ml.pretrain import public_features, public_pretrained_state


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Pre-training here writes its disk cache under the test's folder, not the user's."""
    monkeypatch.setenv("PDMFED_CACHE_DIR", str(tmp_path / "cache"))


def test_when_the_model_reads_other_sensors__public_pre_training_refuses_with_the_list():
    with pytest.raises(DatasetError, match="public pre-training covers the sensors"):
        public_pretrained_state("cnn", ["s1", "s2"], epochs=1)


def test_when_pre_trained_on_the_public_fleet__a_model_predicts_a_factory_fleet_it_never_saw():
    torch.set_num_threads(2)
    factory = load_dataset(None, seed=7)  # another fleet of the same model: a factory's data
    assert factory.features == public_features()
    state = public_pretrained_state("cnn", factory.features, factory.window, epochs=1)
    torch.manual_seed(0)
    random_state = build_model("cnn", factory.n_features, factory.window).state_dict()
    baseline = float(np.sqrt(np.mean((factory.test.y - factory.train.y.mean()) ** 2)))
    pre = evaluate(state, factory.test.X, factory.test.y, "cnn")["rmse"]
    assert (
        pre < 0.5 * baseline < evaluate(random_state, factory.test.X, factory.test.y, "cnn")["rmse"]
    )
    again = public_pretrained_state("cnn", factory.n_features, factory.window, epochs=1)
    assert all(torch.equal(state[k], again[k]) for k in state)  # cached, and copies
    again[next(iter(again))].zero_()
    assert not torch.equal(state[next(iter(state))], again[next(iter(again))])
