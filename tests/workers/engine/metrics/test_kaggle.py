from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workers.engine.metrics.kaggle import (
    DELTA,
    EPSILON_CAP,
    _rule_epsilons,
    _unclipped_epsilon,
    epsilon_points,
    example_epsilon,
    forgetting_quality,
    kaggle_score,
    n_point_bins,
    points_cap,
    relative_to_ceiling,
    small_n_warning,
)

# Hand case, N = 4, equal ranges (3): retrained (larger median) is the positive class.
# Best surviving rules have FPR = FNR = 1/4 (e.g. "positive iff phi >= 2.2": retrained {2.5, 3.5, 4.5}
# and unlearned {3}), so epsilon = ln((1 - delta - 1/4) / (1/4)) ~ 1.0986: bin [1, 1.5), 2/2^3 points.
# "phi >= 3.2" has FPR = 0 and FNR = 1/2: were it not discarded, epsilon would be inf.
HAND_UNLEARNED = np.array([0.0, 1.0, 2.0, 3.0])
HAND_RETRAINED = np.array([1.5, 2.5, 3.5, 4.5])
HAND_EPSILON = math.log(1.0 - DELTA - 0.25) - math.log(0.25)


def _released_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> float:
    """Test oracle: the released rule families evaluated by brute-force broadcasting (no sorting)."""
    if np.median(retrained) > np.median(unlearned):
        positive, negative = retrained, unlearned
    else:
        positive, negative = unlearned, retrained
    positive_range, negative_range = np.ptp(positive), np.ptp(negative)
    largest, smallest = max(positive_range, negative_range), min(positive_range, negative_range)
    if largest > 0 and smallest / largest < 0.01:
        return 50.0
    # Interval rules: the peakier sample (the negative one on equal ranges) is predicted inside [l, r].
    peaky, other = (negative, positive) if positive_range >= negative_range else (positive, negative)
    low, high = peaky.min() + smallest - 2.0, peaky.max() + 2.0
    rights = np.linspace(low, high, math.ceil((high - low) * 100))
    lefts = np.concatenate([np.linspace(r - smallest - 2.0, r - smallest + 2.0, 400) for r in rights])
    rights_flat = np.repeat(rights, 400)

    def inside(values: np.ndarray) -> np.ndarray:
        return (lefts[None, :] <= values[:, None]) & (values[:, None] <= rights_flat[None, :])

    tpr = [inside(peaky).mean(axis=0)]
    fpr = [inside(other).mean(axis=0)]
    pooled = np.concatenate([positive, negative])
    thresholds = np.linspace(pooled.min(), pooled.max(), math.ceil((pooled.max() - pooled.min()) * 100))
    tpr.append((positive[:, None] >= thresholds[None, :]).mean(axis=0))
    fpr.append((negative[:, None] >= thresholds[None, :]).mean(axis=0))
    tp_rate, fp_rate = np.concatenate(tpr), np.concatenate(fpr)
    fn_rate = 1.0 - tp_rate
    best = -1.0
    for fp_value, fn_value in zip(fp_rate, fn_rate, strict=True):
        if fp_value == 0 and fn_value == 0:
            best = math.inf
            continue
        if fp_value == 0 or fn_value == 0:
            continue
        terms = []
        if 1 - delta - fp_value > 0:
            terms.append(math.log(1 - delta - fp_value) - math.log(fn_value))
        if 1 - delta - fn_value > 0:
            terms.append(math.log(1 - delta - fn_value) - math.log(fp_value))
        if terms:
            best = max(best, max(max(terms), 0.0))
    return min(max(best, 0.0), 50.0)


# ------------------------------------------------------------------------------------- per example


def test_hand_computed_epsilon_lands_in_the_third_bin() -> None:
    epsilon = example_epsilon(HAND_UNLEARNED, HAND_RETRAINED)
    assert epsilon == pytest.approx(HAND_EPSILON, abs=1e-12)
    assert 1.0 <= epsilon < 1.5
    assert points_cap(4) == 2.0  # ceil(ln 3)
    assert epsilon_points(epsilon, 4) == 0.25  # 2 / 2^3


