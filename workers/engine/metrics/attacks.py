"""Population membership-inference attacks, reported as ROC / AUC / balanced accuracy / TPR at low FPR.

Torch-free (numpy + scikit-learn): this package is imported by the API process.

A *population* attack sees one model's softmax outputs ``p`` (N x C) for known members and known
non-members and asks how well a single, example-independent rule separates them (peers.md §3.1, §3.3).

Scores (``SCORES``), oriented so that **larger = "more likely member"**:

=====================  =========================================================  ====
name                   raw quantity r(p, y)                                        sign
=====================  =========================================================  ====
``loss``               cross-entropy  -ln p_y  (members are fitted: low loss)        -1
``confidence``         p_y                                                          +1
``entropy``            Shannon entropy  -sum_k p_k ln p_k  (members: peaky)          -1
``modified_entropy``   Song & Mittal  -(1-p_y) ln p_y - sum_{k!=y} p_k ln(1-p_k)     -1
``logit_confidence``   phi = ln p_y - ln(1 - p_y)                                    +1
=====================  =========================================================  ====

The membership score is ``sign * r``. Numerics: every ``ln`` argument is clipped below at ``LOG_FLOOR``
(1e-30, as in ``mia.py``). ``1 - p_y`` is computed as ``sum_{k != y} p_k`` (not by subtraction), and
``ln p_y`` as ``log1p(-sum_{k != y} p_k)`` once ``p_y >= 1/2``; so ``loss`` and ``phi`` keep full precision
when p_y -> 1 (e.g. p_y = 1 - 1e-20 is stored as 1.0, yet phi = 46.05) and when p_y -> 0
(``ln(1 - p_y) = log1p(-p_y)``). Rows are assumed to sum to 1. ``ln(1 - p_k)`` in the modified entropy
is ``log1p(-p_k)``. With the floor, phi lies in [-69.08, 69.08].

Attackers (``ATTACKERS``):

- ``threshold``: the score itself; every threshold is tried (the ROC). Nothing is fitted, so it is
  evaluated on **all** members and non-members.
- ``svc``: ``SVC(C=3, kernel="rbf", gamma="auto")`` as in the reference protocol (optml.md §3.1, no
  feature scaling, no class weighting), on the 1-D score; attack score = ``decision_function``.
- ``logreg``: ``LogisticRegression()`` (sklearn defaults, lbfgs, C=1) on the 1-D score; attack score =
  ``decision_function`` (the log-odds).

Fitted attackers use a seeded, stratified split: members and non-members are each permuted with
``numpy.random.default_rng(seed)`` and the first ``floor(FIT_FRACTION * n)`` (at least 1) of each are the
fitting set; the rest is the evaluation set. All their metrics are on the evaluation set only. (In 1-D a
logistic regression is monotone in the score, so its ROC equals the threshold ROC on the evaluation half,
up to a flip; the RBF SVC can carve out intervals.)

Metrics from (attack scores s, is_member), with P members and N non-members:

- ROC: for each distinct threshold tau (descending, plus tau = +inf for the point (0, 0)),
  TPR(tau) = #{members: s >= tau} / P and FPR(tau) = #{non-members: s >= tau} / N. Tied scores move
  together (one point per distinct value), so the curve is exact and AUC by the trapezoid rule equals
  the Mann-Whitney statistic Pr[s_member > s_non] + 1/2 Pr[s_member = s_non].
- Balanced accuracy (``balanced_accuracy``): max over ROC points of (TPR + 1 - FPR) / 2, i.e. the best
  threshold chosen *on the evaluated data* (optimistic; always >= 0.5 because the two end points give 0.5).
- Balanced accuracy at the attacker's own decision (``balanced_accuracy_at_decision``): for ``svc`` and
  ``logreg`` a sample is predicted member iff ``decision_function > 0`` (exactly sklearn's ``predict``);
  this is honest (threshold chosen on the fitting half). The ``threshold`` attacker has no decision
  threshold of its own: value ``None`` with a ``reason``.
- TPR at FPR alpha: ``max{TPR(tau) : FPR(tau) <= alpha}`` over the exact ROC (the standard low-FPR
  read-off, peers.md §3.1; >= 0 because of the (0, 0) point). FPR <= alpha is tested on counts,
  #false positives <= floor(alpha * N), so no rounding can admit one false positive too many.
- Sample-size guard: FPR resolves in steps of 1/N, so TPR at alpha is reported only when
  N >= ``MIN_FALSE_POSITIVES_AT_ALPHA`` / alpha (10/alpha: the read-off point then allows at least 10 false
  positives rather than 0 or 1); otherwise ``{"value": None, "reason": ...}``.
- Confidence intervals: percentile bootstrap (``CONFIDENCE_LEVEL`` = 95 %), ``n_bootstrap`` replicates
  drawn with ``numpy.random.default_rng(seed)``; members and non-members are resampled *separately*
  with replacement (each keeping its size), so every replicate has both classes. Fitted attackers are not
  refitted: the interval covers evaluation-sample variability, not fitting variability. All
  (score, attacker) pairs use the same seed, so their replicates are comparable. This is the right
  interval only when trials really are independent, as for a population attack on one model (one trial
  per example). The report's ``interval`` field names the method used.
- Cluster bootstrap (``cluster_bootstrap``, used by ``attack_report`` when ``clusters`` is given): per-example
  attacks pool trials over several models and examples (U-LiRA: pipelines x forget examples; LiRA / RMIA
  against K unlearned models: models x examples). Trials that share a model, or an example, are correlated,
  so the iid bootstrap above makes intervals too narrow. Each trial carries two cluster ids, its model
  (pipeline) and its example. The default ``two-way`` method is the pigeonhole (product-weight) bootstrap of
  McCullagh (2000) / Owen (2007): per replicate, models are resampled with replacement and, independently,
  examples are; a trial's multiplicity is (times its model was drawn) x (times its example was drawn), i.e.
  the trials at the crossing of the drawn models and examples. Its variance estimate is conservative (it
  counts the residual variance about twice), which is the safe side for a policy reading ``ci_high``.
  Resampling is stratified like the iid bootstrap: clusters that hold only members, only non-members, or
  both are each resampled within their own stratum keeping its size (so U-LiRA's member and non-member
  trials of the same pipeline / example move together, and LiRA's forget examples and test examples each
  keep their count). ``pipeline`` and ``example`` resample one way only (one-way cluster bootstrap), ``iid``
  resamples trials (the naive bootstrap, kept for comparison). Statistics of a weighted replicate are exactly
  those of the resample with each trial repeated by its multiplicity (tested), computed for all replicates
  at once from one sort. A replicate in which one class gets total weight 0 (possible only when the design
  is not a full crossing) is dropped; ``interval.n_bootstrap_used`` says how many were kept. Not captured:
  the dependence U-LiRA's leave-one-pipeline-out fits induce between pipelines (each fit uses all others),
  and fitted attackers' fitting variability.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

# --- score numerics -------------------------------------------------------------------------------
LOG_FLOOR = 1e-30  # ln() argument floor, as in mia.py (Song & Mittal use 1e-30 too)
LOG_FLOOR_LN = math.log(LOG_FLOOR)  # -69.08
HALF = 0.5  # above this p_y, ln p_y is computed as log1p(-(1 - p_y)) for precision

# --- attackers ------------------------------------------------------------------------------------
SVC_C = 3.0
SVC_KERNEL = "rbf"
SVC_GAMMA = "auto"  # 1 / n_features, as in the reference
FIT_FRACTION = 0.5  # share of members (and of non-members) used to fit a classifier attacker
DECISION_THRESHOLD = 0.0  # decision_function > 0 <=> predict() says member
MIN_PER_CLASS_FITTED = 2  # a fitted attacker needs >= 1 fitting and >= 1 evaluation sample per class

# --- reporting ------------------------------------------------------------------------------------
DEFAULT_ALPHAS: tuple[float, ...] = (0.01, 0.001)
MIN_FALSE_POSITIVES_AT_ALPHA = 10  # TPR@alpha needs N_nonmembers >= this / alpha
DEFAULT_N_BOOTSTRAP = 200
CONFIDENCE_LEVEL = 0.95
MAX_ROC_POINTS = 200  # downsampled curve for plotting
COUNT_TOLERANCE = 1e-9  # relative slack when turning alpha * N into an integer count

MEMBER = 1
NONMEMBER = 0

# --- cluster bootstrap ----------------------------------------------------------------------------
CLUSTER_METHODS: dict[str, str] = {
    "two-way": "two-way cluster bootstrap (pipelines x examples)",
    "pipeline": "cluster bootstrap by pipeline (one-way)",
    "example": "cluster bootstrap by example (one-way)",
    "iid": "bootstrap over trials (trials treated as independent)",
}
DEFAULT_CLUSTER_METHOD = "two-way"
IID_METHOD_DESCRIPTION = (
    "percentile bootstrap over trials, members and non-members resampled separately (trials independent)"
)
BOOTSTRAP_CELLS_PER_CHUNK = 2_000_000  # replicates x trials held in memory at once


# ================================================================================================
# Scores
# ================================================================================================


def _check_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=np.float64)
    labs = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be N x C, got shape {probs.shape}")
    if labs.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},), got {labs.shape}")
    if labs.size and (
        not np.issubdtype(labs.dtype, np.integer) or labs.min() < 0 or labs.max() >= probs.shape[1]
    ):
        raise ValueError(f"labels must be integers in [0, {probs.shape[1]})")
    return probs, labs.astype(np.int64)


def _true_and_rest(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p_y, 1 - p_y) with 1 - p_y computed as sum_{k != y} p_k (exact when p_y is close to 1)."""
    rows = np.arange(labels.shape[0])
    true_probability = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = 0.0
    return true_probability, others.sum(axis=1)


