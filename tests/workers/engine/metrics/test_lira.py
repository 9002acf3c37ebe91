from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from workers.engine.metrics.attacks import attack_report, auc
from workers.engine.metrics.lira import (
    MIN_SCALE,
    lira_offline,
    lira_online,
    per_example_gaussians,
    ulira_trials,
)

# Three shadows, two examples.
SHADOW_PHI = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 30.0]])


def _synthetic_shadows(
    rng: np.random.Generator, n_models: int, n_examples: int, shift: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phi = per-example difficulty + shift if IN + noise; each shadow trains on a random half."""
    difficulty = rng.normal(0.0, 3.0, n_examples)
    membership = rng.random((n_models, n_examples)) < 0.5
    phi = difficulty + shift * membership + rng.normal(0.0, 0.5, (n_models, n_examples))
    return phi, membership, difficulty


# ------------------------------------------------------------------------------------------ fitting


def test_per_example_gaussians_by_hand() -> None:
    location, scale = per_example_gaussians(SHADOW_PHI)
    assert location == pytest.approx([2.0, 20.0])  # medians
    assert scale == pytest.approx([np.std([1.0, 2.0, 4.0]), np.std([10.0, 20.0, 30.0])])

    mask = np.array([[True, True], [True, False], [False, True]])
    location, scale = per_example_gaussians(SHADOW_PHI, mask)
    assert location == pytest.approx([1.5, 20.0])
    assert scale == pytest.approx([0.5, 10.0])


def test_fixed_variance_uses_the_pooled_std_of_the_side() -> None:
    mask = np.array([[True, True], [True, False], [False, True]])
    location, scale = per_example_gaussians(SHADOW_PHI, mask, fixed_variance=True)
    assert location == pytest.approx([1.5, 20.0])
    assert scale == pytest.approx([np.std([1.0, 2.0, 10.0, 30.0])] * 2)


def test_scale_floor_and_few_sample_fallbacks() -> None:
    constant = np.array([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0]])
    assert per_example_gaussians(constant)[1][0] == MIN_SCALE

    samples = np.array([[1.0, 7.0], [3.0, 8.0], [9.0, 9.0]])
    with pytest.raises(ValueError, match="no samples"):
        per_example_gaussians(samples, np.zeros((3, 2), dtype=bool))
    # Example 0: {1, 3}; example 1: no sample -> the pooled median and std of {1, 3}.
    mask = np.array([[True, False], [True, False], [False, False]])
    location, scale = per_example_gaussians(samples, mask)
    assert location == pytest.approx([2.0, 2.0])
    assert scale == pytest.approx([1.0, 1.0])
    # Example 0: {1} only -> its own location, the pooled std of {1, 7, 8}.
    mask = np.array([[True, True], [False, True], [False, False]])
    location, scale = per_example_gaussians(samples, mask)
    assert location[0] == 1.0
    assert scale[0] == pytest.approx(np.std([1.0, 7.0, 8.0]))


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="boolean"):
        per_example_gaussians(SHADOW_PHI, np.ones((3, 2), dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        per_example_gaussians(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="target_phi"):
        lira_online(np.zeros(3), SHADOW_PHI, np.ones((3, 2), dtype=bool))


# --------------------------------------------------------------------------------------------- LiRA


def test_online_score_is_the_gaussian_log_ratio() -> None:
    shadow_in = np.array([[True, False], [True, True], [False, True], [False, False]])
    shadow_phi = np.array([[3.0, 0.0], [5.0, 2.0], [0.0, 4.0], [1.0, -1.0]])
    target = np.array([4.0, 1.5])
    expected = [
        norm.logpdf(4.0, 4.0, 1.0) - norm.logpdf(4.0, 0.5, 0.5),
        norm.logpdf(1.5, 3.0, 1.0) - norm.logpdf(1.5, -0.5, 0.5),
    ]
    assert lira_online(target, shadow_phi, shadow_in) == pytest.approx(expected)

    # Two target rows: the per-row scores are averaged.
    rows = np.array([[4.0, 1.5], [2.0, 3.0]])
    first = lira_online(rows[0], shadow_phi, shadow_in)
    second = lira_online(rows[1], shadow_phi, shadow_in)
    assert lira_online(rows, shadow_phi, shadow_in) == pytest.approx((first + second) / 2.0)

    # Fixed variance: one pooled std per side.
    in_std, out_std = np.std([3.0, 5.0, 2.0, 4.0]), np.std([0.0, 1.0, 0.0, -1.0])
    fixed = lira_online(target, shadow_phi, shadow_in, fixed_variance=True)
    assert fixed[0] == pytest.approx(norm.logpdf(4.0, 4.0, in_std) - norm.logpdf(4.0, 0.5, out_std))


def test_offline_score_is_the_one_sided_tail() -> None:
    shadow_in = np.array([[True, False], [False, False], [False, True], [False, False]])
    shadow_phi = np.array([[9.0, 0.0], [1.0, 2.0], [2.0, 9.0], [3.0, 4.0]])  # OUT: {1, 2, 3}, {0, 2, 4}
    target = np.array([2.5, 30.0])
    expected = [
        -norm.logsf(2.5, 2.0, np.std([1.0, 2.0, 3.0])),
        -norm.logsf(30.0, 2.0, np.std([0.0, 2.0, 4.0])),
    ]
    scores = lira_offline(target, shadow_phi, shadow_in)
    assert scores == pytest.approx(expected)
    assert np.isfinite(scores).all() and scores[1] > 100.0  # far in the tail, still exact
    # One-sided: monotone increasing in phi, ~0 far below the OUT Gaussian.
    grid = np.linspace(-20.0, 20.0, 41)
    ladder = np.array([lira_offline(np.array([v, v]), shadow_phi, shadow_in)[0] for v in grid])
    assert np.all(np.diff(ladder) > 0) and ladder[0] < 1e-9


def test_online_lira_beats_a_global_threshold_on_synthetic_shadows() -> None:
    rng = np.random.default_rng(0)
    shadow_phi, shadow_in, difficulty = _synthetic_shadows(rng, 16, 400, shift=1.5)
    target_in = rng.random(400) < 0.5
    target_phi = difficulty + 1.5 * target_in + rng.normal(0.0, 0.5, 400)

    online = auc(lira_online(target_phi, shadow_phi, shadow_in), target_in)
    fixed = auc(lira_online(target_phi, shadow_phi, shadow_in, fixed_variance=True), target_in)
    offline = auc(lira_offline(target_phi, shadow_phi, shadow_in), target_in)
    global_threshold = auc(target_phi, target_in)
    assert online > 0.9 and offline > 0.85
    assert fixed > 0.9
    assert global_threshold < 0.7


# -------------------------------------------------------------------------------------------- U-LiRA


def test_ulira_leave_one_out_by_hand() -> None:
    unlearned = np.array([[1.0], [2.0], [4.0]])
    retrained = np.array([[0.0], [1.0], [-1.0]])
    members, nonmembers = ulira_trials(unlearned, retrained)
    # Pipeline 0: fit on pipelines 1 and 2 -> unlearned N(3, 1), retrained N(0, 1) (median of two = mean).
    assert members[0] == pytest.approx(norm.logpdf(1.0, 3.0, 1.0) - norm.logpdf(1.0, 0.0, 1.0))
    assert nonmembers[0] == pytest.approx(norm.logpdf(0.0, 3.0, 1.0) - norm.logpdf(0.0, 0.0, 1.0))
    # Pipeline 2: fit on pipelines 0 and 1 -> unlearned N(1.5, 0.5), retrained N(0.5, 0.5).
    assert members[2] == pytest.approx(norm.logpdf(4.0, 1.5, 0.5) - norm.logpdf(4.0, 0.5, 0.5))


def test_ulira_trial_layout_is_pipeline_major() -> None:
    rng = np.random.default_rng(1)
    unlearned, retrained = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    members, nonmembers = ulira_trials(unlearned, retrained)
    assert members.shape == nonmembers.shape == (12,)
    others = [0, 1, 3]
    fit_in = (np.median(unlearned[others, 1]), np.std(unlearned[others, 1]))
    fit_out = (np.median(retrained[others, 1]), np.std(retrained[others, 1]))
    value = unlearned[2, 1]
    assert members[2 * 3 + 1] == pytest.approx(norm.logpdf(value, *fit_in) - norm.logpdf(value, *fit_out))


def test_ulira_perfect_unlearning_is_a_coin_flip_and_no_unlearning_is_not() -> None:
    rng = np.random.default_rng(2)
    n_pipelines, n_examples = 8, 150
    difficulty = rng.normal(0.0, 3.0, n_examples)
    retrained = difficulty + rng.normal(0.0, 1.0, (n_pipelines, n_examples))
    perfect = difficulty + rng.normal(0.0, 1.0, (n_pipelines, n_examples))
    leaky = difficulty + 3.0 + rng.normal(0.0, 1.0, (n_pipelines, n_examples))

    report = attack_report(*ulira_trials(perfect, retrained), n_bootstrap=0)
    assert report["n_members"] == report["n_nonmembers"] == n_pipelines * n_examples
    assert abs(report["auc"]["value"] - 0.5) < 0.05
    leaky_report = attack_report(*ulira_trials(leaky, retrained), n_bootstrap=0)
    assert leaky_report["auc"]["value"] > 0.95
    fixed_report = attack_report(*ulira_trials(leaky, retrained, fixed_variance=True), n_bootstrap=0)
    assert fixed_report["auc"]["value"] > 0.95


def test_ulira_needs_three_pipelines_and_matching_shapes() -> None:
    with pytest.raises(ValueError, match=">= 3"):
        ulira_trials(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shapes differ"):
        ulira_trials(np.zeros((3, 4)), np.zeros((3, 5)))


def test_degenerate_shadows_give_finite_scores() -> None:
    # A saturated example (identical phi everywhere) and one with a single IN shadow stay finite.
    shadow_phi = np.array([[69.0, 1.0], [69.0, 2.0], [69.0, 3.0]])
    shadow_in = np.array([[True, True], [False, False], [True, False]])
    scores = lira_online(np.array([69.0, 2.5]), shadow_phi, shadow_in)
    assert np.isfinite(scores).all()
    scores = lira_online(np.array([60.0, 2.5]), shadow_phi, shadow_in)
    assert np.isfinite(scores).all()
