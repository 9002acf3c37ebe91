"""The NeurIPS 2023 Machine Unlearning (Kaggle) forgetting score, as released.

Torch-free (numpy only): this package is imported by the API process.

Sources: the competition's metric PDF (the definition) and the released evaluation code
(``google-deepmind/unlearning_evaluation``: ``metric.py``, ``main.py``); peers.md §3.5. Where the two
differ, **this module follows the released code**.

Setting: N unlearned models (trained on D, then unlearned with the method on the forget set S) and N
retrained models (trained on D \\ S), different seeds. For each forget example s the signal is its
logit-scaled confidence phi = ln p_y - ln(1 - p_y) (``attacks.logit_confidence``) under each model: two
samples of size N. An (epsilon, delta)-unlearning attacker tries to tell them apart; the better the best
decision rule, the larger the example's epsilon.

Per example (``example_epsilon``):

1. Orientation: the *positive* class is whichever sample has the larger median; on a tie, the unlearned
   one (the code tests ``median(retrained) > median(unlearned)``).
2. Degenerate narrow sample: if the smaller of the two ranges (max - min) is below ``PEAKY_RANGE_RATIO``
   (1 %) of the larger one, epsilon = ``EPSILON_CAP`` (50): a "peaky" unlearner is as bad as it gets and the
   threshold sweep might not notice. When both ranges are 0 the ratio is 0/0 and the code's test is
   false, so the sweep runs; so it does here.
3. Decision rules, ``THRESHOLDS_PER_UNIT`` (100) per unit of phi:
   - single threshold t on ``linspace(lo, hi, ceil((hi - lo) * 100))`` over the pooled range; predict
     positive iff phi >= t;
   - double threshold (interval) [l, r]; predict the *peakier* sample (smaller range; the other one when
     the ranges are equal) iff l <= phi <= r. With w = the smaller range and B = ``INTERVAL_BUFFER`` (2):
     r on ``linspace(min_peaky + w - B, max_peaky + B, ceil(range * 100))`` and, for each r, l on
     ``linspace(r - w - B, r - w + B, ceil(2 B * 100))`` (400 x 400 rules).
4. Each rule gives FPR and FNR (empirical rates over the N + N samples; the rule's own positive class) and
   epsilon = max(ln(1 - delta - FPR) - ln FNR, ln(1 - delta - FNR) - ln FPR), clipped at >= 0, with
   ``DELTA`` = 1e-5. FPR = FNR = 0 (perfect separation): epsilon = inf. Exactly one of them 0: the rule is
   discarded (taken as an artefact of finite N). A term whose ln argument is <= 0 is ignored; a rule with
   both terms undefined is discarded.
5. epsilon_s = the maximum over surviving rules, then clipped to [0, ``EPSILON_CAP``]: inf becomes 50.

Points (``epsilon_points``): H(s) = 2 / 2^k(s) where k(s) = floor(epsilon_s / ``BIN_WIDTH``) + 1 is the
1-based index of the 0.5-wide bin: [0, 0.5) -> 1, [0.5, 1) -> 0.5, [1, 1.5) -> 0.25, ... Only the bins
that end at or below ``ceil(ln(N - 1))`` score (the code's "back-of-the-envelope" cap for N samples):
7 for N = 512, i.e. 14 bins; any epsilon at or above the cap, including 50, scores 0.

Forgetting quality F = mean of H(s) over the forget set. Final score = F * (RA_U / RA_R) * (TA_U / TA_R),
with RA / TA the retain / test accuracy averaged over the N unlearned (U) and the N retrained (R) models.
Regression (an addition; the released score is for classifiers): phi is ``regression_scores.regression_phi``
and the utilities are mean absolute errors, lower is better, so the ratios are inverted, MAE_R / MAE_U
(``kaggle_score(..., utility="mae")``).

Where the PDF and the released code differ (the code is followed):

- scoring range: the PDF scores epsilon in [0, 6.5) (13 bins); the code scores up to ceil(ln(N - 1))
  (14 bins at N = 512), and the bound depends on N;
- rates: the PDF allows high-probability (confidence-bound) FPR / FNR for top entries; the code, and this
  module, use the empirical rates;
- the narrow-distribution cap, the discarded one-zero rules and the per-example orientation by median are
  the code's implementation choices on top of the PDF's definition;
- delta = 1e-5 is the code's constant (community re-implementations drifted, e.g. delta = 1e-6 and an
  epsilon cap of 3.89 with 100 checkpoints).

Small N (``small_n_warning``, ``relative_to_ceiling``): the released evaluation used N = 512. At small N the
points cap ceil(ln(N - 1)) is low (3 at N = 16, 2 at N = 8) and each example's epsilon is a maximum over
hundreds of rules fitted on N + N samples, so noise alone gives even retraining a score far below 1. The audit
therefore reports N and the cap next to every score, warns below N = 128, and scores retrain against retrain
at the same N (the ceiling attainable at this N); the score relative to that ceiling is what compares
methods. These are additions around the released metric, which is unchanged.

Where this module differs from the released code (results are otherwise identical):

- arithmetic is float64 throughout; the code computes the rates as float32 means on the GPU and builds the
  single-threshold grid with ``torch.linspace`` in float32. The differences are ~1e-7 in epsilon and can
  only matter for an epsilon within that distance of a bin edge;
- rates are counted with sort + ``searchsorted`` instead of broadcasting N x (number of rules) comparisons
  (the same counts, far less memory);
- an example where no rule survives (e.g. both samples constant and equal) gets epsilon = 0 (nothing tells
  the samples apart); the code stops with an assertion error there;
- the final score refuses a zero mean retrained accuracy (the code would divide by zero).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

DELTA = 1e-5  # the released code's delta
EPSILON_CAP = 50.0  # per-example epsilon ceiling (also the value of a degenerate "peaky" example)
THRESHOLDS_PER_UNIT = 100  # decision thresholds per unit of phi
INTERVAL_BUFFER = 2.0  # double-threshold rule: slack around the peakier sample, in phi units
PEAKY_RANGE_RATIO = 0.01  # smaller range / larger range below this -> epsilon = EPSILON_CAP
BIN_WIDTH = 0.5  # width of an epsilon bin for the points
FIRST_BIN_POINTS = 1.0  # H for the bin [0, 0.5); each next bin halves it
MIN_MODELS = 2  # the points cap ceil(ln(N - 1)) needs N >= 2
RELEASED_N_MODELS = 512  # N of the challenge's released evaluation
SMALL_N_WARNING_BELOW = 128  # N below this: the score says more about N than about the method
# What the utility arrays of kaggle_score hold: accuracies (the released score) or, for regression, MAEs.
Utility = Literal["accuracy", "mae"]


# ================================================================================================
# Rules and per-example epsilon
# ================================================================================================


def _threshold_count(span: float) -> int:
    return math.ceil(span * THRESHOLDS_PER_UNIT)


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """#{v : v >= t} for each t."""
    counts: np.ndarray = sorted_values.shape[0] - np.searchsorted(sorted_values, thresholds, side="left")
    return counts


