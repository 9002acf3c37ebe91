"""Accuracy-style metrics on predicted class probabilities (numpy only).

All accuracies are percentages in [0, 100], as in the reference tables (optml.md §3).
"""

from __future__ import annotations

import numpy as np

PERCENT = 100.0


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted, so it cannot overflow)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    probabilities: np.ndarray = exponentials / exponentials.sum(axis=1, keepdims=True)
    return probabilities


def predictions(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities).argmax(axis=1)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent; ties go to the lowest class index (numpy argmax)."""
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(predictions(probabilities) == labels) * PERCENT)


def per_class_accuracy(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy in percent for each class index; ``None`` for classes with no samples (JSON-friendly)."""
    labels = np.asarray(labels)
    correct = predictions(probabilities) == labels
    result: list[float | None] = []
    for label in range(num_classes):
        members = labels == label
        result.append(float(correct[members].mean() * PERCENT) if members.any() else None)
    return result
