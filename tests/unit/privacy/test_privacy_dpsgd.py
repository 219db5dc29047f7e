"""Record-level DP-SGD: per-sample clipping, noise, Poisson sampling, accounting and train_local's DP path."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from federation.errors import PrivacyBudgetExceeded, PrivacyError, TrainingError
from federation.ml.data import load_dataset
from federation.ml.models import RUL_SCALE, build_model
from federation.ml.train import evaluate, train_local
from federation.privacy import RecordLevelLedger, dpsgd_epsilon, noise_for_target
from federation.privacy.dpsgd import (
    clip_per_sample,
    noisy_gradient,
    parse_dp_config,
    per_sample_gradients,
    poisson_batch,
)

N_FEATURES, WINDOW = 3, 6


@pytest.fixture(autouse=True)
def _one_thread():
    """Per-sample gradients are many small ops: one thread is fastest on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) / RUL_SCALE) ** 2


def _tiny_batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, WINDOW, N_FEATURES, generator=g)
    y = torch.rand(n, generator=g) * 250.0  # far from a fresh model's outputs: big gradients
    return X, y


def _manual_per_sample(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> list[dict]:
    out = []
    for i in range(X.shape[0]):
        model.zero_grad(set_to_none=True)
        _mse(model(X[i : i + 1]), y[i : i + 1]).sum().backward()
        out.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    return out


def _ref_rdp(events: list[tuple[float, float, int]], delta: float) -> float:
    acc = rdp.RdpAccountant()
    for z, q, s in events:
        acc.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), s
            )
        )
    return acc.get_epsilon(delta)


# --- per-sample gradients and clipping --------------------------------------------------------
@pytest.mark.parametrize("kind", ["cnn", "lstm", "hybrid"])
def test_when_per_sample_gradients_are_taken__they_equal_a_manual_per_sample_loop(kind):
    torch.manual_seed(0)
    model = build_model(kind, N_FEATURES, WINDOW)
    X, y = _tiny_batch()
    grads, losses = per_sample_gradients(model, _mse, X, y)
    manual = _manual_per_sample(model, X, y)
    assert set(grads) == {k for k, _ in model.named_parameters()}
    for i, ref in enumerate(manual):
        for k, g in ref.items():
            torch.testing.assert_close(grads[k][i], g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses, _mse(model(X), y).detach(), rtol=1e-5, atol=1e-7)


def test_when_per_sample_gradients_are_clipped__each_sample_is_within_C_and_matches_manual_clip():
    torch.manual_seed(1)
    model = build_model("cnn", N_FEATURES, WINDOW)
    X, y = _tiny_batch(n=10)
    manual = _manual_per_sample(model, X, y)
    manual_norms = [
        math.sqrt(sum(float((g.double() ** 2).sum()) for g in m.values())) for m in manual
    ]
    C = float(np.median(manual_norms))  # half the samples are clipped, half are not
    clipped, norms = clip_per_sample(per_sample_gradients(model, _mse, X, y)[0], C)
    for i, m in enumerate(manual):
        assert norms[i].item() == pytest.approx(manual_norms[i], rel=1e-4)
        scale = min(1.0, C / manual_norms[i])
        after = math.sqrt(sum(float((clipped[k][i].double() ** 2).sum()) for k in clipped))
        assert after <= C * (1 + 1e-5)
        for k, g in m.items():
            torch.testing.assert_close(clipped[k][i], g * scale, rtol=1e-4, atol=1e-7)
    assert min(manual_norms) < C < max(manual_norms)


def test_when_one_record_is_added_or_replaced__the_noisy_gradient_moves_by_at_most_C_or_2C_over_batch():
    # Poisson-sampled DP (dp-accounting's PoissonSampledDpEvent) is add/remove adjacency.
    torch.manual_seed(2)
    model = build_model("cnn", N_FEATURES, WINDOW)
    X, y = _tiny_batch(n=6)
    X2, y2 = X.clone(), y.clone()
    X2[3] = 50.0 * torch.randn(WINDOW, N_FEATURES)
    y2[3] = -1e4
    C, batch = 0.5, 6.0

    def release(xx, yy):
        clipped, _ = clip_per_sample(per_sample_gradients(model, _mse, xx, yy)[0], C)
        return noisy_gradient(clipped, C, 1.0, batch, torch.Generator().manual_seed(9))

    def dist(a, b):
        return math.sqrt(sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a))

    full, without = release(X, y), release(X[:5], y[:5])
    assert 0 < dist(full, without) <= C / batch * (1 + 1e-4)
    assert C / batch < dist(full, release(X2, y2)) <= 2 * C / batch * (1 + 1e-4)


