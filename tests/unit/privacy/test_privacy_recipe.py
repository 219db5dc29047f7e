"""The private recipe is one source: the benchmark measured it, and its default epsilon is the curve's best point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from federation.privacy.recipe import DEFAULT_EPSILON, RECIPE, recipe_noise

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"


def _curve() -> tuple[dict, float]:
    curve = json.loads((RESULTS / "dpsgd_curve.json").read_text())
    quality = json.loads((RESULTS / "dpsgd_quality.json").read_text())
    return curve, quality["datasets"]["fd001"]["runs"]["no_dp"]["test_rmse"]


def test_when_the_curve_is_read__the_default_epsilon_is_its_best_point():
    # best: the smallest epsilon <= 3 whose test RMSE is within 15 % of the non-private federation
    curve, non_private = _curve()
    assert curve["recipe"] == RECIPE  # the benchmark measured the library's recipe, not a copy
    runs = curve["datasets"]["fd001"]["runs"].values()
    good = [
        r["target_epsilon"]
        for r in runs
        if r["target_epsilon"] <= 3 and r["test_rmse"] <= 1.15 * non_private
    ]
    assert good, "no point of the curve meets the goal"
    assert min(good) == DEFAULT_EPSILON


def test_when_the_benchmark_calibrated_its_noise__the_recipe_gives_the_same_for_the_same_factories():
    curve, _ = _curve()
    fd001 = curve["datasets"]["fd001"]
    measured = fd001["runs"][f"recipe_eps{DEFAULT_EPSILON:g}"]
    z = recipe_noise(fd001["factory_windows"], curve["plan"]["rounds"], DEFAULT_EPSILON)
    assert z == pytest.approx(measured["noise_multiplier"], rel=1e-9)
