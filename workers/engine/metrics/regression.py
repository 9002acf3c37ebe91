"""Regression unlearning metrics of Deep Regression Unlearning (blindspot_sfd.md §1.6), torch-free.

* MAE / MSE on the forget, retain and test sets (and, for a forget set that is a target range, on the test
  samples inside / outside that range: the reference's forget-test and retain-test subsets);
* the Wasserstein-1 distance between two models' prediction distributions on the forget set
  (``scipy.stats.wasserstein_distance`` in the reference; here an exact numpy equivalent);
* the regression membership attack: ``SVC(C=3, gamma="auto", kernel="rbf")`` on the per-sample L1 loss,
  members (label 1) = retain samples, non-members (0) = test samples, scored as the percentage of a set
  predicted member (the reference's ``get_membership_attack_prob``);
* AIN = rt(unlearned) / rt(retrained), the ratio of relearning steps (the steps themselves are counted on
  copies of the models by ``workers.engine.methods.relearn``).

How W1 and AIN reach the tables: each regression job's evaluation stores its forget-set predictions in the
job's details (:func:`prediction_sample`) and its relearning step count as a metric; the comparison view and
the campaign table then compute W1 and AIN against the retrain row of the same original model, forget set
and seed (:func:`comparison_metrics`). Nothing needs the retrained model at evaluation time, and a later
retrain (or a different seed's) is compared without re-running anything.

Deliberate deviations from the reference (see also ``workers.engine.execute.evaluate_regression``):
- errors are per-sample means (the reference averages per-batch means, which weighs a short last batch
  more);
- the attack's members are the first ``min(|D_r|, |D_test|)`` retain samples (ascending index) and its
  non-members the whole test set, mirroring the classification MIA's convention; the reference notebook
  used 2,000 random train samples (forget samples included) against 2,000 test samples, computed with the
  train augmentations on - Lethe evaluates without augmentation;
- ``MIA-Efficacy`` for regression is 100 minus the forget set's member percentage (the share of the forget
  set the attack calls non-member), so it reads like the classification column; the reference's member
  percentages are reported as ``mia.forget``, ``mia.train`` and ``mia.test``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.svm import SVC

from workers.engine.metrics.classification import PERCENT
from workers.engine.metrics.mia import SVC_C, SVC_GAMMA, SVC_KERNEL

# The comparison's Avg-Gap keys for regression, the counterparts of (UA, MIA-Efficacy, RA, TA): the forget,
# retain and test errors and the attack. They mix units (target units and percent), as the classification
# Avg-Gap mixes accuracies and the attack's percentage; compare Avg-Gaps only within one dataset.
REGRESSION_GAP_KEYS = ("forget_mae", "MIA-Efficacy", "retain_mae", "test_mae")
# Columns of the regression comparison view and campaign table (W1 and AIN are computed per row against the
# retrain row; see comparison_metrics).
REGRESSION_COLUMNS = (
    "forget_mae",
    "retain_mae",
    "test_mae",
    "forget_test_mae",
    "retain_test_mae",
    "MIA-Efficacy",
    "W1",
    "AIN",
)
W1_KEY = "W1"
AIN_KEY = "AIN"
RELEARN_STEPS_KEY = "relearn_steps"
# Details key under which an evaluation stores its forget-set predictions.
FORGET_PREDICTIONS_KEY = "forget_predictions"
# Beyond this many forget samples, the stored predictions are this many equally spaced quantiles (the
# midpoints of equal-mass bins) instead: W1 between such summaries approximates the exact value to within the
# bins' spread, and a job's stored result stays small.
MAX_STORED_PREDICTIONS = 20_000


def mae(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean absolute error (per-sample mean)."""
    if np.asarray(targets).shape[0] == 0:
        raise ValueError("MAE of an empty set is undefined")
    return float(np.mean(np.abs(np.asarray(predictions, np.float64) - np.asarray(targets, np.float64))))