def _log_one_minus(values: np.ndarray) -> np.ndarray:
    """``ln(1 - x)`` as ``log1p(-x)``, with ``1 - x`` floored at LOG_FLOOR (x = 1 gives ln 1e-30)."""
    with np.errstate(divide="ignore"):
        logs = np.log1p(-np.clip(values, 0.0, 1.0))
    floored: np.ndarray = np.maximum(logs, LOG_FLOOR_LN)
    return floored


def _log_floored(values: np.ndarray) -> np.ndarray:
    logs: np.ndarray = np.log(np.maximum(values, LOG_FLOOR))
    return logs


def _stable_logs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ln p_y, ln(1 - p_y)), each argument floored at LOG_FLOOR, log1p on the side that is near 1."""
    true_probability, rest = _true_and_rest(probs, labels)
    near_one = true_probability >= HALF
    log_true = np.where(near_one, _log_one_minus(rest), _log_floored(true_probability))
    log_rest = np.where(near_one, _log_floored(rest), _log_one_minus(true_probability))
    return log_true, log_rest


def cross_entropy_loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Raw CE loss ``-ln p_y`` (argument floored at LOG_FLOOR, so at most 69.08)."""
    probs, labs = _check_probabilities(probabilities, labels)
    return -_stable_logs(probs, labs)[0]


