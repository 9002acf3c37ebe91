from __future__ import annotations

import json

import numpy as np
import pytest

from workers.engine.metrics.attacks import auc
from workers.engine.metrics.rmia import (
    OFFLINE_A_GRID,
    offline_marginal,
    rmia_offline,
    tune_offline_a,
    tuning_population,
)

# Hand case: one reference model, two target points, three population points.
TARGET_PX = np.array([0.9, 0.2])
REFERENCE_PX = np.array([[0.5, 0.4]])
TARGET_PZ = np.array([0.3, 0.6, 0.8])
REFERENCE_PZ = np.array([[0.3, 0.4, 0.4]])


def _brute_force(
    target_px: np.ndarray,
    reference_px: np.ndarray,
    target_pz: np.ndarray,
    reference_pz: np.ndarray,
    a: float,
    gamma: float,
    mask: np.ndarray,
) -> np.ndarray:
    """Test oracle: every LR(x, z) explicitly (O(n m))."""
    out_mean_x = (reference_px * mask).sum(axis=0) / mask.sum(axis=0)
    marginal_x = (1 + a) / 2 * out_mean_x + (1 - a) / 2
    marginal_z = (1 + a) / 2 * reference_pz.mean(axis=0) + (1 - a) / 2
    ratios = (target_px / marginal_x)[:, None] / (target_pz / marginal_z)[None, :]
    result: np.ndarray = (ratios >= gamma).mean(axis=1)
    return result


def test_hand_case_score_fractions() -> None:
    # a = 1: P = the reference itself. r(x) = [1.8, 0.5], r(z) = [1, 1.5, 2].
    scores = rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=1.0)
    assert scores == pytest.approx([2.0 / 3.0, 0.0])
    # gamma = 1.1: x0 beats z iff r(z) <= 1.8 / 1.1 = 1.64 -> 2 of 3; gamma = 1.3: r(z) <= 1.38 -> 1 of 3.
    for gamma, expected in ((1.1, [2.0 / 3.0, 0.0]), (1.3, [1.0 / 3.0, 0.0])):
        scores = rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=1.0, gamma=gamma)
        assert scores == pytest.approx(expected)
    # a = 0: P = (P_ref + 1) / 2 -> P(x) = [0.75, 0.7], P(z) = [0.65, 0.7, 0.7];
    # r(x) = [1.2, 0.286], r(z) = [0.46, 0.86, 1.14].
    scores = rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=0.0)
    assert scores == pytest.approx([1.0, 0.0])
    # a = 0.5: P(x) = 0.75 * [0.5, 0.4] + 0.25 = [0.625, 0.55], P(z) = [0.475, 0.55, 0.55];
    # r(x) = [1.44, 0.364], r(z) = [0.632, 1.091, 1.455]: x0 beats 2 (1.44 < 1.455), x1 none.
    scores = rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=0.5)
    assert scores == pytest.approx([2.0 / 3.0, 0.0])


def test_ties_count_as_beaten() -> None:
    # LR(x, z) = 1 exactly: counted (>= gamma), unlike Privacy Meter's strict "> 1".
    scores = rmia_offline(np.array([0.5]), np.array([[0.5]]), np.array([0.5]), np.array([[0.5]]), a=1.0)
    assert scores == pytest.approx([1.0])


def test_a_one_is_the_plain_average_and_mask_averages_out_references_only() -> None:
    reference = np.array([[0.2, 0.6], [0.4, 0.9], [0.9, 0.3]])
    assert offline_marginal(reference, a=1.0) == pytest.approx(reference.mean(axis=0))
    assert offline_marginal(reference, a=0.0) == pytest.approx((reference.mean(axis=0) + 1.0) / 2.0)
    assert offline_marginal(reference, a=0.4) == pytest.approx(0.7 * reference.mean(axis=0) + 0.3)
    mask = np.array([[True, False], [True, True], [False, False]])
    assert offline_marginal(reference, a=1.0, reference_mask=mask) == pytest.approx([0.3, 0.9])
    with pytest.raises(ValueError, match="no OUT reference"):
        offline_marginal(reference, a=1.0, reference_mask=np.zeros((3, 2), dtype=bool))


@pytest.mark.parametrize(("a", "gamma"), [(1.0, 1.0), (0.3, 1.0), (0.7, 1.5), (0.0, 0.8)])
def test_sorted_count_matches_the_pairwise_definition(a: float, gamma: float) -> None:
    rng = np.random.default_rng(3)
    n_points, n_population, n_references = 40, 57, 4
    reference_px = rng.uniform(0.01, 1.0, (n_references, n_points))
    reference_pz = rng.uniform(0.01, 1.0, (n_references, n_population))
    target_px = rng.uniform(0.01, 1.0, n_points)
    target_pz = rng.uniform(0.01, 1.0, n_population)
    mask = rng.random((n_references, n_points)) < 0.6
    mask[0] = True  # every point has an OUT reference
    expected = _brute_force(target_px, reference_px, target_pz, reference_pz, a, gamma, mask)
    scores = rmia_offline(
        target_px, reference_px, target_pz, reference_pz, a=a, gamma=gamma, reference_mask=mask
    )
    assert scores == pytest.approx(expected)