def _count_inside(sorted_values: np.ndarray, lefts: np.ndarray, rights: np.ndarray) -> np.ndarray:
    """#{v : l <= v <= r} for each rule, lefts (R, L) and rights (R,); 0 when l > r."""
    at_most_right = np.searchsorted(sorted_values, rights, side="right")
    below_left = np.searchsorted(sorted_values, lefts, side="left")
    counts: np.ndarray = np.maximum(at_most_right[:, None] - below_left, 0)
    return counts


def _single_threshold_counts(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) of "positive iff phi >= t" over the single-threshold grid."""
    pooled = np.concatenate([positive, negative])
    low, high = float(pooled.min()), float(pooled.max())
    thresholds = np.linspace(low, high, _threshold_count(high - low))
    return _count_at_least(positive, thresholds), _count_at_least(negative, thresholds)


def _double_threshold_counts(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) of "peakier iff l <= phi <= r" over the interval grid.

    The rule's positive class is the peakier sample (smaller range; ``negative`` on equal ranges).
    """
    positive_range = float(positive[-1] - positive[0])
    negative_range = float(negative[-1] - negative[0])
    peaky, other = (negative, positive) if positive_range >= negative_range else (positive, negative)
    width = min(positive_range, negative_range)
    right_low = float(peaky[0]) + width - INTERVAL_BUFFER
    right_high = float(peaky[-1]) + INTERVAL_BUFFER
    rights = np.linspace(right_low, right_high, _threshold_count(right_high - right_low))
    lefts = np.linspace(
        rights - width - INTERVAL_BUFFER,
        rights - width + INTERVAL_BUFFER,
        _threshold_count(2.0 * INTERVAL_BUFFER),
        axis=1,
    )
    return (
        _count_inside(peaky, lefts, rights).reshape(-1),
        _count_inside(other, lefts, rights).reshape(-1),
    )