def true_class_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Raw confidence ``p_y``."""
    probs, labs = _check_probabilities(probabilities, labels)
    return probs[np.arange(labs.shape[0]), labs]


def prediction_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Raw Shannon entropy ``-sum_k p_k ln p_k`` (0 ln 0 = 0 through the floored log); labels unused."""
    probs, _ = _check_probabilities(probabilities, labels)
    entropy: np.ndarray = -np.sum(probs * _log_floored(probs), axis=1)
    return entropy


def modified_entropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Raw Song & Mittal (2021) modified entropy, computed correctly.

    ``Mentr(p, y) = -(1 - p_y) ln p_y - sum_{k != y} p_k ln(1 - p_k)``; ``ln(1 - p_k) = log1p(-p_k)`` with
    ``1 - p_k`` floored at LOG_FLOOR (so a certain-but-wrong prediction stays finite: -2 ln 1e-30).
    """
    probs, labs = _check_probabilities(probabilities, labels)
    rows = np.arange(labs.shape[0])
    _, rest = _true_and_rest(probs, labs)
    log_true, _ = _stable_logs(probs, labs)
    wrong_terms = -probs * _log_one_minus(probs)
    wrong_terms[rows, labs] = 0.0
    result: np.ndarray = -rest * log_true + wrong_terms.sum(axis=1)
    return result


def logit_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Raw logit-scaled confidence ``phi = ln p_y - ln(1 - p_y)`` (peers.md §3), stable at both ends."""
    probs, labs = _check_probabilities(probabilities, labels)
    log_true, log_rest = _stable_logs(probs, labs)
    phi: np.ndarray = log_true - log_rest
    return phi


@dataclass(frozen=True)
class ScoreSpec:
    """A raw per-sample quantity and the sign that turns it into a membership score (larger = member)."""

    raw: Callable[[np.ndarray, np.ndarray], np.ndarray]
    sign: float
    description: str


SCORES: dict[str, ScoreSpec] = {
    "loss": ScoreSpec(cross_entropy_loss, -1.0, "-CE loss = ln p_y (members have low loss)"),
    "confidence": ScoreSpec(true_class_confidence, 1.0, "p_y"),
    "entropy": ScoreSpec(prediction_entropy, -1.0, "-entropy (members have peaky outputs)"),
    "modified_entropy": ScoreSpec(modified_entropy, -1.0, "-modified entropy (Song & Mittal)"),
    "logit_confidence": ScoreSpec(logit_confidence, 1.0, "phi = ln p_y - ln(1 - p_y)"),
}


def membership_score(name: str, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``sign * raw`` for score ``name``: larger means "more likely member"."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; available: {sorted(SCORES)}")
    spec = SCORES[name]
    score: np.ndarray = spec.sign * spec.raw(probabilities, labels)
    return score


# ================================================================================================
# Metrics on (scores, is_member)
# ================================================================================================


@dataclass(frozen=True)
class RocCurve:
    """Exact ROC: one point per distinct threshold, descending; index 0 is (0, 0) at tau = +inf.

    ``true_positives`` / ``false_positives`` are the integer counts with score >= threshold.
    """

    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    n_members: int
    n_nonmembers: int

    @property
    def tpr(self) -> np.ndarray:
        rate: np.ndarray = self.true_positives / self.n_members
        return rate

    @property
    def fpr(self) -> np.ndarray:
        rate: np.ndarray = self.false_positives / self.n_nonmembers
        return rate