def test_when_max_norm_is_not_positive__clipping_raises_privacy_error():
    with pytest.raises(PrivacyError):
        clip_per_sample({"w": torch.ones(2, 3)}, 0.0)
    with pytest.raises(PrivacyError):
        clip_per_sample({}, 1.0)


# --- noise and sampling -------------------------------------------------------------------------
def test_when_gradients_are_zero__noise_std_is_z_times_C_over_expected_batch():
    z, C, batch = 1.3, 0.7, 64.0
    zeros = {"a": torch.zeros(4, 300, 100), "b": torch.zeros(4, 20000)}
    out = noisy_gradient(zeros, C, z, batch, torch.Generator().manual_seed(0))
    values = torch.cat([v.flatten() for v in out.values()]).double()
    assert values.std().item() == pytest.approx(z * C / batch, rel=0.02)
    assert abs(values.mean().item()) < 3 * z * C / batch / math.sqrt(values.numel())


def test_when_noise_multiplier_is_zero__the_release_is_the_clipped_sum_over_expected_batch():
    grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}  # norms 5 and 0.5
    clipped, norms = clip_per_sample(grads, 1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    out = noisy_gradient(clipped, 1.0, 0.0, 4.0)
    torch.testing.assert_close(out["w"], torch.tensor([(0.6 + 0.3) / 4, (0.8 + 0.4) / 4]))


def test_when_the_batch_is_empty__the_release_is_pure_noise_of_the_right_shape():
    out = noisy_gradient(
        {"w": torch.zeros(0, 5, 2)}, 1.0, 2.0, 8.0, torch.Generator().manual_seed(1)
    )
    assert out["w"].shape == (5, 2) and torch.all(out["w"] != 0)


def test_when_records_are_poisson_sampled__the_rate_matches_and_the_seed_reproduces_it():
    n, q = 20000, 0.05
    a = poisson_batch(n, q, torch.Generator().manual_seed(4))
    b = poisson_batch(n, q, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert abs(a.numel() - n * q) < 4 * math.sqrt(n * q * (1 - q))
    assert len(set(a.tolist())) == a.numel() and int(a.max()) < n
    with pytest.raises(PrivacyError):
        poisson_batch(n, 0.0, torch.Generator())


# --- accounting ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("z", "q", "steps"), [(1.0, 0.01, 100), (0.8, 1 / 57, 285), (2.0, 1.0, 3)])
def test_when_epsilon_is_computed__it_equals_dp_accountings_own_rdp(z, q, steps):
    assert dpsgd_epsilon(z, q, steps, 1e-5) == pytest.approx(
        _ref_rdp([(z, q, steps)], 1e-5), rel=1e-12
    )


def test_when_epsilon_is_computed_with_pld__it_is_below_rdp_and_matches_the_library():
    z, q, steps = 1.0, 0.02, 50
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
        )
    )
    eps_pld = dpsgd_epsilon(z, q, steps, 1e-5, method="pld")
    assert eps_pld == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert eps_pld < dpsgd_epsilon(z, q, steps, 1e-5)


def test_when_noise_grows_or_steps_shrink__epsilon_falls_and_zero_steps_cost_nothing():
    assert dpsgd_epsilon(1.2, 0.02, 100) < dpsgd_epsilon(0.8, 0.02, 100)
    assert dpsgd_epsilon(1.0, 0.02, 50) < dpsgd_epsilon(1.0, 0.02, 100)
    assert dpsgd_epsilon(1.0, 0.02, 0) == 0.0


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 0.1, 10),
        (-1.0, 0.1, 10),
        (1.0, 0.0, 10),
        (1.0, 1.5, 10),
        (1.0, 0.1, -1),
        (1.0, 0.1, 2.5),
    ],
)
def test_when_accounting_arguments_are_invalid__privacy_error_is_raised(args):
    with pytest.raises(PrivacyError):
        dpsgd_epsilon(*args)


def test_when_a_target_epsilon_is_given__the_calibrated_noise_just_meets_it():
    q, steps = 0.02, 250
    z = noise_for_target(2.0, q, steps, 1e-5)
    assert dpsgd_epsilon(z, q, steps, 1e-5) <= 2.0
    assert dpsgd_epsilon(z * 0.98, q, steps, 1e-5) > 2.0
    with pytest.raises(PrivacyError):
        noise_for_target(-1.0, q, steps)


