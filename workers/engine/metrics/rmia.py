"""Offline RMIA (Zarifzadeh, Liu, Shokri, ICML 2024) as in Privacy Meter, and its ``a`` tuning.

Torch-free (numpy only; the AUC comes from ``attacks.auc``): this package is imported by the API process.

Inputs are probabilities of the true label, Pr(x | f) = softmax(f(x))_y (``attacks.true_class_confidence``),
for target points x (n of them) and population points z (m of them, known non-members of every model),
under the target model f and under R reference models (peers.md §3.4). For regression models the audit
passes the Laplace tail probability exp(-|ŷ - y| / b) instead, also in (0, 1] and 1 at a perfect fit
(``regression_scores.laplace_tail_probability``).

- Marginal (offline, OUT references only): P(x) = ((1 + a) / 2) * P_out(x) + (1 - a) / 2, where
  P_out(x) is the mean of Pr(x | f_ref) over the reference models that did **not** train on x. The offline
  approximation P_in(x) ~ a * P_out(x) + (1 - a) turns the paper's P(x) = (P_in + P_out) / 2 into this.
  a = 1 gives the plain average of the OUT references; a = 0 gives (P_out(x) + 1) / 2 (it assumes the IN
  models fit every training point perfectly, P_in = 1).
- ``reference_mask`` (R, n) bool, True where reference r is OUT for x; ``None`` means every reference is
  OUT for every x (e.g. references retrained without the forget set). Only OUT entries enter P_out(x); a
  point with no OUT reference is an error here. (Privacy Meter's single-reference rule instead inverts an
  IN signal as P_out ~ (P_in - (1 - a)) / a, which is undefined at a = 0, where it substitutes 0.3, and can
  go negative; with several references it averages its top-k OUT signals padded with zeros.) Population
  points are OUT for every reference, as in Privacy Meter, unless ``population_mask`` (R, m) says which
  references are OUT for each z; then P(z) averages those only (a population drawn from the same pool
  as the references' training halves, as in the audit).
- Likelihood ratio: LR(x, z) = (Pr(x | f) / P(x)) / (Pr(z | f) / P(z)).
- Score(x) = fraction of population points z with LR(x, z) >= gamma (gamma = 1 by default), larger =
  member. Privacy Meter's code uses a strict ``> 1``; the paper's definition (and this module) uses
  ``>=``. The two differ only on exact ties.
- Computation: with r(.) = Pr(. | f) / P(.), LR(x, z) >= gamma <=> r(z) <= r(x) / gamma, so the score is
  ``searchsorted(sort(r(z)), r(x) / gamma, "right") / m``: O((n + m) log m), no n x m matrix.
- Numerics: P(.) is floored at ``PROBABILITY_FLOOR`` (1e-30, as ``attacks.LOG_FLOOR``) so that a = 1 with
  an underflowed reference probability gives a large finite ratio rather than inf or 0/0.

Tuning (``tune_offline_a``), Privacy Meter's procedure: for each a on the grid {0, 0.1, ..., 1.0}, attack
one reference model (the pseudo-target, whose membership is known from ``reference_mask``) with the other
R - 1 references and the population, and keep the a with the largest AUC (the first one on ties, as the
reference's strict ``>`` update). Privacy Meter attacks the target's *paired* model (trained on the
complementary half); here the caller names the pseudo-target. Points with no OUT reference among the other
R - 1 cannot be scored offline and are left out of the tuning attack. The population must be non-members
of the model attacked: when the caller's population points were training points of some references
(``population_mask``), the tuning attack keeps only the z the pseudo-target did not train on, and computes
P(z) from the other references that did not train on z either. (Deviation from Privacy Meter, whose
population is disjoint from every reference's training data; with references trained on halves of one
pool, tuning on a population that is IN for about half of them compares members with members and biases
``a``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workers.engine.metrics.attacks import auc

DEFAULT_GAMMA = 1.0
OFFLINE_A_GRID: tuple[float, ...] = tuple(round(step / 10, 1) for step in range(11))  # 0.0, 0.1, ..., 1.0
PROBABILITY_FLOOR = 1e-30  # floor on the marginal P(.), as attacks.LOG_FLOOR
MIN_TUNING_REFERENCES = 2  # one pseudo-target plus at least one reference


# ================================================================================================
# Input checks
# ================================================================================================


def _as_probabilities(values: np.ndarray, ndim: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if not np.isfinite(array).all() or (array.size and (array.min() < 0.0 or array.max() > 1.0)):
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    return array


def _check_a(a: float) -> None:
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"offline coefficient a must be in [0, 1], got {a}")


def _check_gamma(gamma: float) -> None:
    if not (gamma > 0.0 and np.isfinite(gamma)):
        raise ValueError(f"gamma must be a positive finite number, got {gamma}")


def _as_reference_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    array = np.asarray(mask)
    if array.dtype != np.bool_ or array.shape != shape:
        raise ValueError(
            f"reference_mask must be a boolean array of shape {shape}, got {array.dtype} {array.shape}"
        )
    return array


# ================================================================================================
# Offline RMIA
# ================================================================================================


def offline_marginal(
    reference_p: np.ndarray, *, a: float, reference_mask: np.ndarray | None = None
) -> np.ndarray:
    """P(x) = ((1 + a) / 2) * mean_{OUT refs} Pr(x | f_ref) + (1 - a) / 2, floored at PROBABILITY_FLOOR.

    ``reference_p``: (R, n); ``reference_mask``: (R, n) bool, True = reference is OUT for the point
    (``None``: all OUT). Every point needs at least one OUT reference.
    """
    _check_a(a)
    probabilities = _as_probabilities(reference_p, 2, "reference probabilities")
    if probabilities.shape[0] == 0:
        raise ValueError("offline RMIA needs at least one reference model")
    out = _as_reference_mask(reference_mask, probabilities.shape)
    counts = out.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(
            f"{int((counts == 0).sum())} point(s) have no OUT reference model; offline RMIA needs one"
        )
    out_mean = np.where(out, probabilities, 0.0).sum(axis=0) / counts
    marginal: np.ndarray = np.maximum((1.0 + a) / 2.0 * out_mean + (1.0 - a) / 2.0, PROBABILITY_FLOOR)
    return marginal


def rmia_offline(
    target_px: np.ndarray,
    reference_px: np.ndarray,
    target_pz: np.ndarray,
    reference_pz: np.ndarray,
    *,
    a: float,
    gamma: float = DEFAULT_GAMMA,
    reference_mask: np.ndarray | None = None,
    population_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Offline RMIA score per target point (n,) in [0, 1]: the fraction of z with LR(x, z) >= gamma.

    ``target_px`` (n,) / ``target_pz`` (m,): Pr(. | f) under the target model; ``reference_px`` (R, n) /
    ``reference_pz`` (R, m): under the R reference models; ``reference_mask`` (R, n): True where a reference
    is OUT for x (``None``: all OUT); ``population_mask`` (R, m) likewise for z (``None``: every population
    point is OUT for every reference). The target model must not have trained on z. Larger = member.
    """
    _check_gamma(gamma)
    px = _as_probabilities(target_px, 1, "target_px")
    pz = _as_probabilities(target_pz, 1, "target_pz")
    ref_x = _as_probabilities(reference_px, 2, "reference_px")
    ref_z = _as_probabilities(reference_pz, 2, "reference_pz")
    if ref_x.shape[1:] != px.shape or ref_z.shape[1:] != pz.shape or ref_x.shape[0] != ref_z.shape[0]:
        raise ValueError(
            f"shapes do not match: target_px {px.shape}, reference_px {ref_x.shape}, "
            f"target_pz {pz.shape}, reference_pz {ref_z.shape}"
        )
    if pz.shape[0] == 0:
        raise ValueError("offline RMIA needs at least one population point")
    ratio_x = px / offline_marginal(ref_x, a=a, reference_mask=reference_mask)
    ratio_z = np.sort(pz / offline_marginal(ref_z, a=a, reference_mask=population_mask))
    beaten = np.searchsorted(ratio_z, ratio_x / gamma, side="right")
    scores: np.ndarray = beaten / pz.shape[0]
    return scores