def test_interval_rule_decides_for_a_narrow_negative_sample() -> None:
    # Retrained (median 1.025) is the positive class; the unlearned sample is the peakier one (range 0.6 vs
    # 6, above the 1 % cap), so the interval rules predict "unlearned" inside [l, r]. [-0.3, 0.1] holds 3
    # unlearned and 1 retrained (0.05): FPR = FNR = 1/4 -> ln 3. Single thresholds reach only ln 2.
    unlearned = np.array([-0.3, -0.1, 0.1, 0.3])
    retrained = np.array([-3.0, 0.05, 2.0, 3.0])
    assert example_epsilon(unlearned, retrained) == pytest.approx(HAND_EPSILON, abs=1e-12)


def test_rule_epsilon_special_cases() -> None:
    # N = 4 per side: (TP, FP) = (4, 0) perfect -> inf; (2, 0) and (4, 1) one zero -> discarded (NaN);
    # (3, 1) -> ln((1 - delta - 1/4) / (1/4)); (1, 1) -> both terms slightly negative -> 0;
    # (2, 4): FPR = 1, so only the second term ln(1 - delta - 1/2) - ln 1 < 0 counts -> 0.
    epsilons = _rule_epsilons(np.array([4, 2, 4, 3, 1, 2]), np.array([0, 0, 1, 1, 1, 4]), 4, 4, DELTA)
    assert epsilons[0] == math.inf
    assert np.isnan(epsilons[1]) and np.isnan(epsilons[2])
    assert epsilons[3] == pytest.approx(HAND_EPSILON, abs=1e-12)
    assert epsilons[4] == 0.0 and epsilons[5] == 0.0


def test_perfect_separation_is_infinite_and_scores_nothing() -> None:
    unlearned = np.array([0.0, 0.5, 1.0, 1.5])
    retrained = unlearned + 10.0
    assert _unclipped_epsilon(retrained, unlearned, DELTA) == math.inf
    epsilon = example_epsilon(unlearned, retrained)
    assert epsilon == EPSILON_CAP  # inf clipped to the cap
    assert epsilon_points(epsilon, 4) == 0.0


def test_narrow_distribution_gets_the_cap() -> None:
    retrained = np.array([0.0, 1.0, 2.0, 3.0])
    unlearned = np.array([1.0, 1.0, 1.0299, 1.0])  # range 0.0299 < 1 % of 3
    assert example_epsilon(unlearned, retrained) == EPSILON_CAP
    assert epsilon_points(EPSILON_CAP, 512) == 0.0
    # At 1 % the sweep runs; its epsilon here is finite and below the cap.
    at_ratio = np.array([1.0, 1.0, 1.03, 1.0])
    assert example_epsilon(at_ratio, retrained) < EPSILON_CAP


def test_identical_samples_have_zero_epsilon() -> None:
    values = np.array([0.3, -1.0, 2.0, 0.7, 1.1, -0.4])
    assert example_epsilon(values, values.copy()) == 0.0
    # Both constant and equal: no rule survives (the released code asserts); epsilon 0 here.
    assert example_epsilon(np.full(5, 2.0), np.full(5, 2.0)) == 0.0


def test_constant_but_different_samples_are_perfectly_separated() -> None:
    assert example_epsilon(np.full(5, 1.0), np.full(5, 3.0)) == EPSILON_CAP


@pytest.mark.parametrize(
    ("seed", "shift", "spread"), [(0, 0.5, 1.0), (1, 1.5, 0.5), (2, 0.0, 2.0), (3, -0.8, 1.0), (4, 0.2, 0.3)]
)
def test_matches_brute_force_transcription(seed: int, shift: float, spread: float) -> None:
    rng = np.random.default_rng(seed)
    unlearned = rng.normal(shift, spread, size=12)
    retrained = rng.normal(0.0, 1.0, size=12)
    assert example_epsilon(unlearned, retrained) == pytest.approx(
        _released_epsilon(unlearned, retrained), abs=1e-12
    )


