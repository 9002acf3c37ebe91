"""Per-example scores that let the privacy audit's attacks (U-LiRA, Kaggle ε, LiRA, RMIA) judge regression
models, and the regression counterpart of ``nonmembers.select_nonmembers``. Torch-free (numpy + scipy).

There is no reference for membership audits of regression unlearning (Deep Regression Unlearning,
blindspot_sfd.md §1.6, only runs a population SVC on the L1 loss), so every choice here is Lethe's own:

**φ (LiRA, U-LiRA, Kaggle)**: ``φ = -sqrt(|ŷ - y| / s)``, larger = better fit = "more likely member", as the
logit-scaled confidence of a classifier. Why the square root of the L1 error (the training loss): LiRA and
U-LiRA fit one Gaussian per example and side over shadow models, and the Kaggle rules assume nothing, so
the score should be as close to Gaussian across shadows as possible without losing power. Measured with
``bench/audit_regression_phi.py`` (K = 64 shadows on random halves of the pool; share of examples whose
IN / OUT samples Shapiro-Wilk rejects at 5 %, ideally 0.05; leave-one-shadow-out online LiRA):

======================  ==============================  =======================================
score                   diabetes (MLP): SW IN / OUT,    procedural_regression (MLP, noisy train
                        LiRA AUC, TPR@1 %FPR            targets): SW IN / OUT, AUC, TPR@1 %
======================  ==============================  =======================================
-|e|                    0.52 / 0.26, 0.729, 0.052       0.51 / 0.23, 0.695, 0.040
-sqrt|e| (chosen)       0.25 / 0.18, 0.730, 0.058       0.20 / 0.15, 0.696, 0.045
-|e|^(2/3)              0.36 / 0.12, 0.731, 0.055       0.28 / 0.10, 0.697, 0.043
-ln|e|                  0.69 / 0.64, 0.711, 0.068       0.68 / 0.67, 0.676, 0.050
logit exp(-|e|/b)       0.52 / 0.45, 0.711, 0.068       0.45 / 0.42, 0.682, 0.049
======================  ==============================  =======================================

Diabetes is real tabular data whose irreducible noise keeps most errors far from 0 (where ``|e|`` of a
Gaussian prediction is itself near-Gaussian); procedural_regression with noisy train targets lets a model
memorise, so IN errors sit near 0, where ``|e|`` folds into a half-normal (skewed) and ``ln|e|`` has a long
tail. The square root is a normalising transform between the two regimes: the fewest Gaussian rejections on
the members' side (the side that folds), the same AUC as ``-|e|``, and a TPR at 1 % FPR between ``-|e|`` and
the log (which gains there from its tail, not from a better fit). ``s`` is the dataset's target scale
(``target_scale``: mean absolute deviation of the training targets from their median, the MAE of the best
constant predictor), the same for every model, so φ is unit-free (a user's targets in [0, 1] or in
thousands give the same φ) while staying a fixed monotone transform of the error: LiRA and U-LiRA are
invariant to the scale, and the Kaggle rules' grid (100 thresholds per unit of φ, ``metrics/kaggle.py``)
gets a resolution independent of the target units: φ ∈ [-1.8, 0] on both datasets above, and with 8 models
trained on everything plus 8 retrained without the forget set (targets <= 100 / <= 30), the pooled span of
an example's 16 φ values gives the grid a median of 58 (diabetes) and 45 (procedural_regression) single
thresholds, 10th-90th percentile 11-93: of the order of the 2N samples the rules separate.

**Pr(x | θ) (RMIA)**: ``exp(-|ŷ - y| / b_θ)``, the probability that a Laplace(ŷ, b_θ) variable lies at least
``|e|`` from ŷ, i.e. the Laplace density (the likelihood behind the L1 loss) divided by its maximum. It is
in (0, 1] and equals 1 at a perfect fit, which keeps the meaning of offline RMIA's
``P_IN ≈ a·P_OUT + (1 - a)`` (a = 0: IN models fit their points perfectly); a raw density would exceed 1
for a small scale and break that approximation. ``b_θ`` is the model's own scale (the maximum-likelihood
Laplace scale, its mean absolute error) on the test points it did not train on (``laplace_scales``): the
whole test split for the original, unlearned and retrained models, the OUT half for a pool shadow, so a
shadow's scale is not shrunk by points it memorised. A per-model scale plays the part of a classifier's own
calibration: an overall worse model is less sure of every point. It makes no measurable difference to
RMIA's power against a single scale shared by all models (same bench, a = 1, leave-one-shadow-out: AUC
0.725 vs 0.728 on diabetes, 0.700 vs 0.701 on procedural_regression).

**Kaggle utility ratios**: the released score multiplies by (RA_U / RA_R) · (TA_U / TA_R), accuracies where
higher is better. For regression the audit uses ``MAE_R / MAE_U`` per split (retain, test), mean MAE over
the N models of each side: 1 when the unlearned models are as accurate as the retrains, below 1 when worse,
as the accuracy ratio (``kaggle.kaggle_score(..., utility="mae")``).

**Non-members** (``regression_nonmembers``), the counterpart of ``nonmembers.select_nonmembers``: LiRA and
RMIA compare members (the forget set) with test non-members, which only measures membership when both come
from one target distribution. A target-range forget set (every training sample with a target in [low, high],
``regression.target_range``) takes the test samples whose target lies in that range
(``forgotten_range_test``); fewer than ``nonmembers.MIN_NONMEMBERS`` of them: no attack, with the reason.
Any other forget set: the whole test split (``test_split``) unless a two-sample Kolmogorov-Smirnov test of
the targets rejects at ``TARGET_SHIFT_P_VALUE`` (as the classification rule's chi-square); then no attack,
with the reason (a target-matched subsample, the analogue of the label-matched one, is not built: a
continuous target has no classes to match, and a skewed hand-picked set is better audited by U-LiRA).
Limitation, measured on diabetes (forget = targets <= 100): inside the range the two sides still differ by
chance (the 35 test samples' targets average 76, the 113 forget samples' 69; KS p = 0.07), and a model that
never saw the range (the retrain control) extrapolates from targets > 100, so its error grows as the target
falls: the forget samples look the worse fitted, and LiRA / RMIA against the retrains read AUC 0.42 / 0.39
(intervals [0.31, 0.55] / [0.30, 0.47]), below chance rather than at it. An AUC below 0.5 is therefore no
evidence of anything on a target-range forget set; only one above 0.5 is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import ks_2samp

from workers.engine.metrics.nonmembers import MIN_NONMEMBERS
from workers.engine.metrics.regression import in_range, target_range

TARGET_SHIFT_P_VALUE = 1e-3  # as nonmembers.LABEL_SHIFT_P_VALUE
# A scale of 0 (constant targets, or a model that fits every held-out point exactly) would make the scores
# undefined; this relative floor keeps them finite without touching any real scale.
RELATIVE_SCALE_FLOOR = 1e-9
UNIT_SCALE = 1.0  # the unit used when every target is equal (no spread to measure)
RegressionNonMemberRule = Literal["test_split", "forgotten_range_test"]


def target_scale(train_targets: np.ndarray) -> float:
    """Mean absolute deviation of the training targets from their median (the MAE of the best constant
    predictor): φ's unit. 1 when every target is equal."""
    targets = np.asarray(train_targets, dtype=np.float64)
    scale = float(np.mean(np.abs(targets - np.median(targets))))
    return scale if scale > 0.0 else UNIT_SCALE


