"""UA / RA / TA / MIA-Efficacy / Avg. Gap as defined by the reference (optml.md §3)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from workers.engine.metrics.classification import PERCENT, accuracy
from workers.engine.metrics.mia import HEADLINE_MIA_FEATURE, MemberSelection, mia_efficacy

AVG_GAP_KEYS = ("UA", "MIA-Efficacy", "RA", "TA")
MIA_KEY_PREFIX = "mia."


def retain_indices(train_count: int, forget_indices: np.ndarray) -> np.ndarray:
    """Ascending indices of the training set that are not in the forget set."""
    mask = np.ones(train_count, dtype=bool)
    mask[forget_indices] = False
    return np.flatnonzero(mask)


def used_test_indices(test_labels: np.ndarray, forget_class: int | None) -> np.ndarray:
    """The test samples TA and the MIA use: all of them, or all but the forgotten class (class-wise)."""
    if forget_class is None:
        return np.arange(test_labels.shape[0])
    return np.flatnonzero(test_labels != forget_class)


def unlearning_metrics(
    train_probabilities: np.ndarray,
    train_labels: np.ndarray,
    forget_indices: np.ndarray,
    test_probabilities: np.ndarray,
    test_labels: np.ndarray,
    forget_class: int | None = None,
) -> dict[str, float]:
    """UA = 100 - Acc(D_f), RA = Acc(D_r), TA = Acc(D_test without the forgotten class, if any)."""
    retained = retain_indices(train_labels.shape[0], forget_indices)
    used_test = used_test_indices(test_labels, forget_class)
    if used_test.size == 0:
        raise ValueError("no test samples remain after removing the forgotten class")
    return {
        "UA": PERCENT - accuracy(train_probabilities[forget_indices], train_labels[forget_indices]),
        "RA": accuracy(train_probabilities[retained], train_labels[retained]),
        "TA": accuracy(test_probabilities[used_test], test_labels[used_test]),
    }


def forgetting_report(
    train_probabilities: np.ndarray,
    train_labels: np.ndarray,
    forget_indices: np.ndarray,
    test_probabilities: np.ndarray,
    test_labels: np.ndarray,
    forget_class: int | None = None,
    *,
    member_selection: MemberSelection = "first",
    seed: int = 0,
    on_feature_done: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """UA, RA, TA, ``MIA-Efficacy`` (the confidence attack) and every ``mia.<feature>`` score."""
    report = unlearning_metrics(
        train_probabilities, train_labels, forget_indices, test_probabilities, test_labels, forget_class
    )
    retained = retain_indices(train_labels.shape[0], forget_indices)
    used_test = used_test_indices(test_labels, forget_class)
    scores = mia_efficacy(
        train_probabilities[retained],
        train_labels[retained],
        test_probabilities[used_test],
        test_labels[used_test],
        train_probabilities[forget_indices],
        train_labels[forget_indices],
        member_selection=member_selection,
        seed=seed,
        on_feature_done=on_feature_done,
    )
    report["MIA-Efficacy"] = scores[HEADLINE_MIA_FEATURE]
    report.update({f"{MIA_KEY_PREFIX}{name}": value for name, value in scores.items()})
    return report


def avg_gap(
    metrics: Mapping[str, float], retrain_metrics: Mapping[str, float], keys: Sequence[str] = AVG_GAP_KEYS
) -> float:
    """Mean absolute difference to the Retrain reference over ``keys`` (Sparse's "Disparity Ave.")."""
    if not keys:
        raise ValueError("avg_gap needs at least one metric key")
    missing = [key for key in keys if key not in metrics or key not in retrain_metrics]
    if missing:
        raise KeyError(f"metrics missing for avg_gap: {missing}")
    return float(np.mean([abs(metrics[key] - retrain_metrics[key]) for key in keys]))