def test_example_epsilon_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        example_epsilon(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        example_epsilon(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="delta"):
        example_epsilon(np.zeros(3), np.zeros(3), delta=1.0)


# ------------------------------------------------------------------------------------------ points


@pytest.mark.parametrize(
    ("epsilon", "points"),
    [
        (0.0, 1.0),
        (0.4999, 1.0),
        (0.5, 0.5),
        (1.2, 0.25),
        (6.5, 2.0**-13),
        (6.999, 2.0**-13),
        (7.0, 0.0),
        (EPSILON_CAP, 0.0),
        (math.inf, 0.0),
    ],
)
def test_points_at_512_models(epsilon: float, points: float) -> None:
    assert points_cap(512) == 7.0
    assert n_point_bins(512) == 14
    assert epsilon_points(epsilon, 512) == points


def test_points_cap_depends_on_the_number_of_models() -> None:
    assert points_cap(3) == 1.0 and n_point_bins(3) == 2  # ceil(ln 2)
    assert points_cap(2) == 0.0 and epsilon_points(0.0, 2) == 0.0  # ln 1 = 0: nothing scores
    with pytest.raises(ValueError, match=">= 2 models"):
        points_cap(1)
    with pytest.raises(ValueError, match=">= 0"):
        epsilon_points(-0.1, 512)


# ---------------------------------------------------------------------------- quality and the score


def test_forgetting_quality_and_final_score() -> None:
    # Example 0: the hand case (0.25 points); example 1: perfectly separated (0 points). F = 0.125.
    unlearned = np.stack([HAND_UNLEARNED, np.array([0.0, 0.5, 1.0, 1.5])], axis=1)
    retrained = np.stack([HAND_RETRAINED, np.array([10.0, 10.5, 11.0, 11.5])], axis=1)
    quality = forgetting_quality(unlearned, retrained)
    assert quality["epsilons"] == pytest.approx([HAND_EPSILON, EPSILON_CAP])
    assert list(quality["points"]) == [0.25, 0.0]
    assert quality["forgetting_quality"] == 0.125

    report = kaggle_score(
        unlearned,
        retrained,
        retain_accuracy_unlearned=np.array([0.7, 0.9, 0.8, 0.8]),  # mean 0.8
        retain_accuracy_retrained=np.array([0.9, 0.9, 0.9, 0.9]),  # mean 0.9
        test_accuracy_unlearned=np.array([0.5, 0.7, 0.6, 0.6]),  # mean 0.6
        test_accuracy_retrained=np.array([0.75, 0.75, 0.75, 0.75]),  # mean 0.75
    )
    assert report["retain_accuracy_ratio"] == pytest.approx(0.8 / 0.9)
    assert report["test_accuracy_ratio"] == pytest.approx(0.8)
    assert report["score"] == pytest.approx(0.125 * (0.8 / 0.9) * 0.8)
    histogram = report["epsilon_histogram"]
    assert histogram["bin_edges"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert histogram["counts"] == [0, 0, 1, 0]
    assert histogram["points"] == [1.0, 0.5, 0.25, 0.125]
    assert histogram["beyond_cap"] == 1 and histogram["at_epsilon_cap"] == 1
    assert report["n_models"] == 4 and report["n_examples"] == 2 and report["points_cap"] == 2.0
    assert report["delta"] == DELTA and report["epsilon_cap"] == EPSILON_CAP
    json.dumps(report, allow_nan=False)


def test_same_distribution_scores_well_and_shifted_scores_badly() -> None:
    rng = np.random.default_rng(7)
    retrained = rng.normal(size=(64, 6))
    same = forgetting_quality(rng.normal(size=(64, 6)), retrained)
    shifted = forgetting_quality(rng.normal(size=(64, 6)) + 12.0, retrained)
    assert same["forgetting_quality"] > 0.1
    assert shifted["forgetting_quality"] == 0.0
    assert np.all(same["epsilons"] < shifted["epsilons"])


def test_score_rejects_bad_shapes_and_zero_accuracy() -> None:
    phi = np.zeros((4, 2))
    ones = np.ones(4)
    with pytest.raises(ValueError, match="N models"):
        forgetting_quality(phi, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=">= 2 models"):
        forgetting_quality(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="retain accuracy must be > 0"):
        kaggle_score(phi, phi, ones, np.zeros(4), ones, ones)


def test_small_n_warning_explains_the_cap_below_128_models() -> None:
    warning = small_n_warning(16)
    assert warning is not None
    assert "N = 16" in warning and "ceil(ln(N - 1)) = 3" in warning and "512" in warning
    assert "6 bins instead of 14" in warning and "calibration ceiling" in warning
    assert small_n_warning(127) is not None
    assert small_n_warning(128) is None and small_n_warning(512) is None


def test_relative_to_ceiling() -> None:
    assert relative_to_ceiling(0.1, 0.2) == pytest.approx(0.5)
    assert relative_to_ceiling(0.0, 0.0) is None