# --- the per-datasite ledger --------------------------------------------------------------------
def test_when_a_datasite_trains_twice__its_epsilon_is_that_of_the_composed_events_not_the_sum():
    ledger = RecordLevelLedger(delta=1e-5)
    first = ledger.spend("factory-a", 1.0, 0.02, 100)
    second = ledger.spend("factory-a", 1.0, 0.02, 100)
    assert first == pytest.approx(dpsgd_epsilon(1.0, 0.02, 100))
    assert second == pytest.approx(_ref_rdp([(1.0, 0.02, 200)], 1e-5), rel=1e-12)
    assert first < second < 2 * first
    assert ledger.steps("factory-a") == 200


def test_when_rounds_use_different_mechanisms__the_ledger_composes_them_as_dp_accounting_does():
    ledger = RecordLevelLedger(delta=1e-5)
    ledger.spend("a", 1.0, 0.02, 60)
    ledger.spend("a", 1.5, 0.05, 40)
    ledger.spend("a", 1.0, 0.02, 10)
    expected = _ref_rdp([(1.0, 0.02, 60), (1.5, 0.05, 40), (1.0, 0.02, 10)], 1e-5)
    assert ledger.epsilon("a") == pytest.approx(expected, rel=1e-12)


def test_when_several_datasites_spend__each_is_accounted_apart_and_max_is_the_worst():
    ledger = RecordLevelLedger()
    assert ledger.max_epsilon() == 0.0 and ledger.epsilon("nobody") == 0.0
    ledger.spend("a", 1.0, 0.02, 100)
    ledger.spend("b", 0.8, 0.05, 100)
    assert ledger.epsilon("a") == pytest.approx(dpsgd_epsilon(1.0, 0.02, 100))
    assert ledger.epsilon("b") == pytest.approx(dpsgd_epsilon(0.8, 0.05, 100))
    assert ledger.max_epsilon() == ledger.epsilon("b") > ledger.epsilon("a")
    assert ledger.datasites() == ["a", "b"]


def test_when_a_call_would_exceed_the_budget__it_is_refused_and_nothing_is_recorded():
    ledger = RecordLevelLedger()
    eps = ledger.spend("a", 1.0, 0.02, 100)
    budget = (eps + ledger.epsilon_if("a", 1.0, 0.02, 100)) / 2
    assert ledger.would_exceed(budget, "a", 1.0, 0.02, 100)
    assert not ledger.would_exceed(budget, "a", 1.0, 0.02, 1)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.spend("a", 1.0, 0.02, 100, budget=budget)
    assert ledger.epsilon("a") == eps and ledger.steps("a") == 100


def test_when_the_ledger_is_saved_and_restored__epsilons_are_recomputed_not_trusted():
    ledger = RecordLevelLedger(delta=1e-6)
    ledger.spend("a", 1.0, 0.02, 30)
    ledger.spend("a", 1.2, 0.02, 30)
    ledger.spend("b", 0.9, 0.1, 5)
    data = json.loads(json.dumps(ledger.to_dict()))
    data["datasites"]["a"]["epsilon"] = 0.0001  # a lie on disk
    back = RecordLevelLedger.from_dict(data)
    assert back.epsilon("a") == pytest.approx(ledger.epsilon("a"))
    assert back.epsilon("b") == pytest.approx(ledger.epsilon("b"))
    assert back.delta == 1e-6 and back.to_dict()["datasites"] == ledger.to_dict()["datasites"]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"version": 99},
        {"version": 1, "delta": 1e-5, "method": "rdp"},
        {
            "version": 1,
            "delta": 1e-5,
            "method": "rdp",
            "datasites": {"a": {"events": [[0, 0.1, 5]]}},
        },
        {"version": 1, "delta": 1e-5, "method": "rdp", "datasites": {"a": {"events": [[1]]}}},
        {"version": 1, "delta": 2.0, "method": "rdp", "datasites": {}},
    ],
)
def test_when_a_ledger_is_corrupt__restoring_it_raises_privacy_error(bad):
    with pytest.raises(PrivacyError):
        RecordLevelLedger.from_dict(bad)


# --- the dp config and train_local's DP path ----------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        [1.0],
        {"noise_multiplier": -1.0, "max_grad_norm": 1.0},
        {"noise_multiplier": float("nan"), "max_grad_norm": 1.0},
        {"noise_multiplier": 1.0},
        {"noise_multiplier": 1.0, "max_grad_norm": 0.0},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": "x"},
        {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sigma": 3},
    ],
)
def test_when_the_dp_config_is_malformed__train_local_raises_training_error(raw):
    with pytest.raises(PrivacyError):
        parse_dp_config(raw)
    X, y = _tiny_batch(n=4)
    with pytest.raises(TrainingError, match="dp"):
        train_local(None, X.numpy(), y.numpy(), {"model_type": "cnn", "dp": raw}, 0)


