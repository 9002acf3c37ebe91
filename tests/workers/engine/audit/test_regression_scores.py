"""The regression scores of the audit (``metrics/regression_scores.py``) on hand-computed examples, the MAE
utility ratios of the Kaggle score, and the regression non-member rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine.metrics.kaggle import kaggle_score
from workers.engine.metrics.nonmembers import MIN_NONMEMBERS
from workers.engine.metrics.regression_scores import (
    absolute_errors,
    laplace_scales,
    laplace_tail_probability,
    regression_nonmembers,
    regression_phi,
    target_scale,
)


def test_target_scale_is_the_mean_absolute_deviation_from_the_median() -> None:
    # median 3; deviations 2, 1, 0, 1, 6 -> mean 2.
    assert target_scale(np.array([1.0, 2.0, 3.0, 4.0, 9.0])) == pytest.approx(2.0)
    assert target_scale(np.array([5.0, 5.0, 5.0])) == 1.0  # no spread: the unit scale


def test_phi_is_minus_the_root_of_the_scaled_absolute_error() -> None:
    predictions = np.array([[10.0, 12.0, 7.0], [10.0, 10.0, 10.0]])
    targets = np.array([10.0, 8.0, 11.0])
    errors = absolute_errors(predictions, targets)
    assert np.array_equal(errors, [[0.0, 4.0, 4.0], [0.0, 2.0, 1.0]])
    phi = regression_phi(errors, scale=4.0)
    # -sqrt(0/4) = 0 (a perfect fit is the largest phi), -sqrt(4/4) = -1, -sqrt(2/4), -sqrt(1/4) = -0.5.
    assert phi == pytest.approx(np.array([[0.0, -1.0, -1.0], [0.0, -math.sqrt(0.5), -0.5]]))
    with pytest.raises(ValueError, match="positive"):
        regression_phi(errors, scale=0.0)


def test_laplace_scale_is_the_mae_on_held_out_points_and_the_probability_its_tail() -> None:
    errors = np.array([[1.0, 3.0, 2.0, 6.0], [0.5, 0.5, 4.0, 4.0]])
    held_out = np.array([[False, False, True, True], [True, False, True, False]])
    scales = laplace_scales(errors, held_out, floor=1e-9)
    # Model 0: mean(2, 6) = 4; model 1: mean(0.5, 4) = 2.25. Training points (False) do not count.
    assert scales == pytest.approx([4.0, 2.25])
    probability = laplace_tail_probability(errors, scales)
    assert probability[0] == pytest.approx(np.exp(-np.array([1.0, 3.0, 2.0, 6.0]) / 4.0))
    assert probability[1, 2] == pytest.approx(math.exp(-4.0 / 2.25))
    # Pr(|Y - yhat| >= |e|) under Laplace(yhat, b): the integral of the density beyond |e| on both sides.
    b, e = 4.0, 3.0
    grid = np.linspace(e, e + 400.0, 400_001)
    density = np.exp(-grid / b) / (2.0 * b)
    assert probability[0, 1] == pytest.approx(2.0 * np.trapezoid(density, grid), rel=1e-6)
    assert np.array_equal(laplace_tail_probability(np.zeros((1, 2)), np.array([3.0])), [[1.0, 1.0]])
    assert laplace_scales(np.zeros((1, 2)), np.ones((1, 2), bool), floor=1e-6) == pytest.approx([1e-6])
    with pytest.raises(ValueError, match="held-out point"):
        laplace_scales(errors, np.zeros_like(held_out), floor=1e-9)


def test_kaggle_utility_ratios_for_regression_are_retrained_over_unlearned_mae() -> None:
    rng = np.random.default_rng(0)
    phi_u, phi_r = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    retain_u, retain_r = np.full(8, 40.0), np.full(8, 30.0)  # unlearned worse on retain: ratio 0.75
    test_u, test_r = np.array([50.0, 54.0]), np.array([52.0, 52.0])  # equal means: ratio 1
    result = kaggle_score(phi_u, phi_r, retain_u, retain_r, test_u, test_r, utility="mae")
    assert result["utility"] == "mae"
    assert result["retain_mae_ratio"] == pytest.approx(0.75)
    assert result["test_mae_ratio"] == pytest.approx(1.0)
    assert result["retain_mae"] == {"unlearned_mean": 40.0, "retrained_mean": 30.0}
    assert result["score"] == pytest.approx(result["forgetting_quality"] * 0.75)
    accuracy = kaggle_score(phi_u, phi_r, retain_u, retain_r, test_u, test_r)
    assert accuracy["retain_accuracy_ratio"] == pytest.approx(40.0 / 30.0)  # higher is better there
    with pytest.raises(ValueError, match="utility"):
        kaggle_score(phi_u, phi_r, retain_u, retain_r, test_u, test_r, utility="r2")  # type: ignore[arg-type]


def test_a_target_range_forget_set_takes_the_test_samples_in_that_range() -> None:
    train = np.array([10.0, 50.0, 20.0, 80.0, 30.0, 90.0])
    forget = np.flatnonzero(train <= 30.0)
    test = np.concatenate([np.linspace(5.0, 30.0, MIN_NONMEMBERS), [31.0, 60.0, 95.0]])
    chosen = regression_nonmembers(train, forget, test, detect_range=True)
    assert chosen.rule == "forgotten_range_test"
    assert np.array_equal(chosen.indices, np.arange(MIN_NONMEMBERS))  # 31 is outside the range
    assert chosen.summary()["n"] == MIN_NONMEMBERS and "[-inf, 30.0]" in chosen.description
    # An inner range [20, 50]: the bounds are closed on both sides.
    grid = np.arange(0.0, 101.0)
    inner = regression_nonmembers(train, np.array([1, 2, 4]), grid, detect_range=True)
    assert inner.indices is not None and np.array_equal(grid[inner.indices], np.arange(20.0, 51.0))
    # Too few in-range test samples: no attack, and the reason says why.
    few = regression_nonmembers(train, forget, test[MIN_NONMEMBERS - 3 :], detect_range=True)
    assert few.indices is None and "needs >= 10" in str(few.reason)


def test_other_regression_forget_sets_use_the_test_split_unless_the_targets_differ() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(100.0, 20.0, 400), rng.normal(100.0, 20.0, 100)
    random_set = np.sort(rng.choice(400, size=40, replace=False))
    same = regression_nonmembers(train, random_set, test, detect_range=False)
    assert same.rule == "test_split" and np.array_equal(same.indices, np.arange(100))
    # Every other one of the 80 largest targets: skewed to the top, yet not a target range (samples in
    # between are retained).
    skewed = np.sort(np.argsort(train)[-80::2])
    shifted = regression_nonmembers(train, skewed, test, detect_range=True)
    assert shifted.indices is None and "Kolmogorov-Smirnov" in str(shifted.reason)