def mse(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error (per-sample mean)."""
    if np.asarray(targets).shape[0] == 0:
        raise ValueError("MSE of an empty set is undefined")
    return float(np.mean((np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)) ** 2))


def wasserstein_1(first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray) -> float:
    """W1 between the empirical (equal-weight) distributions of two 1-D samples: the integral of
    ``|F_first(x) - F_second(x)|`` over x, exactly as ``scipy.stats.wasserstein_distance(first, second)``."""
    u = np.sort(np.asarray(first, dtype=np.float64))
    v = np.sort(np.asarray(second, dtype=np.float64))
    if u.size == 0 or v.size == 0:
        raise ValueError("the Wasserstein distance needs two non-empty samples")
    values = np.sort(np.concatenate([u, v]))
    widths = np.diff(values)
    cdf_u = np.searchsorted(u, values[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, values[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * widths))


def prediction_sample(predictions: np.ndarray) -> list[float]:
    """The forget-set predictions as stored with a job: all of them (in forget-index order), or, past
    :data:`MAX_STORED_PREDICTIONS`, that many quantiles at the midpoints ``(i + 0.5) / K``."""
    values = np.asarray(predictions, dtype=np.float64)
    if values.size > MAX_STORED_PREDICTIONS:
        levels = (np.arange(MAX_STORED_PREDICTIONS) + 0.5) / MAX_STORED_PREDICTIONS
        values = np.quantile(values, levels)
    return [float(value) for value in values]


def target_range(train_targets: np.ndarray, forget_indices: np.ndarray) -> tuple[float, float] | None:
    """``(low, high)`` when the forget set is exactly the training samples with a target in [low, high]
    (a target-range forget set, however it was specified), else ``None``. A bound that coincides with the
    training targets' extreme is open (``-inf`` / ``inf``): "target <= t" stays "target <= t" on the test
    split. ``low``/``high`` are the forget targets' min and max."""
    targets = np.asarray(train_targets, dtype=np.float64)
    forget = np.asarray(forget_indices, dtype=np.int64)
    if forget.size == 0:
        return None
    low, high = float(targets[forget].min()), float(targets[forget].max())
    inside = np.flatnonzero((targets >= low) & (targets <= high))
    if inside.size != forget.size or not np.array_equal(inside, np.sort(forget)):
        return None
    return (
        -np.inf if low <= float(targets.min()) else low,
        np.inf if high >= float(targets.max()) else high,
    )


def in_range(targets: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Boolean mask of the targets inside the closed interval ``bounds``."""
    values = np.asarray(targets, dtype=np.float64)
    return (values >= bounds[0]) & (values <= bounds[1])


def error_metrics(prefix: str, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {f"{prefix}_mae": mae(predictions, targets), f"{prefix}_mse": mse(predictions, targets)}


def l1_losses(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-sample |prediction - target| as an (N, 1) feature matrix, the attack's only feature."""
    return np.abs(np.asarray(predictions, np.float64) - np.asarray(targets, np.float64))[:, None]


def regression_mia(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    targets: Mapping[str, np.ndarray],
) -> dict[str, float]:
    """Fit ``SVC(C=3, kernel="rbf", gamma="auto")`` on members (1) vs non-members (0) by their (N, 1) loss
    features; for every named target feature set, the percentage the attack predicts member."""
    if member_losses.shape[0] == 0 or nonmember_losses.shape[0] == 0:
        raise ValueError("the membership attack needs members and non-members")
    inputs = np.concatenate([member_losses, nonmember_losses])
    labels = np.concatenate([np.ones(member_losses.shape[0]), np.zeros(nonmember_losses.shape[0])])
    attack = SVC(C=SVC_C, kernel=SVC_KERNEL, gamma=SVC_GAMMA)
    attack.fit(inputs, labels)
    return {name: float(attack.predict(features).mean() * PERCENT) for name, features in targets.items()}


def ain(unlearned_steps: float, retrained_steps: float) -> float | None:
    """rt(unlearned) / rt(retrained); ``None`` when the retrained model needs no step (undefined)."""
    if retrained_steps <= 0:
        return None
    return float(unlearned_steps / retrained_steps)


def comparison_metrics(
    metrics: Mapping[str, float],
    details: Mapping[str, Any] | None,
    reference_metrics: Mapping[str, float] | None,
    reference_details: Mapping[str, Any] | None,
) -> dict[str, float]:
    """W1 and AIN of a regression row against its retrain row, from what both evaluations stored; keys are
    left out when an input is missing (no forget predictions, no relearning, rt(retrained) = 0)."""
    extra: dict[str, float] = {}
    mine = (details or {}).get(FORGET_PREDICTIONS_KEY)
    theirs = (reference_details or {}).get(FORGET_PREDICTIONS_KEY)
    if mine and theirs:
        extra[W1_KEY] = wasserstein_1(mine, theirs)
    if (
        reference_metrics is not None
        and RELEARN_STEPS_KEY in metrics
        and RELEARN_STEPS_KEY in reference_metrics
    ):
        ratio = ain(metrics[RELEARN_STEPS_KEY], reference_metrics[RELEARN_STEPS_KEY])
        if ratio is not None:
            extra[AIN_KEY] = ratio
    return extra


__all__ = [
    "AIN_KEY",
    "FORGET_PREDICTIONS_KEY",
    "MAX_STORED_PREDICTIONS",
    "REGRESSION_COLUMNS",
    "REGRESSION_GAP_KEYS",
    "RELEARN_STEPS_KEY",
    "W1_KEY",
    "ain",
    "comparison_metrics",
    "error_metrics",
    "in_range",
    "l1_losses",
    "mae",
    "mse",
    "prediction_sample",
    "regression_mia",
    "target_range",
    "wasserstein_1",
]
