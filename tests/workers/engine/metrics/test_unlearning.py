from __future__ import annotations

import numpy as np
import pytest

from workers.engine.metrics import (
    avg_gap,
    forgetting_report,
    retain_indices,
    unlearning_metrics,
    used_test_indices,
)

# Predicted classes of six training samples and five test samples (one-hot probabilities).
TRAIN_PREDICTED = np.array([0, 1, 2, 2, 1, 0])
TRAIN_LABELS = np.array([0, 1, 2, 0, 2, 0])
TEST_PREDICTED = np.array([0, 1, 1, 2, 2])
TEST_LABELS = np.array([0, 1, 2, 2, 2])
FORGET = np.array([1, 4])


def _one_hot(predicted: np.ndarray) -> np.ndarray:
    return np.eye(3)[predicted]


def test_random_forgetting_by_hand() -> None:
    metrics = unlearning_metrics(
        _one_hot(TRAIN_PREDICTED), TRAIN_LABELS, FORGET, _one_hot(TEST_PREDICTED), TEST_LABELS
    )
    # D_f = {1 (right), 4 (wrong)} -> acc 50 -> UA 50; D_r = {0 ok, 2 ok, 3 wrong, 5 ok} -> 75; test 4/5.
    assert metrics == {"UA": 50.0, "RA": 75.0, "TA": 80.0}


def test_class_wise_forgetting_excludes_the_class_from_ta() -> None:
    metrics = unlearning_metrics(
        _one_hot(TRAIN_PREDICTED), TRAIN_LABELS, FORGET, _one_hot(TEST_PREDICTED), TEST_LABELS, forget_class=2
    )
    assert metrics["TA"] == 100.0  # test samples of classes 0 and 1 are both right
    assert used_test_indices(TEST_LABELS, 2).tolist() == [0, 1]
    assert used_test_indices(TEST_LABELS, None).tolist() == [0, 1, 2, 3, 4]


def test_retain_indices_are_the_ascending_complement() -> None:
    assert retain_indices(6, FORGET).tolist() == [0, 2, 3, 5]


def test_avg_gap_by_hand() -> None:
    ft = {"UA": 10.0, "MIA-Efficacy": 20.0, "RA": 90.0, "TA": 80.0, "other": 1.0}
    retrain = {"UA": 5.0, "MIA-Efficacy": 30.0, "RA": 100.0, "TA": 82.0}
    assert avg_gap(ft, retrain) == pytest.approx((5 + 10 + 10 + 2) / 4)
    assert avg_gap(ft, retrain, keys=("UA",)) == 5.0


def test_avg_gap_reproduces_the_sparse_table() -> None:
    # optml.md §4.1: dense FT, class-wise, against Retrain -> 25.78.
    ft = {"UA": 22.53, "MIA-Efficacy": 75.00, "RA": 99.87, "TA": 94.31}
    retrain = {"UA": 100.0, "MIA-Efficacy": 100.0, "RA": 100.0, "TA": 94.83}
    assert round(avg_gap(ft, retrain), 2) == 25.78


def test_avg_gap_missing_keys() -> None:
    with pytest.raises(KeyError, match="TA"):
        avg_gap(
            {"UA": 1.0, "MIA-Efficacy": 1.0, "RA": 1.0},
            {"UA": 1.0, "MIA-Efficacy": 1.0, "RA": 1.0, "TA": 1.0},
        )


def test_forgetting_report_keys_and_headline() -> None:
    rng = np.random.default_rng(0)
    train_labels = rng.integers(0, 3, 60)
    test_labels = rng.integers(0, 3, 20)
    train_p = rng.dirichlet(np.ones(3), 60)
    test_p = rng.dirichlet(np.ones(3), 20)
    forget = np.arange(0, 60, 6)
    report = forgetting_report(train_p, train_labels, forget, test_p, test_labels)
    assert set(report) == {
        "UA",
        "RA",
        "TA",
        "MIA-Efficacy",
        "mia.correctness",
        "mia.confidence",
        "mia.entropy",
        "mia.m_entropy",
        "mia.prob",
    }
    assert report["MIA-Efficacy"] == report["mia.confidence"]