def _rule_epsilons(
    true_positives: np.ndarray, false_positives: np.ndarray, n_positive: int, n_negative: int, delta: float
) -> np.ndarray:
    """Epsilon of each rule: inf for perfect separation, NaN for a discarded rule, else the clipped bound."""
    false_negative_rate = (n_positive - true_positives) / n_positive
    false_positive_rate = false_positives / n_negative
    no_false_negative = true_positives == n_positive
    no_false_positive = false_positives == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(1.0 - delta - false_positive_rate) - np.log(false_negative_rate)
        second = np.log(1.0 - delta - false_negative_rate) - np.log(false_positive_rate)
    epsilons = np.maximum(np.fmax(first, second), 0.0)  # NaN only when both terms are undefined
    epsilons = np.where(no_false_negative | no_false_positive, np.nan, epsilons)
    result: np.ndarray = np.where(no_false_negative & no_false_positive, np.inf, epsilons)
    return result


def _unclipped_epsilon(positive: np.ndarray, negative: np.ndarray, delta: float) -> float:
    """Max epsilon over the surviving rules (inf possible; EPSILON_CAP for a degenerate narrow sample)."""
    positive, negative = np.sort(positive), np.sort(negative)
    positive_range = float(positive[-1] - positive[0])
    negative_range = float(negative[-1] - negative[0])
    largest, smallest = max(positive_range, negative_range), min(positive_range, negative_range)
    if largest > 0.0 and smallest / largest < PEAKY_RANGE_RATIO:
        return EPSILON_CAP
    n_positive, n_negative = positive.shape[0], negative.shape[0]
    single = _rule_epsilons(*_single_threshold_counts(positive, negative), n_positive, n_negative, delta)
    # The interval rule's positive class is the peakier sample, which may be ``negative``.
    peaky_is_negative = positive_range >= negative_range
    n_peaky, n_other = (n_negative, n_positive) if peaky_is_negative else (n_positive, n_negative)
    double = _rule_epsilons(*_double_threshold_counts(positive, negative), n_peaky, n_other, delta)
    surviving = np.concatenate([single, double])
    surviving = surviving[~np.isnan(surviving)]
    return float(surviving.max()) if surviving.size else 0.0


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")


def example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = DELTA) -> float:
    """Epsilon in [0, EPSILON_CAP] of one forget example from its N unlearned and N retrained phi values.

    The positive class is the sample with the larger median (the unlearned one on a tie); see the module
    docstring for the rules and special cases.
    """
    _check_delta(delta)
    unlearned_values = np.asarray(unlearned, dtype=np.float64)
    retrained_values = np.asarray(retrained, dtype=np.float64)
    if (
        unlearned_values.ndim != 1
        or retrained_values.shape != unlearned_values.shape
        or not unlearned_values.size
    ):
        raise ValueError(
            f"unlearned and retrained must be non-empty 1-D of equal length, got "
            f"{unlearned_values.shape} and {retrained_values.shape}"
        )
    if not (np.isfinite(unlearned_values).all() and np.isfinite(retrained_values).all()):
        raise ValueError("phi values contain NaN or infinite values")
    if np.median(retrained_values) > np.median(unlearned_values):
        positive, negative = retrained_values, unlearned_values
    else:
        positive, negative = unlearned_values, retrained_values
    return min(max(_unclipped_epsilon(positive, negative, delta), 0.0), EPSILON_CAP)


# ================================================================================================
# Points, forgetting quality, final score
# ================================================================================================


def points_cap(n_models: int) -> float:
    """ceil(ln(N - 1)): epsilons at or above it score 0 points (7.0 for N = 512)."""
    if n_models < MIN_MODELS:
        raise ValueError(f"the Kaggle score needs >= {MIN_MODELS} models per side, got {n_models}")
    return float(math.ceil(math.log(n_models - 1)))


