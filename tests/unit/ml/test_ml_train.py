"""Unit tests for local training, evaluation, PHM08 score and the FedAvg helper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from federation.errors import TrainingError
from federation.ml.data import prepare, synthetic_fleet
from federation.ml.models import ModelConfigError, build_model
from federation.ml.train import evaluate, fedavg, phm08_score, predict, train_local

CONFIG = {
    "model_type": "cnn",
    "epochs": 1,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "max_batches": 4,
}


@pytest.fixture(scope="module")
def small_xy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 30, 5)).astype(np.float32)
    y = np.clip(60 + 25 * X[:, -5:, 0].mean(axis=1), 0, 125).astype(np.float32)
    return X, y


@pytest.mark.parametrize("kind", ["cnn", "lstm", "hybrid"])
def test_when_the_seed_is_the_same__train_local_returns_identical_updates(small_xy, kind):
    X, y = small_xy
    cfg = {**CONFIG, "model_type": kind}
    a, b = train_local(None, X, y, cfg, seed=7), train_local(None, X, y, cfg, seed=7)
    c = train_local(None, X, y, cfg, seed=8)
    assert a["model_update"].keys() == b["model_update"].keys()
    assert all(torch.equal(a["model_update"][k], b["model_update"][k]) for k in a["model_update"])
    assert a["loss"] == b["loss"]
    assert not all(
        torch.equal(a["model_update"][k], c["model_update"][k]) for k in a["model_update"]
    )


def test_when_training_locally__the_result_has_real_consistent_numbers(small_xy):
    X, y = small_xy
    start = build_model("cnn", 5, 30).state_dict()
    res = train_local(start, X, y, CONFIG, seed=1)
    assert set(res) >= {"loss", "rmse", "accuracy", "num_samples", "model_update", "training_time"}
    assert res["num_samples"] == 96 and res["steps"] == 4
    assert math.isfinite(res["loss"]) and res["loss"] > 0
    assert 0.0 <= res["accuracy"] <= 1.0 and res["training_time"] > 0
    again = evaluate(res["model_update"], X, y, "cnn")
    assert again["rmse"] == pytest.approx(res["rmse"])
    assert again["accuracy"] == pytest.approx(res["accuracy"])
    # The update moved away from the starting point.
    assert any(not torch.equal(start[k], res["model_update"][k]) for k in start)


def test_when_state_dict_arrives_as_numpy__training_accepts_it(small_xy):
    X, y = small_xy
    torch.manual_seed(3)
    start = {k: v.numpy() for k, v in build_model("lstm", 5, 30).state_dict().items()}
    from_np = train_local(start, X, y, {**CONFIG, "model_type": "lstm"}, seed=2)
    from_t = train_local(
        {k: torch.from_numpy(v) for k, v in start.items()},
        X,
        y,
        {**CONFIG, "model_type": "lstm"},
        seed=2,
    )
    assert all(torch.equal(from_np["model_update"][k], from_t["model_update"][k]) for k in start)


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda X, y, c, s: (X[:, :, :2], y, c, s), TrainingError),  # shape vs. state dict
        (lambda X, y, c, s: (X, y[:-1], c, s), TrainingError),
        (lambda X, y, c, s: (X, np.full_like(y, np.nan), c, s), TrainingError),
        (lambda X, y, c, s: (X[0], y, c, s), TrainingError),
        (lambda X, y, c, s: (X, y, {**c, "model_type": "gru"}, s), ModelConfigError),
        (lambda X, y, c, s: (X, y, {**c, "window": 10}, s), TrainingError),
        (lambda X, y, c, s: (X, y, {**c, "learning_rate": -1}, s), TrainingError),
        (lambda X, y, c, s: (X, y, {**c, "epochs": "many"}, s), TrainingError),
        (lambda X, y, c, s: (X, y, c, {"conv.0.weight": np.zeros(3)}), ModelConfigError),
    ],
)
def test_when_training_input_is_bad__a_typed_training_error_is_raised(small_xy, mutate, error):
    X, y = small_xy
    state = build_model("cnn", 5, 30).state_dict()
    X2, y2, cfg, st = mutate(X, y, CONFIG, state)
    with pytest.raises(error):
        train_local(st, X2, y2, cfg, seed=0)


def test_when_scoring__phm08_penalises_late_predictions_more_than_early_ones():
    assert phm08_score([0.0], [13.0]) == pytest.approx(math.e - 1)  # 13 cycles early
    assert phm08_score([10.0], [0.0]) == pytest.approx(math.e - 1)  # 10 cycles late
    assert phm08_score([20.0], [10.0]) > phm08_score([0.0], [10.0])
    assert phm08_score([5.0, 6.0], [5.0, 6.0]) == 0.0


def test_when_evaluating_a_state_dict_without_model_type__it_refuses(small_xy):
    X, y = small_xy
    with pytest.raises(ModelConfigError):
        evaluate(build_model("cnn", 5, 30).state_dict(), X, y)


def test_when_averaging_states__fedavg_weights_each_tensor():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(4)}
    avg = fedavg([a, b], [1, 3])
    assert torch.allclose(avg["w"], torch.tensor([3.0, 5.0]))
    assert avg["w"].dtype == torch.float32
    with pytest.raises(TrainingError):
        fedavg([])
    with pytest.raises(TrainingError):
        fedavg([a, {"v": torch.zeros(2)}])


def test_when_a_small_model_trains_on_the_synthetic_fleet__it_beats_the_mean_baseline():
    torch.set_num_threads(2)
    p = prepare(synthetic_fleet(40, seed=0, n_test_engines=40))
    cfg = {"model_type": "cnn", "epochs": 5, "learning_rate": 2e-3, "batch_size": 128}
    res = train_local(None, p.train.X, p.train.y, cfg, seed=0)
    model_rmse = evaluate(res["model_update"], p.test.X, p.test.y, "cnn")["rmse"]
    baseline = float(np.sqrt(np.mean((p.test.y - p.train.y.mean()) ** 2)))
    assert model_rmse < 0.6 * baseline, (model_rmse, baseline)


def test_when_predicting__outputs_are_cycles_for_each_window(small_xy):
    X, _ = small_xy
    preds = predict(build_model("hybrid", 5, 30), X)
    assert preds.shape == (96,) and preds.dtype == np.float32


def test_when_a_model_trains_on_the_synthetic_fleet__held_out_engines_score_like_training_ones():
    """The embedded task generalises: held-out engines' error follows the training error (as on
    C-MAPSS), instead of the model memorising engines (train 3.4 vs held-out 23 before)."""
    from federation.ml import carve_validation

    torch.set_num_threads(2)
    p = prepare(synthetic_fleet(50, seed=0))
    fit_ids, held_ids = carve_validation(p.train.engines, 0.2, seed=0)
    fit, held = p.train.select(fit_ids), p.train.select(held_ids)
    cfg = {"model_type": "cnn", "epochs": 2, "learning_rate": 2e-3, "batch_size": 256}
    state = train_local(None, fit.X, fit.y, cfg, seed=0)["model_update"]
    train_rmse = evaluate(state, fit.X[::7], fit.y[::7], "cnn")["rmse"]
    held_rmse = evaluate(state, held.X, held.y, "cnn")["rmse"]
    test_rmse = evaluate(state, p.test.X, p.test.y, "cnn")["rmse"]
    baseline = float(np.sqrt(np.mean((p.test.y - fit.y.mean()) ** 2)))
    assert held_rmse < 1.35 * train_rmse, (train_rmse, held_rmse)
    assert test_rmse < 0.4 * baseline, (test_rmse, baseline)
    assert p.features == (
        "s2",
        "s3",
        "s4",
        "s7",
        "s8",
        "s9",
        "s11",
        "s12",
        "s13",
        "s14",
        "s15",
        "s17",
        "s20",
        "s21",
    )
