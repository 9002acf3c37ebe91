from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine.metrics import accuracy, per_class_accuracy, softmax

# Predictions: row 0 -> 0 (label 0, right), row 1 -> 1 (label 2, wrong), row 2 -> 2 (label 2, right),
# row 3 -> tie between 0 and 1 resolves to 0 (label 1, wrong).
PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
LABELS = np.array([0, 2, 2, 1])


def test_accuracy_by_hand() -> None:
    assert accuracy(PROBABILITIES, LABELS) == 50.0
    assert accuracy(PROBABILITIES[:1], LABELS[:1]) == 100.0


def test_per_class_accuracy_by_hand() -> None:
    assert per_class_accuracy(PROBABILITIES, LABELS, num_classes=4) == [100.0, 0.0, 50.0, None]


def test_accuracy_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        accuracy(PROBABILITIES[:0], LABELS[:0])


def test_softmax_matches_definition_and_is_overflow_safe() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    expected_first = np.exp([1.0, 2.0, 3.0]) / sum(math.exp(v) for v in (1.0, 2.0, 3.0))
    probabilities = softmax(logits)
    assert np.allclose(probabilities[0], expected_first)
    assert np.allclose(probabilities[1], [0.5, 0.5, 0.0])
    assert probabilities.dtype == np.float64