def tuning_population(
    population_mask: np.ndarray | None, shape: tuple[int, ...], pseudo_target: int
) -> np.ndarray:
    """Indices of the population points the tuning attack on ``pseudo_target`` may use: those it did not
    train on that also have an OUT reference among the others (all of them when ``population_mask`` is
    None)."""
    out = _as_reference_mask(population_mask, shape)
    others = np.arange(shape[0]) != pseudo_target
    kept = np.flatnonzero(out[pseudo_target] & out[others].any(axis=0))
    if kept.size == 0:
        raise ValueError(
            f"no population point is OUT for pseudo-target {pseudo_target} and another reference"
        )
    return kept


def tune_offline_a(
    reference_px: np.ndarray,
    reference_pz: np.ndarray,
    reference_mask: np.ndarray,
    *,
    pseudo_target: int = 0,
    gamma: float = DEFAULT_GAMMA,
    grid: Sequence[float] = OFFLINE_A_GRID,
    population_mask: np.ndarray | None = None,
) -> tuple[float, dict[float, float]]:
    """Grid-search a by attacking reference ``pseudo_target`` with the others; ``(best a, {a: AUC})``.

    ``reference_mask`` (R, n) bool is required: True where reference r is OUT for x, so the pseudo-target's
    members are the points where its entry is False. Points with no OUT reference among the other R - 1
    are left out; what remains must contain members and non-members of the pseudo-target. Ties keep the
    smallest a (first on the grid). ``population_mask`` (R, m) bool, True where reference r is OUT for
    population point z (``None``: the population is OUT for every reference): only the z that are OUT for
    the pseudo-target and for at least one other reference enter the tuning attack, and their P(z) uses
    the other references' OUT entries only (``tuning_population`` gives the kept z).
    """
    ref_x = _as_probabilities(reference_px, 2, "reference_px")
    ref_z = _as_probabilities(reference_pz, 2, "reference_pz")
    n_references = ref_x.shape[0]
    if n_references < MIN_TUNING_REFERENCES or ref_z.shape[0] != n_references:
        raise ValueError(
            f"tuning needs >= {MIN_TUNING_REFERENCES} reference models with both x and z probabilities, "
            f"got {ref_x.shape[0]} and {ref_z.shape[0]}"
        )
    out = _as_reference_mask(reference_mask, ref_x.shape)
    if not 0 <= pseudo_target < n_references:
        raise ValueError(f"pseudo_target must be in [0, {n_references}), got {pseudo_target}")
    if not grid:
        raise ValueError("the grid of a values is empty")
    others = np.arange(n_references) != pseudo_target
    population = tuning_population(population_mask, ref_z.shape, pseudo_target)
    population_out = _as_reference_mask(population_mask, ref_z.shape)[others][:, population]
    usable = out[others].any(axis=0)
    is_member = ~out[pseudo_target][usable]
    if is_member.all() or not is_member.any():
        raise ValueError(
            "after leaving out points with no OUT reference, the pseudo-target has "
            f"{int(is_member.sum())} members and {int((~is_member).sum())} non-members; need both"
        )
    aucs: dict[float, float] = {}
    best_a, best_auc = float(grid[0]), -np.inf
    for a in grid:
        scores = rmia_offline(
            ref_x[pseudo_target, usable],
            ref_x[others][:, usable],
            ref_z[pseudo_target, population],
            ref_z[others][:, population],
            a=float(a),
            gamma=gamma,
            reference_mask=out[others][:, usable],
            population_mask=population_out,
        )
        aucs[float(a)] = auc(scores, is_member)
        if aucs[float(a)] > best_auc:
            best_a, best_auc = float(a), aucs[float(a)]
    return best_a, aucs
