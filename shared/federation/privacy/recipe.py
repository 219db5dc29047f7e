"""The private-training recipe bench.dpsgd_quality measures, its default epsilon, and the noise that reaches an epsilon."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from federation.privacy.dpsgd import noise_for_target

__all__ = ["DEFAULT_EPSILON", "RANDOM_START_RECIPE", "RECIPE", "RECIPE_DELTA", "recipe_noise"]

#: Public pre-training (no privacy cost), DP-SGD at this batch, learning rate and per-sample
#: clip, the mean of the last half of the iterates returned, PLD accounting. Chosen on a
#: validation carve-out of the FD001 training engines (see ``bench/dpsgd_quality.py``).
RECIPE: dict[str, Any] = {
    "init": "public",
    "batch_size": 64,
    "learning_rate": 5e-3,
    "max_grad_norm": 1.0,
    "average_iterates": True,
    "accountant": "pld",
}
#: The recipe from a random start, where public pre-training would start at the answer (the
#: demo's embedded synthetic fleet is the public fleet's own generator): an expected batch of 256
#: instead of 64. At the same epsilon the noise multiplier grows less than the batch (z 0.91 ->
#: 1.37 at epsilon 2 on the demo's factories), so each step's noise on the mean gradient, z C / B,
#: falls from 0.014 to 0.005 and the rounds stop wandering (BENCHMARKS.md section 15,
#: ``bench/demo_learning.py``).
RANDOM_START_RECIPE: dict[str, Any] = {**RECIPE, "init": "random", "batch_size": 256}
#: The delta every epsilon of the recipe is stated at.
RECIPE_DELTA = 1e-5
#: The record-level epsilon per factory to run the recipe at: the best point of its accuracy-epsilon
#: curve (BENCHMARKS.md section 10, ``bench/results/dpsgd_curve.json``), the smallest epsilon
#: <= 3 whose test RMSE is within 15 % of the non-private federation (15.09 against 14.72).
DEFAULT_EPSILON = 2.0


def recipe_noise(
    factory_windows: Sequence[int],
    rounds: int,
    target_epsilon: float,
    *,
    epochs: int = 1,
    max_batches: int | None = None,
    recipe: dict[str, Any] = RECIPE,
    delta: float = RECIPE_DELTA,
) -> float:
    """The smallest noise multiplier that keeps every factory at or below ``target_epsilon``
    after ``rounds`` rounds of ``epochs`` epochs each: ceil(n / batch) steps per epoch (at most
    ``max_batches`` a round) at sample rate 1 / ceil(n / batch), as ``federation.ml.train``
    runs DP-SGD."""
    zs = []
    for windows in factory_windows:
        per_epoch = math.ceil(int(windows) / recipe["batch_size"])
        steps = per_epoch * int(epochs)
        steps = steps if max_batches is None else min(steps, int(max_batches))
        zs.append(
            noise_for_target(
                target_epsilon, 1.0 / per_epoch, int(rounds) * steps, delta, recipe["accountant"]
            )
        )
    return max(zs)
