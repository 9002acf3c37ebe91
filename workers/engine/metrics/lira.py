"""Per-example likelihood-ratio membership attacks: LiRA (online / offline) and U-LiRA.

Torch-free (numpy + scipy): this package is imported by the API process.

Unlike the population attacks in ``attacks.py`` (one rule for all examples), these attacks fit, *per
example* x, Gaussians to the logit-scaled confidence phi(x) = ln p_y - ln(1 - p_y) (``attacks.
logit_confidence``) observed under many shadow models, and score a target model's phi(x) against them
(peers.md §3.2, §3.3). Every score is oriented so that **larger = "more likely member"** and is finite,
so it can go straight into ``attacks.attack_report`` (which rejects NaN). Nothing here depends on what phi
is: for regression models the audit passes phi = -sqrt(|ŷ - y| / s) (``regression_scores.regression_phi``).

Fitting (``per_example_gaussians``), as the LiRA reference code (TF-Privacy ``mi_lira_2021/plot.py``):

- location = the **median** of the example's samples on one side (IN or OUT), not the mean;
- scale = their standard deviation (``ddof=0``, ``np.std``), floored at ``MIN_SCALE`` (1e-6). The reference
  adds 1e-30 instead; a floor that small turns a side whose samples are all equal (e.g. a saturated
  phi = 69.08 under every shadow) into log-densities of order 1e60, whose differences carry no digits. With
  1e-6 the log-density of any phi in [-69.08, 69.08] stays below 1e16 in magnitude, and no real fit is
  touched (phi spreads across models are many orders of magnitude wider);
- ``fixed_variance=True``: one global scale per side, the standard deviation of *all* that side's samples
  pooled over examples and models (as the reference: ``np.std`` of the whole IN or OUT matrix; note that it
  includes the between-example spread). Deviation: the reference's online fixed-variance branch uses the IN
  matrix for both sides (``std_out = np.std(dat_in)``), which looks like a slip; here each side uses its own
  samples;
- too few samples: an example with fewer than ``MIN_SAMPLES_FOR_SCALE`` (2) samples on a side gets that
  side's pooled scale (the fixed-variance value) instead of a degenerate 0; with no sample at all it also
  gets the side's pooled median as its location. So no NaN is ever produced; an example with no sample on a
  side is scored against the "typical" example of that side, which carries no example-specific signal.
  A side with no sample for *any* example is an error. The reference instead truncates every example to the
  smallest IN (and OUT) count over examples, which needs every example to have samples on both sides; here
  each example uses all of its samples.

Scores:

- online (``lira_online``): Lambda(x) = ln N(phi; mu_in, sigma_in^2) - ln N(phi; mu_out, sigma_out^2);
- offline (``lira_offline``): OUT models only, one-sided: -ln Pr[Z >= phi], Z ~ N(mu_out, sigma_out^2),
  i.e. minus the log of the upper-tail p-value of the test "phi is an OUT draw" (Carlini et al.'s offline
  test). Computed as ``-log_ndtr(-(phi - mu)/sigma)``, exact far into the tail. The released plot code ranks
  by the two-sided ``-ln N(phi; mu_out, sigma_out^2)`` instead, which would also flag phi far *below* the
  OUT distribution as a member; members have *higher* confidence, so the one-sided test is the right one;
- a target given as ``(T, n)`` (T target models, or T augmentations of one query) scores each row and
  averages the T scores per example, as the reference averages the per-augmentation log-ratios.

U-LiRA (``ulira_trials``, Hayes et al. 2024): P shadow pipelines share one forget set of n examples; each has
an unlearned model (trained with the forget set, then unlearned; the "member" world) and a retrained model
(trained without it; the "non-member" world). Leave-one-pipeline-out: for pipeline p, per-example Gaussians
are fitted on the other P - 1 pipelines' unlearned phi (member side) and retrained phi (non-member side),
and pipeline p's unlearned phi is a member trial and its retrained phi a non-member trial, each scored with
the online log-likelihood ratio. So every trial is scored by an attacker that never saw it. P >= 3 so
that each fit has >= 2 samples per side. Perfect unlearning gives AUC 0.5 (TPR = FPR).

Trials pooled this way are not independent: the n trials of one pipeline share its models, and the P
trials of one example share its difficulty. Their intervals need the cluster bootstrap of ``attacks.py``
with trial p * n + i in cluster (pipeline p, example i) (``attacks.TrialClusters``); the audit pipeline passes
those ids, and does the same for LiRA pooled over several target models (cluster = target model, example).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

MIN_SCALE = 1e-6  # floor on a fitted Gaussian scale (see module docstring)
MIN_SAMPLES_FOR_SCALE = 2  # fewer samples on a side -> that side's pooled (fixed-variance) scale
MIN_ULIRA_PIPELINES = 3  # leave-one-out then fits on >= 2 pipelines per side
HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


# ================================================================================================
# Input checks
# ================================================================================================


def _as_matrix(values: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (models x examples), got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean array, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return array


def _as_targets(target_phi: np.ndarray, n_examples: int) -> np.ndarray:
    """Target phi as (T, n): a 1-D (n,) input is one row."""
    targets = np.asarray(target_phi, dtype=np.float64)
    if targets.ndim == 1:
        targets = targets[None, :]
    if targets.ndim != 2 or targets.shape[1] != n_examples or targets.shape[0] == 0:
        raise ValueError(
            f"target_phi must have shape ({n_examples},) or (T, {n_examples}), got {targets.shape}"
        )
    if not np.isfinite(targets).all():
        raise ValueError("target_phi contains NaN or infinite values")
    return targets


# ================================================================================================
# Fitting
# ================================================================================================


def _pooled_gaussian(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Median and std (ddof=0) of every masked sample, pooled over models and examples."""
    pooled = values[mask]
    if pooled.size == 0:
        raise ValueError("no samples on this side for any example: cannot fit a Gaussian")
    return float(np.median(pooled)), float(np.std(pooled))