def _split_scores(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(scores, dtype=np.float64)
    member = np.asarray(is_member, dtype=bool)
    if values.ndim != 1 or member.shape != values.shape:
        raise ValueError(
            f"scores and is_member must be 1-D of equal length, got {values.shape}, {member.shape}"
        )
    if np.isnan(values).any():
        raise ValueError("attack scores contain NaN")
    return values[member], values[~member]


def _roc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> RocCurve:
    n_members, n_nonmembers = member_scores.shape[0], nonmember_scores.shape[0]
    if n_members == 0 or n_nonmembers == 0:
        raise ValueError(f"ROC needs members and non-members, got {n_members} and {n_nonmembers}")
    values = np.concatenate([member_scores, nonmember_scores])
    member = np.concatenate([np.ones(n_members, dtype=bool), np.zeros(n_nonmembers, dtype=bool)])
    order = np.argsort(-values, kind="stable")
    values, member = values[order], member[order]
    group_ends = np.concatenate([np.flatnonzero(np.diff(values) != 0), [values.shape[0] - 1]])
    true_positives = np.cumsum(member)[group_ends]
    false_positives = np.cumsum(~member)[group_ends]
    return RocCurve(
        thresholds=np.concatenate([[np.inf], values[group_ends]]),
        true_positives=np.concatenate([[0], true_positives]),
        false_positives=np.concatenate([[0], false_positives]),
        n_members=n_members,
        n_nonmembers=n_nonmembers,
    )


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> RocCurve:
    """Exact ROC of "member iff score >= tau" over every distinct tau (ties move together)."""
    return _roc(*_split_scores(scores, is_member))


def _auc(curve: RocCurve) -> float:
    # Trapezoid on counts: sum over segments of dFP * (TP_prev + TP) / 2, normalised once.
    d_false = np.diff(curve.false_positives)
    heights = curve.true_positives[:-1] + curve.true_positives[1:]
    return float(np.sum(d_false * heights) / (2.0 * curve.n_members * curve.n_nonmembers))


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the exact ROC = Pr[s_member > s_non] + 1/2 Pr[s_member = s_non]."""
    return _auc(roc_curve(scores, is_member))


def _best_balanced_accuracy(curve: RocCurve) -> float:
    return float(np.max((curve.tpr + 1.0 - curve.fpr) / 2.0))


def best_balanced_accuracy(scores: np.ndarray, is_member: np.ndarray) -> float:
    """max over thresholds of (TPR + TNR) / 2 (threshold chosen on these data: optimistic, >= 0.5)."""
    return _best_balanced_accuracy(roc_curve(scores, is_member))


def _decision_balanced_accuracy(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, threshold: float
) -> float:
    tpr = float(np.mean(member_scores > threshold))
    tnr = float(np.mean(nonmember_scores <= threshold))
    return (tpr + tnr) / 2.0


def decision_balanced_accuracy(
    scores: np.ndarray, is_member: np.ndarray, threshold: float = DECISION_THRESHOLD
) -> float:
    """(TPR + TNR) / 2 of the fixed rule "member iff score > threshold" (sklearn ``predict`` for 0)."""
    member_scores, nonmember_scores = _split_scores(scores, is_member)
    if member_scores.size == 0 or nonmember_scores.size == 0:
        raise ValueError("balanced accuracy needs members and non-members")
    return _decision_balanced_accuracy(member_scores, nonmember_scores, threshold)


def _max_false_positives(alpha: float, n_nonmembers: int) -> int:
    return math.floor(alpha * n_nonmembers * (1.0 + COUNT_TOLERANCE))


def _tpr_at_fpr(curve: RocCurve, alpha: float) -> float:
    # false_positives is non-decreasing, and so is TPR: the last admissible point has the largest TPR.
    last = int(
        np.searchsorted(curve.false_positives, _max_false_positives(alpha, curve.n_nonmembers), "right")
    )
    return float(curve.tpr[last - 1])


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, alpha: float) -> float:
    """``max{TPR(tau) : FPR(tau) <= alpha}`` on the exact ROC.

    No sample-size guard here; ``required_nonmembers`` / ``tpr_guard_reason`` apply it.
    """
    _check_alpha(alpha)
    return _tpr_at_fpr(roc_curve(scores, is_member), alpha)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"FPR level alpha must be in (0, 1), got {alpha}")


def required_nonmembers(alpha: float) -> int:
    """Fewest non-member trials for which TPR at FPR ``alpha`` is reported: ceil(10 / alpha)."""
    _check_alpha(alpha)
    return math.ceil(MIN_FALSE_POSITIVES_AT_ALPHA / alpha * (1.0 - COUNT_TOLERANCE))


def alpha_key(alpha: float) -> str:
    """JSON key for an FPR level: ``0.01 -> "0.01"``, ``0.001 -> "0.001"``."""
    return format(alpha, "g")


def _format_percent(alpha: float) -> str:
    return f"{format(alpha * 100.0, 'g')}%"


def tpr_guard_reason(alpha: float, n_nonmembers: int) -> str | None:
    """``None`` when ``n_nonmembers`` suffices for TPR@alpha, else the human-readable reason."""
    needed = required_nonmembers(alpha)
    if n_nonmembers >= needed:
        return None
    return f"needs >= {needed} non-members for TPR@{_format_percent(alpha)}FPR, have {n_nonmembers}"


# ================================================================================================
# Bootstrap and one attacker's report
# ================================================================================================


def _statistics(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    alphas: Sequence[float],
    decision_threshold: float | None,
) -> dict[str, float]:
    curve = _roc(member_scores, nonmember_scores)
    stats = {"auc": _auc(curve), "balanced_accuracy": _best_balanced_accuracy(curve)}
    if decision_threshold is not None:
        stats["balanced_accuracy_at_decision"] = _decision_balanced_accuracy(
            member_scores, nonmember_scores, decision_threshold
        )
    for alpha in alphas:
        stats[alpha_key(alpha)] = _tpr_at_fpr(curve, alpha)
    return stats


def _bootstrap(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    alphas: Sequence[float],
    decision_threshold: float | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals per statistic; members and non-members resampled separately."""
    rng = np.random.default_rng(seed)
    replicates: dict[str, list[float]] = {}
    for _ in range(n_bootstrap):
        members = member_scores[rng.integers(0, member_scores.shape[0], member_scores.shape[0])]
        nonmembers = nonmember_scores[rng.integers(0, nonmember_scores.shape[0], nonmember_scores.shape[0])]
        for key, value in _statistics(members, nonmembers, alphas, decision_threshold).items():
            replicates.setdefault(key, []).append(value)
    tail = (1.0 - CONFIDENCE_LEVEL) / 2.0 * 100.0
    return {
        key: (float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail)))
        for key, values in replicates.items()
    }


