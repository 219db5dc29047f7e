"""`pdmfed demo`'s default private training is the recipe the benchmark measured (federation.privacy.recipe), at its default epsilon."""

from __future__ import annotations

import math

import pytest
from federation.orchestrator import demo
from federation.orchestrator.demo import DemoOptions, with_record_noise
from federation.privacy import RecordLevelLedger
from federation.privacy.recipe import (
    DEFAULT_EPSILON,
    RANDOM_START_RECIPE,
    RECIPE,
    RECIPE_DELTA,
    recipe_noise,
)


class _Shape:
    n_features, window = 14, 30


def _demo_config(opts: DemoOptions, windows: list[int]):
    opts = with_record_noise(opts, windows)
    return demo._campaign_config(opts, "t", _Shape(), list(demo.FACTORY_NAMES[: opts.sites]))


def test_when_the_demo_runs_by_default__its_epsilon_is_the_recipes_default():
    assert DemoOptions().max_epsilon == DEFAULT_EPSILON


def test_when_the_demo_runs_with_its_defaults__its_campaign_trains_with_the_recipe():
    opts = DemoOptions(data="/plant/FD001")
    assert opts.dp and opts.record_noise is None
    cfg = _demo_config(opts, [4000, 6000, 8000])
    t, rp = cfg.training, cfg.record_privacy
    assert (t.init, t.batch_size, t.learning_rate, t.average_iterates) == (
        RECIPE["init"],
        RECIPE["batch_size"],
        RECIPE["learning_rate"],
        RECIPE["average_iterates"],
    )
    assert rp.enabled and (rp.max_grad_norm, rp.accountant) == (
        RECIPE["max_grad_norm"],
        RECIPE["accountant"],
    )
    assert rp.max_epsilon == DEFAULT_EPSILON and cfg.privacy.delta == RECIPE_DELTA
    assert rp.noise_multiplier == recipe_noise([4000, 6000, 8000], opts.rounds, DEFAULT_EPSILON)


def test_when_the_demo_runs_on_the_synthetic_fleet__it_starts_from_a_random_model():
    # the public pre-training fleet is the synthetic fleet's own generator: starting from it
    # would start at the answer (measured: round 0 12.5 -> round 5 12.7; random: 87 -> 12.6)
    cfg = _demo_config(DemoOptions(), [4000, 6000, 8000])
    assert cfg.training.init == "random" and RECIPE["init"] == "public"
    assert cfg.training.learning_rate == RECIPE["learning_rate"]


def test_when_the_demo_starts_from_a_random_model__it_trains_with_larger_batches_at_the_same_epsilon():
    opts = DemoOptions()
    cfg = _demo_config(opts, [4000, 6000, 8000])
    t, rp = cfg.training, cfg.record_privacy
    assert t.batch_size == RANDOM_START_RECIPE["batch_size"] > RECIPE["batch_size"]
    assert rp.max_epsilon == DEFAULT_EPSILON  # the budget stays; only the noise is recalibrated
    assert rp.noise_multiplier == recipe_noise(
        [4000, 6000, 8000], opts.rounds, DEFAULT_EPSILON, recipe=RANDOM_START_RECIPE
    )
    assert rp.noise_multiplier > recipe_noise([4000, 6000, 8000], opts.rounds, DEFAULT_EPSILON)


@pytest.mark.parametrize("windows", [[1500, 2500], [4549, 5635, 7547]])
def test_when_the_calibrated_campaign_runs__every_round_fits_the_budget_and_ends_near_it(windows):
    opts = DemoOptions(sites=len(windows) if len(windows) >= 3 else 3)
    cfg = _demo_config(opts, windows)
    rp, batch = cfg.record_privacy, cfg.training.batch_size
    ledger = RecordLevelLedger(delta=cfg.privacy.delta, method=rp.accountant)
    for n in windows:  # as the aggregator composes each factory's rounds
        q, steps = 1 / math.ceil(n / batch), math.ceil(n / batch) * cfg.training.epochs
        for round_num in range(1, cfg.rounds + 1):
            assert not ledger.would_exceed(rp.max_epsilon, str(n), rp.noise_multiplier, q, steps), (
                f"round {round_num} of a {n}-window factory would exceed ε {rp.max_epsilon}"
            )
            ledger.spend(str(n), rp.noise_multiplier, q, steps)
    assert rp.max_epsilon * 0.9 <= ledger.max_epsilon() <= rp.max_epsilon


def test_when_pdmfed_demo_is_called_without_privacy_options__it_runs_the_default_options(
    monkeypatch,
):
    from federation.cli import main

    seen = []
    monkeypatch.setattr(demo, "demo_main", lambda opts, verbose=False: seen.append(opts) or 0)
    assert main(["demo"]) == 0
    (opts,) = seen
    assert (opts.dp, opts.record_noise, opts.max_epsilon) == (True, None, DEFAULT_EPSILON)