def per_example_gaussians(
    samples: np.ndarray, mask: np.ndarray | None = None, *, fixed_variance: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (location, scale) of ``samples`` (K models x n examples) over the rows where ``mask``.

    Location = median, scale = std (ddof=0) floored at ``MIN_SCALE``; ``mask=None`` uses every row.
    ``fixed_variance``: one pooled scale for all examples. Examples with < 2 masked samples get the pooled
    scale, with 0 also the pooled median (see the module docstring); the result never contains NaN.
    """
    values = _as_matrix(samples, "samples")
    selected = _as_mask(mask, values.shape, "mask")
    pooled_location, pooled_scale = _pooled_gaussian(values, selected)
    counts = selected.sum(axis=0)
    n_examples = values.shape[1]
    masked = np.where(selected, values, np.nan)

    location = np.full(n_examples, pooled_location)
    has_any = counts >= 1
    if has_any.any():
        location[has_any] = np.nanmedian(masked[:, has_any], axis=0)

    scale = np.full(n_examples, pooled_scale)
    if not fixed_variance:
        has_enough = counts >= MIN_SAMPLES_FOR_SCALE
        if has_enough.any():
            scale[has_enough] = np.nanstd(masked[:, has_enough], axis=0)
    floored: np.ndarray = np.maximum(scale, MIN_SCALE)
    return location, floored


def _gaussian_log_density(values: np.ndarray, location: np.ndarray, scale: np.ndarray) -> np.ndarray:
    standardized = (values - location) / scale
    density: np.ndarray = -0.5 * standardized**2 - np.log(scale) - HALF_LOG_TWO_PI
    return density


def gaussian_log_ratio(
    phi: np.ndarray,
    member_fit: tuple[np.ndarray, np.ndarray],
    nonmember_fit: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """ln N(phi; member fit) - ln N(phi; non-member fit), elementwise (broadcasts over leading axes)."""
    member_density = _gaussian_log_density(phi, *member_fit)
    nonmember_density = _gaussian_log_density(phi, *nonmember_fit)
    ratio: np.ndarray = member_density - nonmember_density
    return ratio


# ================================================================================================
# LiRA
# ================================================================================================


def _shadow_inputs(shadow_phi: np.ndarray, shadow_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = _as_matrix(shadow_phi, "shadow_phi")
    membership = _as_mask(shadow_in, values.shape, "shadow_in")
    return values, membership


def lira_online(
    target_phi: np.ndarray,
    shadow_phi: np.ndarray,
    shadow_in: np.ndarray,
    *,
    fixed_variance: bool = False,
) -> np.ndarray:
    """Online LiRA score per example (n,): ln N(phi; mu_in, s_in^2) - ln N(phi; mu_out, s_out^2).

    ``target_phi``: (n,) or (T, n) (per-row scores are averaged). ``shadow_phi``: (K, n) phi of every
    example under K shadow models; ``shadow_in`` (K, n) bool: whether the shadow trained on the example.
    Larger = member.
    """
    values, membership = _shadow_inputs(shadow_phi, shadow_in)
    targets = _as_targets(target_phi, values.shape[1])
    member_fit = per_example_gaussians(values, membership, fixed_variance=fixed_variance)
    nonmember_fit = per_example_gaussians(values, ~membership, fixed_variance=fixed_variance)
    scores: np.ndarray = gaussian_log_ratio(targets, member_fit, nonmember_fit).mean(axis=0)
    return scores


def lira_offline(
    target_phi: np.ndarray,
    shadow_phi: np.ndarray,
    shadow_in: np.ndarray,
    *,
    fixed_variance: bool = False,
) -> np.ndarray:
    """Offline LiRA score per example (n,): -ln Pr[Z >= phi], Z ~ N(mu_out, s_out^2) fitted on OUT shadows.

    Only the shadows with ``shadow_in == False`` are used (IN shadows may be absent altogether). One-sided:
    grows as phi lies further above the OUT Gaussian; ~0 when phi is far below it. (n,) or (T, n) targets
    as in ``lira_online``. Larger = member.
    """
    values, membership = _shadow_inputs(shadow_phi, shadow_in)
    targets = _as_targets(target_phi, values.shape[1])
    location, scale = per_example_gaussians(values, ~membership, fixed_variance=fixed_variance)
    upper_tail_log = log_ndtr(-(targets - location) / scale)
    scores: np.ndarray = (-upper_tail_log).mean(axis=0)
    return scores


# ================================================================================================
# U-LiRA
# ================================================================================================


def ulira_trials(
    unlearned_phi: np.ndarray,
    retrained_phi: np.ndarray,
    *,
    fixed_variance: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """U-LiRA trials with leave-one-pipeline-out: ``(member_scores, nonmember_scores)``, each (P * n,).

    ``unlearned_phi`` / ``retrained_phi``: (P, n) phi of the n forget examples under pipeline p's unlearned
    and retrained model. Trial ``p * n + i`` (pipeline-major) is example i of pipeline p, scored by the
    log-likelihood ratio of Gaussians fitted on the other P - 1 pipelines (unlearned = member side,
    retrained = non-member side); with ``fixed_variance`` the pooled scales also come from those P - 1.
    Feed the pair to ``attacks.attack_report``. Needs P >= 3.
    """
    unlearned = _as_matrix(unlearned_phi, "unlearned_phi")
    retrained = _as_matrix(retrained_phi, "retrained_phi")
    if unlearned.shape != retrained.shape:
        raise ValueError(
            f"unlearned_phi and retrained_phi shapes differ: {unlearned.shape} vs {retrained.shape}"
        )
    n_pipelines = unlearned.shape[0]
    if n_pipelines < MIN_ULIRA_PIPELINES:
        raise ValueError(f"U-LiRA needs >= {MIN_ULIRA_PIPELINES} shadow pipelines, got {n_pipelines}")
    member_scores = np.empty_like(unlearned)
    nonmember_scores = np.empty_like(retrained)
    for held_out in range(n_pipelines):
        others = np.arange(n_pipelines) != held_out
        member_fit = per_example_gaussians(unlearned[others], fixed_variance=fixed_variance)
        nonmember_fit = per_example_gaussians(retrained[others], fixed_variance=fixed_variance)
        member_scores[held_out] = gaussian_log_ratio(unlearned[held_out], member_fit, nonmember_fit)
        nonmember_scores[held_out] = gaussian_log_ratio(retrained[held_out], member_fit, nonmember_fit)
    return member_scores.reshape(-1), nonmember_scores.reshape(-1)