def absolute_errors(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """|ŷ - y| per model and point, (K, N) from predictions (K, N) and targets (N,), in float64."""
    return np.abs(np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64))


def regression_phi(errors: np.ndarray, scale: float) -> np.ndarray:
    """φ = -sqrt(|e| / s): the audit's per-example regression score (larger = better fit = member)."""
    if not scale > 0.0:
        raise ValueError(f"the target scale must be positive, got {scale}")
    phi: np.ndarray = -np.sqrt(np.asarray(errors, dtype=np.float64) / scale)
    return phi


def laplace_scales(errors: np.ndarray, held_out: np.ndarray, floor: float) -> np.ndarray:
    """Per model (K,), the Laplace scale b = mean |e| over the points the model did not train on
    (``held_out`` (K, N) bool), floored at ``floor``. Every model needs a held-out point."""
    values = np.asarray(errors, dtype=np.float64)
    mask = np.asarray(held_out, dtype=bool)
    if mask.shape != values.shape:
        raise ValueError(f"held_out must have shape {values.shape}, got {mask.shape}")
    counts = mask.sum(axis=1)
    if (counts == 0).any():
        raise ValueError("every model needs at least one held-out point to estimate its Laplace scale")
    scales: np.ndarray = np.maximum(np.where(mask, values, 0.0).sum(axis=1) / counts, floor)
    return scales