def test_when_noise_is_zero_or_dp_is_missing__train_local_is_the_plain_adam_loop_bit_for_bit():
    X, y = _tiny_batch(n=50, seed=3)
    cfg = {"model_type": "cnn", "epochs": 2, "batch_size": 16, "learning_rate": 1e-3}
    plain = train_local(None, X.numpy(), y.numpy(), cfg, 5)
    zero = {**cfg, "dp": {"noise_multiplier": 0.0, "max_grad_norm": 1.0}}
    for variant in (zero, {**cfg, "dp": None}):
        other = train_local(None, X.numpy(), y.numpy(), variant, 5)
        assert "dp" not in other and other["loss"] == plain["loss"]
        for k, v in plain["model_update"].items():
            assert torch.equal(v, other["model_update"][k])
    # The reference: the non-DP loop as it was before DP-SGD existed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref = build_model("cnn", N_FEATURES, WINDOW)
        gen = torch.Generator().manual_seed(5)
        opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=0.0)
        for _ in range(2):
            order = torch.randperm(50, generator=gen)
            for start in range(0, 50, 16):
                idx = order[start : start + 16]
                loss = torch.mean(((ref(X[idx]) - y[idx]) / RUL_SCALE) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, plain["model_update"][k])


@pytest.mark.parametrize("kind", ["cnn", "lstm", "hybrid"])
def test_when_dp_is_on__every_model_trains_and_reports_this_calls_epsilon(kind):
    X, y = _tiny_batch(n=40, seed=4)
    dp = {"noise_multiplier": 1.1, "max_grad_norm": 0.5, "delta": 1e-6, "noise_seed": 1}
    cfg = {"model_type": kind, "epochs": 2, "batch_size": 8, "max_batches": 7, "dp": dp}
    out = train_local(None, X.numpy(), y.numpy(), cfg, 0)
    fresh = build_model(kind, N_FEATURES, WINDOW).state_dict()
    assert list(out["model_update"]) == list(fresh)
    assert out["dp"] == {
        "noise_multiplier": 1.1,
        "max_grad_norm": 0.5,
        "sample_rate": 1 / 5,
        "steps": 7,
        "delta": 1e-6,
        "epsilon": pytest.approx(dpsgd_epsilon(1.1, 1 / 5, 7, 1e-6)),
    }
    assert out["steps"] == 7 and math.isfinite(out["loss"])


def test_when_seeds_are_fixed__dp_training_is_deterministic_and_the_noise_seed_matters():
    X, y = _tiny_batch(n=40, seed=5)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": 11}
    cfg = {"model_type": "cnn", "batch_size": 8, "dp": dp}
    a = train_local(None, X.numpy(), y.numpy(), cfg, 0)["model_update"]
    b = train_local(None, X.numpy(), y.numpy(), cfg, 0)["model_update"]
    c = train_local(None, X.numpy(), y.numpy(), {**cfg, "dp": {**dp, "noise_seed": 12}}, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c["model_update"][k]) for k in a)


def test_when_no_noise_seed_is_given__the_noise_is_fresh_each_call_even_with_the_same_seed():
    X, y = _tiny_batch(n=40, seed=6)
    cfg = {
        "model_type": "cnn",
        "batch_size": 8,
        "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
    }
    a = train_local(None, X.numpy(), y.numpy(), cfg, 0)["model_update"]
    b = train_local(None, X.numpy(), y.numpy(), cfg, 0)["model_update"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_when_dp_sgd_trains_on_the_synthetic_fleet__it_beats_the_mean_predictor():
    prepared = load_dataset(None)
    X, y = prepared.train.X[::3], prepared.train.y[::3]
    Xt, yt = prepared.test.X, prepared.test.y
    mean_rmse = float(np.sqrt(np.mean((yt - prepared.train.y.mean()) ** 2)))
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": 2}
    cfg = {
        "model_type": "cnn",
        "batch_size": 64,
        "learning_rate": 3e-3,
        "max_batches": 40,
        "dp": dp,
    }
    out = train_local(None, X, y, cfg, 0)
    rmse = evaluate(out["model_update"], Xt, yt, "cnn")["rmse"]
    assert out["dp"]["steps"] == 40 and out["dp"]["epsilon"] < 2.0
    assert rmse < 0.8 * mean_rmse, (rmse, mean_rmse)
