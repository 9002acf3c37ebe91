"""Regression metrics against hand-computed values (workers.engine.metrics.regression)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine.metrics import regression as rm


def test_mae_and_mse_by_hand() -> None:
    predictions = np.array([1.0, 2.0, 4.0])
    targets = np.array([2.0, 2.0, 1.0])
    assert rm.mae(predictions, targets) == pytest.approx((1 + 0 + 3) / 3)
    assert rm.mse(predictions, targets) == pytest.approx((1 + 0 + 9) / 3)
    assert rm.error_metrics("forget", predictions, targets) == {
        "forget_mae": pytest.approx(4 / 3),
        "forget_mse": pytest.approx(10 / 3),
    }
    with pytest.raises(ValueError, match="empty"):
        rm.mae(np.zeros(0), np.zeros(0))


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ([0.0, 1.0, 3.0], [5.0, 6.0, 8.0], 5.0),  # a shift by 5 moves every unit of mass by 5
        ([0.0, 2.0], [1.0], 1.0),  # half the mass moves 1 left, half 1 right
        ([0.0, 0.0, 3.0], [0.0, 3.0, 3.0], 1.0),  # a third of the mass moves by 3
        ([1.5], [1.5], 0.0),
    ],
)
def test_wasserstein_1_by_hand(first: list[float], second: list[float], expected: float) -> None:
    assert rm.wasserstein_1(first, second) == pytest.approx(expected)
    assert rm.wasserstein_1(second, first) == pytest.approx(expected)


def test_wasserstein_1_matches_scipy() -> None:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    for _ in range(5):
        first = rng.normal(size=int(rng.integers(1, 40)))
        second = rng.normal(1.0, 2.0, size=int(rng.integers(1, 40)))
        assert rm.wasserstein_1(first, second) == pytest.approx(wasserstein_distance(first, second))


def test_prediction_sample_keeps_small_sets_and_summarises_large_ones() -> None:
    assert rm.prediction_sample(np.array([3.0, 1.0])) == [3.0, 1.0]
    large = np.arange(rm.MAX_STORED_PREDICTIONS * 2, dtype=np.float64)
    summary = rm.prediction_sample(large)
    assert len(summary) == rm.MAX_STORED_PREDICTIONS
    # equal-mass quantiles of a uniform grid: W1 to the full sample is at most half a bin
    assert rm.wasserstein_1(summary, large) <= 1.0


def test_target_range_detection() -> None:
    targets = np.array([5.0, 1.0, 3.0, 9.0, 7.0])
    assert rm.target_range(targets, np.array([1, 2])) == (-math.inf, 3.0)  # "target <= 3"
    assert rm.target_range(targets, np.array([0, 2])) == (3.0, 5.0)  # [3, 5]
    assert rm.target_range(targets, np.array([3, 4])) == (7.0, math.inf)  # "target >= 7"
    assert rm.target_range(targets, np.array([2, 4])) is None  # 3 and 7 but not 5: not a range
    inside = rm.in_range(np.array([2.0, 3.0, 4.0, 5.0, 6.0]), (3.0, 5.0))
    assert inside.tolist() == [False, True, True, True, False]


def test_regression_membership_attack_by_hand() -> None:
    members = np.array([[0.0], [0.05], [0.1], [0.02]])  # small training losses
    nonmembers = np.array([[5.0], [5.5], [6.0], [5.2]])  # large test losses
    scores = rm.regression_mia(
        members,
        nonmembers,
        {"forget": np.array([[0.03], [5.6], [0.01]]), "test": nonmembers},
    )
    assert scores["forget"] == pytest.approx(100.0 * 2 / 3)
    assert scores["test"] == 0.0
    losses = rm.l1_losses(np.array([1.0, 3.0]), np.array([2.0, 3.0]))
    assert losses.shape == (2, 1) and losses[:, 0].tolist() == [1.0, 0.0]


def test_ain_and_comparison_metrics() -> None:
    assert rm.ain(3, 12) == 0.25
    assert rm.ain(3, 0) is None
    unlearned = {"relearn_steps": 2.0, "forget_mae": 1.0}
    retrained = {"relearn_steps": 8.0}
    extra = rm.comparison_metrics(
        unlearned,
        {rm.FORGET_PREDICTIONS_KEY: [0.0, 1.0, 3.0]},
        retrained,
        {rm.FORGET_PREDICTIONS_KEY: [5.0, 6.0, 8.0]},
    )
    assert extra == {"W1": pytest.approx(5.0), "AIN": 0.25}
    assert rm.comparison_metrics(unlearned, None, None, None) == {}
    assert rm.comparison_metrics(unlearned, {}, {"relearn_steps": 0.0}, {}) == {}