def laplace_tail_probability(errors: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Pr(x | θ) = exp(-|e| / b_θ) per model and point, in (0, 1]: the Laplace(ŷ, b_θ) probability of an
    error at least as large as the observed one (RMIA's probability of the true target)."""
    values = np.asarray(errors, dtype=np.float64)
    b = np.asarray(scales, dtype=np.float64)
    if b.shape != values.shape[:1] or not (b > 0.0).all():
        raise ValueError(f"scales must be positive with shape {values.shape[:1]}, got {b.shape}")
    probability: np.ndarray = np.exp(-values / b[:, None])
    return probability


@dataclass(frozen=True)
class RegressionNonMembers:
    """The chosen non-members (indices into the test split), or ``None`` with the reason none fit; the same
    interface as ``nonmembers.NonMembers``."""

    rule: RegressionNonMemberRule
    indices: np.ndarray | None
    description: str
    reason: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "n": None if self.indices is None else int(self.indices.size),
            "description": self.description,
            "reason": self.reason,
        }


def regression_nonmembers(
    train_targets: np.ndarray, forget_indices: np.ndarray, test_targets: np.ndarray, *, detect_range: bool
) -> RegressionNonMembers:
    """Test non-members from the forget set's target distribution (rules in the module docstring).
    ``detect_range``: whether a forget set that is exactly a target range counts as one (a random draw of a
    handful of samples can be one by accident)."""
    forget = np.asarray(forget_indices, dtype=np.int64)
    test = np.asarray(test_targets, dtype=np.float64)
    bounds = target_range(train_targets, forget) if detect_range else None
    if bounds is not None:
        low, high = (None if np.isinf(bound) else float(bound) for bound in bounds)
        description = (
            f"test samples with a target in the forgotten range [{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}] (members and non-members share the target range)"
        )
        indices = np.flatnonzero(in_range(test, bounds))
        if indices.size < MIN_NONMEMBERS:
            return RegressionNonMembers(
                "forgotten_range_test",
                None,
                description,
                f"the test split has {indices.size} samples in the forgotten target range; an attack on a "
                f"target-range forget set needs >= {MIN_NONMEMBERS} of them (other targets would measure "
                "the target, not membership)",
            )
        return RegressionNonMembers("forgotten_range_test", indices, description)
    if forget.size == 0:
        return RegressionNonMembers("test_split", None, "no members", "the forget set is empty")
    members = np.asarray(train_targets, dtype=np.float64)[forget]
    p_value = float(ks_2samp(members, test).pvalue)
    if p_value < TARGET_SHIFT_P_VALUE:
        return RegressionNonMembers(
            "test_split",
            None,
            "the whole test split",
            f"the forget set's targets differ from the test split's (Kolmogorov-Smirnov p = {p_value:.2g} < "
            f"{TARGET_SHIFT_P_VALUE:g}) and it is not a target range: no test samples share its target "
            "distribution",
        )
    return RegressionNonMembers(
        "test_split",
        np.arange(test.size),
        "the whole test split (its target distribution is compatible with the forget set's)",
    )


__all__ = [
    "RegressionNonMembers",
    "absolute_errors",
    "laplace_scales",
    "laplace_tail_probability",
    "regression_nonmembers",
    "regression_phi",
    "target_scale",
]