def test_underflowed_reference_probability_stays_finite() -> None:
    scores = rmia_offline(
        np.array([0.0, 1.0]), np.array([[0.0, 0.0]]), np.array([0.0]), np.array([[0.0]]), a=1.0
    )
    assert scores == pytest.approx([1.0, 1.0])


def _tuning_references(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difficulty-dominated signals: members get a 5 % boost; only a = 1 cancels the difficulty exactly."""
    n_references, n_points, n_population = 4, 300, 200
    difficulty_x = rng.uniform(0.1, 0.9, n_points)
    difficulty_z = rng.uniform(0.1, 0.9, n_population)
    out = rng.random((n_references, n_points)) < 0.5
    reference_px = difficulty_x * np.where(out, 1.0, 1.05)
    # Population points: OUT everywhere; a little target-side noise makes r(z) spread around 1.
    reference_pz = np.tile(difficulty_z, (n_references, 1)) * rng.uniform(
        0.98, 1.04, (n_references, n_population)
    )
    return reference_px, reference_pz, out


def test_tune_offline_a_picks_the_grid_value_with_the_best_auc() -> None:
    reference_px, reference_pz, out = _tuning_references(np.random.default_rng(4))
    best_a, aucs = tune_offline_a(reference_px, reference_pz, out)
    assert list(aucs) == list(OFFLINE_A_GRID) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert best_a == 1.0
    assert aucs[best_a] == max(aucs.values()) > 0.95
    assert aucs[0.0] < 0.7
    json.dumps(aucs)

    # The AUC of the pseudo-target attack at a = 0.5, recomputed directly.
    others = [1, 2, 3]
    usable = out[others].any(axis=0)
    scores = rmia_offline(
        reference_px[0, usable],
        reference_px[others][:, usable],
        reference_pz[0],
        reference_pz[others],
        a=0.5,
        reference_mask=out[others][:, usable],
    )
    assert aucs[0.5] == pytest.approx(auc(scores, ~out[0, usable]))


def test_tuning_population_excludes_the_shadows_in_points() -> None:
    # A population drawn from the references' own pool: each z is IN for about half of them.
    rng = np.random.default_rng(6)
    reference_px, reference_pz, out = _tuning_references(rng)
    population_out = rng.random(reference_pz.shape) < 0.5
    kept = tuning_population(population_out, reference_pz.shape, 0)
    assert population_out[0, kept].all() and population_out[1:, kept].any(axis=0).all()
    assert set(kept) == set(np.flatnonzero(population_out[0] & population_out[1:].any(axis=0)))
    best_a, aucs = tune_offline_a(reference_px, reference_pz, out, population_mask=population_out)
    # Whatever any reference scored on a z it trained on cannot change the tuning: overwrite every IN
    # entry (the pseudo-target's and the others') with a member-like certainty.
    tampered = np.where(population_out, reference_pz, 1.0)
    assert tune_offline_a(reference_px, tampered, out, population_mask=population_out) == (best_a, aucs)
    # Without the mask the IN entries are used (the bias the mask removes): the AUCs move.
    assert tune_offline_a(reference_px, tampered, out)[1] != aucs
    # The tuning attack equals the direct one on the kept population with OUT-only P(z).
    others = [1, 2, 3]
    usable = out[others].any(axis=0)
    scores = rmia_offline(
        reference_px[0, usable],
        reference_px[others][:, usable],
        reference_pz[0, kept],
        reference_pz[others][:, kept],
        a=0.3,
        reference_mask=out[others][:, usable],
        population_mask=population_out[others][:, kept],
    )
    assert aucs[0.3] == pytest.approx(auc(scores, ~out[0, usable]))
    with pytest.raises(ValueError, match="no population point"):
        tuning_population(np.zeros((4, 5), dtype=bool), (4, 5), 0)


def test_tune_offline_a_ties_keep_the_first_value_and_inputs_are_checked() -> None:
    reference_px, reference_pz, out = _tuning_references(np.random.default_rng(5))
    best_a, aucs = tune_offline_a(reference_px, reference_pz, out, grid=(1.0, 1.0))
    assert best_a == 1.0 and list(aucs) == [1.0]
    # Complementary halves with two references: the other one is never OUT for the pseudo-target's
    # non-members, so no non-member can be scored offline.
    pair_mask = np.array([[True, False, True, False], [False, True, False, True]])
    with pytest.raises(ValueError, match="need both"):
        tune_offline_a(np.full((2, 4), 0.5), np.full((2, 3), 0.5), pair_mask)
    with pytest.raises(ValueError, match=">= 2 reference"):
        tune_offline_a(np.full((1, 4), 0.5), np.full((1, 3), 0.5), np.ones((1, 4), dtype=bool))
    with pytest.raises(ValueError, match="pseudo_target"):
        tune_offline_a(reference_px, reference_pz, out, pseudo_target=9)


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=1.5)
    with pytest.raises(ValueError, match="gamma"):
        rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=1.0, gamma=0.0)
    with pytest.raises(ValueError, match="probabilities"):
        rmia_offline(TARGET_PX * 2.0, REFERENCE_PX, TARGET_PZ, REFERENCE_PZ, a=1.0)
    with pytest.raises(ValueError, match="shapes"):
        rmia_offline(TARGET_PX, REFERENCE_PX, TARGET_PZ[:2], REFERENCE_PZ, a=1.0)