def bootstrap_interval(
    scores: np.ndarray,
    is_member: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic(scores, is_member)``.

    Members and non-members are resampled separately with replacement, each keeping its size.
    """
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be >= 1")
    member_scores, nonmember_scores = _split_scores(scores, is_member)
    labels = np.concatenate(
        [np.ones(member_scores.shape[0], bool), np.zeros(nonmember_scores.shape[0], bool)]
    )
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        members = member_scores[rng.integers(0, member_scores.shape[0], member_scores.shape[0])]
        nonmembers = nonmember_scores[rng.integers(0, nonmember_scores.shape[0], nonmember_scores.shape[0])]
        values.append(statistic(np.concatenate([members, nonmembers]), labels))
    tail = (1.0 - CONFIDENCE_LEVEL) / 2.0 * 100.0
    return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))


@dataclass(frozen=True)
class TrialClusters:
    """Cluster ids of every trial: the model (pipeline) it was scored under and the example it is about.

    Arrays are integer ids aligned with the member and the non-member scores. Equal ids are the same
    cluster *across* the two classes (a U-LiRA pipeline holds both a member and a non-member trial of each
    forget example); ids only need to be comparable within one kind (models with models).
    """

    member_models: np.ndarray
    member_examples: np.ndarray
    nonmember_models: np.ndarray
    nonmember_examples: np.ndarray

    def checked(self, n_members: int, n_nonmembers: int) -> TrialClusters:
        arrays = []
        for name, size in (
            ("member_models", n_members),
            ("member_examples", n_members),
            ("nonmember_models", n_nonmembers),
            ("nonmember_examples", n_nonmembers),
        ):
            ids = np.asarray(getattr(self, name))
            if ids.shape != (size,) or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(f"cluster ids {name} must be {size} integers, got {ids.dtype} {ids.shape}")
            arrays.append(ids.astype(np.int64))
        return TrialClusters(*arrays)

    def counts(self) -> dict[str, int]:
        """Distinct clusters: models, and examples among members, non-members and in both."""
        member_examples = set(np.unique(self.member_examples).tolist())
        nonmember_examples = set(np.unique(self.nonmember_examples).tolist())
        models = np.unique(np.concatenate([self.member_models, self.nonmember_models]))
        return {
            "pipelines": int(models.size),
            "member_examples": len(member_examples),
            "nonmember_examples": len(nonmember_examples),
            "shared_examples": len(member_examples & nonmember_examples),
        }


def _stratified_cluster_counts(
    member_ids: np.ndarray, nonmember_ids: np.ndarray, rng: np.random.Generator, replicates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, how many times each trial's cluster was drawn: ((B, n_m), (B, n_n)).

    Clusters are resampled with replacement within their stratum (member-only, non-member-only, both),
    each stratum keeping its number of clusters; a multinomial draw of k clusters with equal probabilities
    is exactly k draws with replacement.
    """
    unique, inverse = np.unique(np.concatenate([member_ids, nonmember_ids]), return_inverse=True)
    in_members = np.zeros(unique.size, dtype=bool)
    in_members[inverse[: member_ids.size]] = True
    in_nonmembers = np.zeros(unique.size, dtype=bool)
    in_nonmembers[inverse[member_ids.size :]] = True
    stratum = in_members.astype(np.int64) + 2 * in_nonmembers.astype(np.int64)
    counts = np.zeros((replicates, unique.size))
    for label in (1, 2, 3):
        positions = np.flatnonzero(stratum == label)
        if positions.size:
            probabilities = np.full(positions.size, 1.0 / positions.size)
            counts[:, positions] = rng.multinomial(positions.size, probabilities, size=replicates)
    return counts[:, inverse[: member_ids.size]], counts[:, inverse[member_ids.size :]]


def cluster_weights(
    clusters: TrialClusters, method: str, rng: np.random.Generator, replicates: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap multiplicities of every member and non-member trial, ((B, n_m), (B, n_n)), for ``method``.

    ``two-way``: (draws of the trial's model) x (draws of its example); ``pipeline`` / ``example``: one
    factor only; ``iid``: every trial is its own cluster (members and non-members resampled separately).
    """
    if method not in CLUSTER_METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; available: {sorted(CLUSTER_METHODS)}")
    if method == "iid":
        n_members = clusters.member_models.shape[0]
        trials = np.arange(n_members + clusters.nonmember_models.shape[0])
        return _stratified_cluster_counts(trials[:n_members], trials[n_members:], rng, replicates)
    member_weights = np.ones((replicates, clusters.member_models.shape[0]))
    nonmember_weights = np.ones((replicates, clusters.nonmember_models.shape[0]))
    factors = {
        "two-way": ("models", "examples"),
        "pipeline": ("models",),
        "example": ("examples",),
    }[method]
    for factor in factors:
        member_draws, nonmember_draws = _stratified_cluster_counts(
            getattr(clusters, f"member_{factor}"), getattr(clusters, f"nonmember_{factor}"), rng, replicates
        )
        member_weights *= member_draws
        nonmember_weights *= nonmember_draws
    return member_weights, nonmember_weights


def weighted_statistics(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    member_weights: np.ndarray,
    nonmember_weights: np.ndarray,
    *,
    alphas: Sequence[float] = (),
    decision_threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """``_statistics`` of B weighted resamples at once: each (B,) array, NaN where a class weighs 0.

    ``*_weights`` (B, n): non-negative trial multiplicities. With integer weights every value equals that
    of the resample in which each trial is repeated by its weight (the exact ROC of the weighted counts).
    """
    values = np.concatenate([member_scores, nonmember_scores])
    member = np.concatenate(
        [np.ones(member_scores.shape[0], bool), np.zeros(nonmember_scores.shape[0], bool)]
    )
    order = np.argsort(-values, kind="stable")
    values, member = values[order], member[order]
    group_ends = np.concatenate([np.flatnonzero(np.diff(values) != 0), [values.shape[0] - 1]])
    weights = np.concatenate([member_weights, nonmember_weights], axis=1)[:, order]
    zero = np.zeros((weights.shape[0], 1))
    true_positives = np.concatenate([zero, np.cumsum(weights * member, axis=1)[:, group_ends]], axis=1)
    false_positives = np.concatenate([zero, np.cumsum(weights * ~member, axis=1)[:, group_ends]], axis=1)
    positives, negatives = true_positives[:, -1], false_positives[:, -1]
    valid = (positives > 0) & (negatives > 0)
    positives_safe = np.where(valid, positives, 1.0)
    negatives_safe = np.where(valid, negatives, 1.0)
    heights = true_positives[:, :-1] + true_positives[:, 1:]
    area = np.sum(np.diff(false_positives, axis=1) * heights, axis=1) / (
        2.0 * positives_safe * negatives_safe
    )
    tpr = true_positives / positives_safe[:, None]
    fpr = false_positives / negatives_safe[:, None]
    stats = {"auc": area, "balanced_accuracy": np.max((tpr + 1.0 - fpr) / 2.0, axis=1)}
    if decision_threshold is not None:
        hits = member_weights @ (member_scores > decision_threshold).astype(np.float64)
        rejections = nonmember_weights @ (nonmember_scores <= decision_threshold).astype(np.float64)
        stats["balanced_accuracy_at_decision"] = (hits / positives_safe + rejections / negatives_safe) / 2.0
    for alpha in alphas:
        # Integer weights make the weighted counts integers: the same count test as _tpr_at_fpr.
        limits = np.floor(alpha * negatives * (1.0 + COUNT_TOLERANCE))
        last = np.sum(false_positives <= limits[:, None], axis=1) - 1
        stats[alpha_key(alpha)] = tpr[np.arange(tpr.shape[0]), last]
    return {key: np.where(valid, value, np.nan) for key, value in stats.items()}


def cluster_bootstrap(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    clusters: TrialClusters,
    *,
    method: str = DEFAULT_CLUSTER_METHOD,
    alphas: Sequence[float] = (),
    decision_threshold: float | None = None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Percentile intervals (``CONFIDENCE_LEVEL``) of every statistic under a cluster bootstrap.

    Returns ``({statistic: (low, high)}, replicates used)``; see the module docstring for the methods.
    Replicates are drawn with ``default_rng(seed)`` and evaluated in chunks (memory bound).
    """
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be >= 1")
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    checked = clusters.checked(members.shape[0], nonmembers.shape[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS_PER_CHUNK // max(1, members.shape[0] + nonmembers.shape[0]))
    replicates: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        member_weights, nonmember_weights = cluster_weights(checked, method, rng, size)
        stats = weighted_statistics(
            members,
            nonmembers,
            member_weights,
            nonmember_weights,
            alphas=alphas,
            decision_threshold=decision_threshold,
        )
        for key, values in stats.items():
            replicates.setdefault(key, []).append(values)
    tail = (1.0 - CONFIDENCE_LEVEL) / 2.0 * 100.0
    intervals: dict[str, tuple[float, float]] = {}
    used = 0
    for key, parts in replicates.items():
        values = np.concatenate(parts)
        values = values[~np.isnan(values)]
        used = int(values.size)
        if values.size:
            intervals[key] = (float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail)))
    return intervals, used


def downsample_roc(curve: RocCurve, max_points: int = MAX_ROC_POINTS) -> dict[str, list[float | None]]:
    """At most ``max_points`` real ROC points, dense at low FPR, for log-log plotting.

    Grid: FPR = 0 plus ``max_points - 1`` log-spaced values from 1/N (the smallest non-zero FPR) to 1.
    For each grid value g the kept point is the last ROC point with FPR <= g (the TPR@g read-off), so the
    curve is the conservative staircase; duplicates are dropped. Threshold +inf (first point) is ``None``.
    """
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    count = curve.thresholds.shape[0]
    if count <= max_points:
        kept = np.arange(count)
    else:
        grid = np.logspace(math.log10(1.0 / curve.n_nonmembers), 0.0, max_points - 1)
        limits = np.floor(grid * curve.n_nonmembers * (1.0 + COUNT_TOLERANCE)).astype(np.int64)
        last = np.searchsorted(curve.false_positives, limits, side="right") - 1
        kept = np.unique(np.concatenate([[0], last]))
    thresholds: list[float | None] = [None if np.isinf(t) else float(t) for t in curve.thresholds[kept]]
    return {
        "fpr": [float(v) for v in curve.fpr[kept]],
        "tpr": [float(v) for v in curve.tpr[kept]],
        "thresholds": thresholds,
    }


def _interval(value: float, ci: tuple[float, float] | None) -> dict[str, float | None]:
    return {"value": value, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def attack_report(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    decision_threshold: float | None = None,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
    clusters: TrialClusters | None = None,
    cluster_method: str = DEFAULT_CLUSTER_METHOD,
) -> dict[str, Any]:
    """JSON-able metrics of one attacker's scores (larger = member) on members vs non-members.

    Keys: ``n_members``, ``n_nonmembers``, ``auc``, ``balanced_accuracy`` (best threshold),
    ``balanced_accuracy_at_decision`` (rule ``score > decision_threshold``; ``{"value": None, "reason"}``
    when ``decision_threshold`` is None), ``tpr_at_fpr`` ({alpha_key: interval or value None + reason}),
    ``roc`` (downsampled), ``interval`` (how the CIs were made: ``method``, ``n_bootstrap``,
    ``confidence_level``; with ``clusters`` also ``clusters`` (counts) and ``n_bootstrap_used``). Intervals
    are ``{"value", "ci_low", "ci_high"}``; CIs are None when ``n_bootstrap == 0``.

    ``clusters``: the model and example of every trial; given, the CIs come from ``cluster_bootstrap`` with
    ``cluster_method`` instead of the iid bootstrap (for trials pooled over models and examples).
    """
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    for alpha in alphas:
        _check_alpha(alpha)
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    if np.isnan(members).any() or np.isnan(nonmembers).any():
        raise ValueError("attack scores contain NaN")
    point = _statistics(members, nonmembers, alphas, decision_threshold)
    interval: dict[str, Any] = {"n_bootstrap": n_bootstrap, "confidence_level": CONFIDENCE_LEVEL}
    cis: dict[str, tuple[float, float]] = {}
    if clusters is None:
        interval["method"] = IID_METHOD_DESCRIPTION if n_bootstrap else None
        if n_bootstrap:
            cis = _bootstrap(members, nonmembers, alphas, decision_threshold, n_bootstrap, seed)
    else:
        if cluster_method not in CLUSTER_METHODS:
            raise ValueError(
                f"unknown bootstrap method {cluster_method!r}; available: {sorted(CLUSTER_METHODS)}"
            )
        checked = clusters.checked(members.shape[0], nonmembers.shape[0])
        interval.update(
            method=CLUSTER_METHODS[cluster_method] if n_bootstrap else None, clusters=checked.counts()
        )
        if n_bootstrap:
            cis, used = cluster_bootstrap(
                members,
                nonmembers,
                checked,
                method=cluster_method,
                alphas=alphas,
                decision_threshold=decision_threshold,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
            interval["n_bootstrap_used"] = used
    report: dict[str, Any] = {
        "n_members": int(members.shape[0]),
        "n_nonmembers": int(nonmembers.shape[0]),
        "auc": _interval(point["auc"], cis.get("auc")),
        "balanced_accuracy": _interval(point["balanced_accuracy"], cis.get("balanced_accuracy")),
    }
    if decision_threshold is None:
        report["balanced_accuracy_at_decision"] = {
            "value": None,
            "reason": "the threshold attacker has no decision threshold of its own; see balanced_accuracy",
        }
    else:
        key = "balanced_accuracy_at_decision"
        report[key] = _interval(point[key], cis.get(key))
    tprs: dict[str, dict[str, Any]] = {}
    for alpha in alphas:
        key = alpha_key(alpha)
        reason = tpr_guard_reason(alpha, int(nonmembers.shape[0]))
        tprs[key] = {"value": None, "reason": reason} if reason else _interval(point[key], cis.get(key))
    report["tpr_at_fpr"] = tprs
    report["roc"] = downsample_roc(_roc(members, nonmembers))
    report["interval"] = interval
    return report


# ================================================================================================
# Attackers and the population attack
# ================================================================================================


def _fit_svc() -> SVC:
    return SVC(C=SVC_C, kernel=SVC_KERNEL, gamma=SVC_GAMMA)


def _fit_logreg() -> LogisticRegression:
    return LogisticRegression()


FITTED_ATTACKERS: dict[str, Callable[[], SVC | LogisticRegression]] = {"svc": _fit_svc, "logreg": _fit_logreg}
ATTACKERS: tuple[str, ...] = ("threshold", *FITTED_ATTACKERS)


def fit_split(n_members: int, n_nonmembers: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified split: ``member_fit``, ``member_eval``, ``nonmember_fit``, ``nonmember_eval``.

    Each group is permuted with ``default_rng(seed)`` (members first) and its first
    ``max(1, floor(FIT_FRACTION * n))`` positions fit the attacker. Indices are returned sorted.
    """
    if n_members < MIN_PER_CLASS_FITTED or n_nonmembers < MIN_PER_CLASS_FITTED:
        raise ValueError(
            f"fitted attackers need >= {MIN_PER_CLASS_FITTED} members and non-members, "
            f"got {n_members} and {n_nonmembers}"
        )
    rng = np.random.default_rng(seed)
    split: dict[str, np.ndarray] = {}
    for group, size in (("member", n_members), ("nonmember", n_nonmembers)):
        order = rng.permutation(size)
        n_fit = max(1, math.floor(FIT_FRACTION * size))
        split[f"{group}_fit"] = np.sort(order[:n_fit])
        split[f"{group}_eval"] = np.sort(order[n_fit:])
    return split


def fitted_attack_scores(
    attacker: str,
    member_fit: np.ndarray,
    nonmember_fit: np.ndarray,
    member_eval: np.ndarray,
    nonmember_eval: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``attacker`` on 1-D fitting scores (member = 1); its decision_function on the evaluation sets."""
    if attacker not in FITTED_ATTACKERS:
        raise ValueError(f"unknown fitted attacker {attacker!r}; available: {sorted(FITTED_ATTACKERS)}")
    inputs = np.concatenate([member_fit, nonmember_fit])[:, None]
    targets = np.concatenate(
        [np.full(member_fit.shape[0], MEMBER), np.full(nonmember_fit.shape[0], NONMEMBER)]
    )
    model = FITTED_ATTACKERS[attacker]()
    model.fit(inputs, targets)
    # classes_ == [0, 1], so decision_function > 0 <=> predict() == 1 == member.
    return (
        np.asarray(model.decision_function(member_eval[:, None]), dtype=np.float64),
        np.asarray(model.decision_function(nonmember_eval[:, None]), dtype=np.float64),
    )


def population_attack(
    member_probs: np.ndarray,
    member_labels: np.ndarray,
    nonmember_probs: np.ndarray,
    nonmember_labels: np.ndarray,
    *,
    scores: Sequence[str] = tuple(SCORES),
    attackers: Sequence[str] = ATTACKERS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Every (score, attacker) population MIA on one model's outputs for members vs non-members.

    Returns a JSON-able dict::

        {
          "counts": {"members", "nonmembers",         # the *_fit / *_eval four only when a
                     "members_fit", "members_eval",    # fitted attacker (svc, logreg) runs
                     "nonmembers_fit", "nonmembers_eval"},
          "config": {"scores", "attackers", "alphas", "n_bootstrap", "seed", "confidence_level",
                     "fit_fraction", "min_false_positives_at_alpha"},
          "attacks": {score: {attacker: attack_report(...)}},
        }

    ``seed`` drives the fit/eval split and the bootstrap (the same bootstrap seed for every pair).
    """
    unknown_scores = sorted(set(scores) - set(SCORES))
    unknown_attackers = sorted(set(attackers) - set(ATTACKERS))
    if unknown_scores or unknown_attackers:
        raise ValueError(
            f"unknown scores {unknown_scores} / attackers {unknown_attackers}; "
            f"available: {sorted(SCORES)} / {list(ATTACKERS)}"
        )
    member_p, member_y = _check_probabilities(member_probs, member_labels)
    nonmember_p, nonmember_y = _check_probabilities(nonmember_probs, nonmember_labels)
    if member_p.shape[1] != nonmember_p.shape[1]:
        raise ValueError(f"class counts differ: {member_p.shape[1]} vs {nonmember_p.shape[1]}")
    n_members, n_nonmembers = member_y.shape[0], nonmember_y.shape[0]
    if n_members == 0 or n_nonmembers == 0:
        raise ValueError(f"population attack needs members and non-members, got {n_members}, {n_nonmembers}")
    counts = {"members": n_members, "nonmembers": n_nonmembers}
    uses_fit = any(name in FITTED_ATTACKERS for name in attackers)
    split = fit_split(n_members, n_nonmembers, seed) if uses_fit else None
    if split is not None:
        for group in ("member", "nonmember"):
            for part in ("fit", "eval"):
                counts[f"{group}s_{part}"] = int(split[f"{group}_{part}"].shape[0])

    results: dict[str, dict[str, Any]] = {}
    for score_name in scores:
        member_score = membership_score(score_name, member_p, member_y)
        nonmember_score = membership_score(score_name, nonmember_p, nonmember_y)
        results[score_name] = {}
        for attacker in attackers:
            if attacker == "threshold":
                evaluated, threshold = (member_score, nonmember_score), None
            else:
                assert split is not None
                evaluated = fitted_attack_scores(
                    attacker,
                    member_score[split["member_fit"]],
                    nonmember_score[split["nonmember_fit"]],
                    member_score[split["member_eval"]],
                    nonmember_score[split["nonmember_eval"]],
                )
                threshold = DECISION_THRESHOLD
            results[score_name][attacker] = attack_report(
                *evaluated, alphas=alphas, decision_threshold=threshold, n_bootstrap=n_bootstrap, seed=seed
            )
    return {
        "counts": counts,
        "config": {
            "scores": list(scores),
            "attackers": list(attackers),
            "alphas": [float(a) for a in alphas],
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "confidence_level": CONFIDENCE_LEVEL,
            "fit_fraction": FIT_FRACTION,
            "min_false_positives_at_alpha": MIN_FALSE_POSITIVES_AT_ALPHA,
        },
        "attacks": results,
    }