def n_point_bins(n_models: int) -> int:
    """Number of 0.5-wide bins that score points: those ending at or below ``points_cap`` (14 for N = 512)."""
    return math.floor(points_cap(n_models) / BIN_WIDTH)


def epsilon_points(epsilon: float, n_models: int) -> float:
    """H = 2 / 2^k for epsilon in the k-th (1-based) 0.5-wide bin below the cap; 0 at or above the cap."""
    if math.isnan(epsilon) or epsilon < 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    bins = n_point_bins(n_models)
    if math.isinf(epsilon) or epsilon >= bins * BIN_WIDTH:
        return 0.0
    return FIRST_BIN_POINTS / 2.0 ** math.floor(epsilon / BIN_WIDTH)


def _as_phi_banks(unlearned_phi: np.ndarray, retrained_phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unlearned = np.asarray(unlearned_phi, dtype=np.float64)
    retrained = np.asarray(retrained_phi, dtype=np.float64)
    if unlearned.ndim != 2 or unlearned.shape != retrained.shape or unlearned.shape[1] == 0:
        raise ValueError(
            f"unlearned_phi and retrained_phi must both be (N models, n examples) with n >= 1, got "
            f"{unlearned.shape} and {retrained.shape}"
        )
    points_cap(unlearned.shape[0])  # validates N
    if not (np.isfinite(unlearned).all() and np.isfinite(retrained).all()):
        raise ValueError("phi values contain NaN or infinite values")
    return unlearned, retrained


def forgetting_quality(
    unlearned_phi: np.ndarray, retrained_phi: np.ndarray, *, delta: float = DELTA
) -> dict[str, Any]:
    """Per-example epsilons and points and their mean F, from (N models, n examples) phi banks.

    Returns ``{"epsilons": ndarray (n,), "points": ndarray (n,), "forgetting_quality": float,
    "n_models": N}``.
    """
    _check_delta(delta)
    unlearned, retrained = _as_phi_banks(unlearned_phi, retrained_phi)
    n_models = unlearned.shape[0]
    epsilons = np.array(
        [example_epsilon(unlearned[:, i], retrained[:, i], delta=delta) for i in range(unlearned.shape[1])]
    )
    points = np.array([epsilon_points(float(e), n_models) for e in epsilons])
    return {
        "epsilons": epsilons,
        "points": points,
        "forgetting_quality": float(points.mean()),
        "n_models": n_models,
    }


def small_n_warning(n_models: int) -> str | None:
    """A reader's warning when N is far below the released 512 (``None`` from ``SMALL_N_WARNING_BELOW``)."""
    if n_models >= SMALL_N_WARNING_BELOW:
        return None
    cap = points_cap(n_models)
    return (
        f"Kaggle score at N = {n_models} models per side (the released evaluation uses "
        f"{RELEASED_N_MODELS}): points are awarded only below epsilon = ceil(ln(N - 1)) = {cap:g} "
        f"({n_point_bins(n_models)} bins instead of {n_point_bins(RELEASED_N_MODELS)}), and each example's "
        f"epsilon is the maximum over hundreds of threshold rules fitted on {n_models} + {n_models} samples, "
        "so noise alone pushes it up: even retraining scores well below 1. Read the score against the "
        "calibration ceiling (retrain vs retrain at the same N), or raise N."
    )


def relative_to_ceiling(value: float, ceiling: float) -> float | None:
    """``value / ceiling`` (the share of the attainable score at this N); ``None`` for a zero ceiling."""
    return value / ceiling if ceiling > 0.0 else None


def _mean_accuracy(values: np.ndarray, name: str) -> float:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(
            f"{name} must be a non-empty 1-D array of finite accuracies, got shape {array.shape}"
        )
    return float(array.mean())


def _ratio(numerator: float, denominator: float, name: str, *, unit: str = "accuracy") -> float:
    if denominator <= 0.0:
        raise ValueError(f"the ratio's mean {name} {unit} must be > 0, got {denominator}")
    return numerator / denominator


def epsilon_histogram(epsilons: np.ndarray, n_models: int) -> dict[str, Any]:
    """Counts of epsilons per scoring bin (edges 0, 0.5, ..., cap), the points of each bin, and the rest."""
    values = np.asarray(epsilons, dtype=np.float64)
    bins = n_point_bins(n_models)
    edges = [index * BIN_WIDTH for index in range(bins + 1)]
    indices = np.floor(values / BIN_WIDTH)
    counts = [int(np.sum(indices == index)) for index in range(bins)]
    return {
        "bin_edges": edges,
        "counts": counts,
        "points": [FIRST_BIN_POINTS / 2.0**index for index in range(bins)],
        "beyond_cap": int(np.sum(indices >= bins)),
        "at_epsilon_cap": int(np.sum(values >= EPSILON_CAP)),
    }


def kaggle_score(
    unlearned_phi: np.ndarray,
    retrained_phi: np.ndarray,
    retain_accuracy_unlearned: np.ndarray,
    retain_accuracy_retrained: np.ndarray,
    test_accuracy_unlearned: np.ndarray,
    test_accuracy_retrained: np.ndarray,
    *,
    delta: float = DELTA,
    utility: Utility = "accuracy",
) -> dict[str, Any]:
    """The final Kaggle score F * (RA_U / RA_R) * (TA_U / TA_R), JSON-able, with its parts.

    ``utility="mae"`` (regression; a deviation, the released score is for classifiers): the four utility
    arrays are per-model mean absolute errors, where lower is better, and each ratio is inverted,
    F * (MAE_R^retain / MAE_U^retain) * (MAE_R^test / MAE_U^test): 1 when the unlearned models are as
    accurate as the retrains, below 1 when worse, as the accuracy ratio. Keys then read ``retain_mae_ratio``,
    ``test_mae_ratio``, ``retain_mae``, ``test_mae``, and ``utility`` names the choice.

    ``*_phi``: (N models, n forget examples). Accuracies: one value per model (any consistent unit: the
    ratios cancel it), averaged per side. Keys: ``score``, ``forgetting_quality``, ``retain_accuracy_ratio``,
    ``test_accuracy_ratio``, ``retain_accuracy`` / ``test_accuracy`` ({"unlearned_mean", "retrained_mean"}),
    ``epsilon_histogram`` (see ``epsilon_histogram``), ``epsilons`` (per example, in forget-set order),
    ``epsilon_summary`` (mean / median / max), ``n_models``, ``n_examples``, ``delta``, ``epsilon_cap``,
    ``points_cap``, ``bin_width``.
    """
    quality = forgetting_quality(unlearned_phi, retrained_phi, delta=delta)
    retain_u = _mean_accuracy(retain_accuracy_unlearned, "retain_accuracy_unlearned")
    retain_r = _mean_accuracy(retain_accuracy_retrained, "retain_accuracy_retrained")
    test_u = _mean_accuracy(test_accuracy_unlearned, "test_accuracy_unlearned")
    test_r = _mean_accuracy(test_accuracy_retrained, "test_accuracy_retrained")
    if utility == "accuracy":
        retain_ratio = _ratio(retain_u, retain_r, "retain")
        test_ratio = _ratio(test_u, test_r, "test")
    elif utility == "mae":
        # Lower is better: retrained over unlearned, so a worse unlearned model lowers the score.
        retain_ratio = _ratio(retain_r, retain_u, "retain", unit="MAE")
        test_ratio = _ratio(test_r, test_u, "test", unit="MAE")
    else:
        raise ValueError(f"utility must be 'accuracy' or 'mae', got {utility!r}")
    epsilons: np.ndarray = quality["epsilons"]
    n_models: int = quality["n_models"]
    return {
        "score": quality["forgetting_quality"] * retain_ratio * test_ratio,
        "forgetting_quality": quality["forgetting_quality"],
        "utility": utility,
        f"retain_{utility}_ratio": retain_ratio,
        f"test_{utility}_ratio": test_ratio,
        f"retain_{utility}": {"unlearned_mean": retain_u, "retrained_mean": retain_r},
        f"test_{utility}": {"unlearned_mean": test_u, "retrained_mean": test_r},
        "epsilon_histogram": epsilon_histogram(epsilons, n_models),
        "epsilons": [float(e) for e in epsilons],
        "epsilon_summary": {
            "mean": float(epsilons.mean()),
            "median": float(np.median(epsilons)),
            "max": float(epsilons.max()),
        },
        "n_models": n_models,
        "n_examples": int(epsilons.shape[0]),
        "delta": delta,
        "epsilon_cap": EPSILON_CAP,
        "points_cap": points_cap(n_models),
        "bin_width": BIN_WIDTH,
    }
