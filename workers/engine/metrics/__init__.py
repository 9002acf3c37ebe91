"""Torch-free evaluation metrics on probabilities and labels (numpy + scikit-learn)."""

from __future__ import annotations

from workers.engine.metrics.classification import PERCENT, accuracy, per_class_accuracy, predictions, softmax
from workers.engine.metrics.mia import HEADLINE_MIA_FEATURE, MIA_FEATURES, mia_efficacy, select_members
from workers.engine.metrics.unlearning import (
    AVG_GAP_KEYS,
    avg_gap,
    forgetting_report,
    retain_indices,
    unlearning_metrics,
    used_test_indices,
)

__all__ = [
    "AVG_GAP_KEYS",
    "HEADLINE_MIA_FEATURE",
    "MIA_FEATURES",
    "PERCENT",
    "accuracy",
    "avg_gap",
    "forgetting_report",
    "mia_efficacy",
    "per_class_accuracy",
    "predictions",
    "retain_indices",
    "select_members",
    "softmax",
    "unlearning_metrics",
    "used_test_indices",
]
