from __future__ import annotations

import json
import math

import numpy as np
import pytest

from workers.engine.metrics.attacks import (
    ATTACKERS,
    LOG_FLOOR,
    SCORES,
    attack_report,
    auc,
    best_balanced_accuracy,
    bootstrap_interval,
    cross_entropy_loss,
    decision_balanced_accuracy,
    downsample_roc,
    fit_split,
    logit_confidence,
    membership_score,
    modified_entropy,
    population_attack,
    prediction_entropy,
    required_nonmembers,
    roc_curve,
    tpr_at_fpr,
    tpr_guard_reason,
    true_class_confidence,
)

# Three samples, three classes: a confident right answer, a hesitant one, a confidently wrong one.
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.0, 0.5, 0.5]])
LABELS = np.array([0, 2, 0])
FLOOR_LN = math.log(LOG_FLOOR)

# ROC hand case with ties: members {3, 2, 2}, non-members {2, 1}.
TIED_SCORES = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
TIED_MEMBER = np.array([True, True, True, False, False])


def _synthetic_probs(rng: np.random.Generator, count: int, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of random logits with the true label boosted by ``sharpness`` (members: large)."""
    labels = rng.integers(0, 3, count)
    logits = rng.normal(size=(count, 3))
    logits[np.arange(count), labels] += sharpness
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True), labels


# ---------------------------------------------------------------------------------------------- scores


def test_loss_and_confidence_by_hand() -> None:
    assert np.allclose(cross_entropy_loss(PROBS, LABELS), [-math.log(0.7), -math.log(0.3), -FLOOR_LN])
    assert np.allclose(true_class_confidence(PROBS, LABELS), [0.7, 0.3, 0.0])


def test_entropy_by_hand() -> None:
    expected = [
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
        -(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3)),
        math.log(2.0),  # 0 log 0 = 0
    ]
    assert np.allclose(prediction_entropy(PROBS, LABELS), expected)


def test_modified_entropy_by_hand() -> None:
    # -(1 - p_y) ln p_y - sum_{k != y} p_k ln(1 - p_k)
    expected = [
        -0.3 * math.log(0.7) - (0.2 * math.log(0.8) + 0.1 * math.log(0.9)),
        -0.7 * math.log(0.3) - (0.1 * math.log(0.9) + 0.6 * math.log(0.4)),
        -1.0 * FLOOR_LN - (0.5 * math.log(0.5) + 0.5 * math.log(0.5)),  # p_y = 0: ln p_y hits the floor
    ]
    assert np.allclose(modified_entropy(PROBS, LABELS), expected)


def test_modified_entropy_matches_direct_formula_on_random_rows() -> None:
    probs, labels = _synthetic_probs(np.random.default_rng(1), 20, 2.0)
    direct = []
    for row, label in zip(probs, labels, strict=True):
        value = -(1.0 - row[label]) * math.log(row[label])
        value -= sum(row[k] * math.log(1.0 - row[k]) for k in range(3) if k != label)
        direct.append(value)
    assert np.allclose(modified_entropy(probs, labels), direct, rtol=1e-12)


def test_logit_confidence_by_hand_and_at_the_extremes() -> None:
    assert np.allclose(logit_confidence(PROBS[:2], LABELS[:2]), [math.log(0.7 / 0.3), math.log(0.3 / 0.7)])
    # p_y -> 1: 1 - p_y is taken from the other classes, so no cancellation (naive 1 - p_y is off by 1e-4).
    near_one = np.array([[1.0 - 1e-12, 6e-13, 4e-13]])
    expected = math.log1p(-1e-12) - math.log(1e-12)
    assert logit_confidence(near_one, np.array([0]))[0] == pytest.approx(expected, rel=1e-14)
    # p_y = 1 - 1e-20 is stored as 1.0, yet phi still resolves it: ln(1 / 1e-20).
    stored_as_one = np.array([[1.0, 1e-20, 0.0]])
    assert logit_confidence(stored_as_one, np.array([0]))[0] == pytest.approx(-math.log(1e-20), rel=1e-14)
    # p_y -> 0: ln(1 - p_y) = log1p(-p_y).
    near_zero = np.array([[1e-15, 0.5, 0.5 - 1e-15]])
    expected = math.log(1e-15) - math.log1p(-1e-15)
    assert logit_confidence(near_zero, np.array([0]))[0] == pytest.approx(expected, rel=1e-14)
    # Exact 0 and 1: finite, +-ln(1e30) through the floor, no warnings.
    with np.errstate(all="raise"):
        extremes = logit_confidence(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([0, 0]))
    assert np.allclose(extremes, [-FLOOR_LN, FLOOR_LN])


def test_score_orientation_larger_means_member() -> None:
    confident = np.array([[0.9, 0.05, 0.05]])
    unsure = np.array([[0.4, 0.3, 0.3]])
    label = np.array([0])
    for name in SCORES:
        assert membership_score(name, confident, label)[0] > membership_score(name, unsure, label)[0], name
    assert membership_score("loss", PROBS, LABELS) == pytest.approx(-cross_entropy_loss(PROBS, LABELS))
    assert membership_score("entropy", PROBS, LABELS) == pytest.approx(-prediction_entropy(PROBS, LABELS))
    with pytest.raises(ValueError, match="unknown score"):
        membership_score("nope", PROBS, LABELS)


# ------------------------------------------------------------------------------------------- ROC / AUC


def test_roc_by_hand_with_ties() -> None:
    curve = roc_curve(TIED_SCORES, TIED_MEMBER)
    assert list(curve.thresholds) == [np.inf, 3.0, 2.0, 1.0]  # one point per distinct score
    assert np.allclose(curve.fpr, [0.0, 0.0, 0.5, 1.0])
    assert np.allclose(curve.tpr, [0.0, 1 / 3, 1.0, 1.0])
    # Pairs: 3>2, 3>1, 2=2 (1/2), 2>1, 2=2 (1/2), 2>1 -> 5 of 6.
    assert auc(TIED_SCORES, TIED_MEMBER) == pytest.approx(5 / 6)
    # Balanced accuracy per point: 0.5, 2/3, 0.75, 0.5.
    assert best_balanced_accuracy(TIED_SCORES, TIED_MEMBER) == pytest.approx(0.75)
    # "member iff score > 2": TPR 1/3, TNR 1.
    assert decision_balanced_accuracy(TIED_SCORES, TIED_MEMBER, 2.0) == pytest.approx(2 / 3)


def test_auc_perfect_reversed_and_identical() -> None:
    member = np.array([True] * 4 + [False] * 4)
    separated = np.array([5.0, 6, 7, 8, 1, 2, 3, 4])
    assert auc(separated, member) == 1.0
    assert auc(-separated, member) == 0.0
    assert auc(np.ones(8), member) == 0.5
    rng = np.random.default_rng(0)
    scores = rng.normal(size=600)
    random_member = np.arange(600) < 300
    report = attack_report(scores[:300], scores[300:], alphas=(), n_bootstrap=100, seed=0)
    assert report["auc"]["ci_low"] < 0.5 < report["auc"]["ci_high"]
    assert auc(scores, random_member) == pytest.approx(report["auc"]["value"])


# ------------------------------------------------------------------------------------------ low FPR


def test_tpr_at_low_fpr_read_off_by_hand() -> None:
    nonmembers = np.arange(1000, dtype=float)  # FPR(tau) = #{non-members >= tau} / 1000
    members = np.array([1000.5, 998.5, 990.5, 500.0])
    scores = np.concatenate([members, nonmembers])
    is_member = np.arange(scores.size) < members.size
    # FPR <= 1 %: at most 10 false positives, tau = 990 -> members 1000.5, 998.5, 990.5.
    assert tpr_at_fpr(scores, is_member, 0.01) == pytest.approx(0.75)
    # FPR <= 0.1 %: at most 1 false positive; tau = 998.5 admits only 999 -> members 1000.5, 998.5.
    assert tpr_at_fpr(scores, is_member, 0.001) == pytest.approx(0.5)
    # FPR <= 0.05 %: no false positive at all; tau = 1000.5 -> member 1000.5 alone.
    assert tpr_at_fpr(scores, is_member, 0.0005) == pytest.approx(0.25)
    # Reversed, every member lies below the top non-member: only the empty threshold qualifies.
    assert tpr_at_fpr(-scores, is_member, 0.0005) == 0.0
    assert tpr_at_fpr(TIED_SCORES, TIED_MEMBER, 0.4) == pytest.approx(1 / 3)
    assert tpr_at_fpr(TIED_SCORES, TIED_MEMBER, 0.5) == pytest.approx(1.0)


def test_sample_size_guard() -> None:
    assert required_nonmembers(0.01) == 1000
    assert required_nonmembers(0.001) == 10000
    assert tpr_guard_reason(0.01, 1000) is None
    assert tpr_guard_reason(0.001, 360) == "needs >= 10000 non-members for TPR@0.1%FPR, have 360"
    members = np.linspace(0.0, 2.0, 50)
    below = attack_report(members, np.linspace(0, 1, 999), n_bootstrap=0)["tpr_at_fpr"]
    assert below["0.01"] == {"value": None, "reason": "needs >= 1000 non-members for TPR@1%FPR, have 999"}
    assert below["0.001"]["value"] is None
    at = attack_report(members, np.linspace(0, 1, 1000), n_bootstrap=20)["tpr_at_fpr"]
    assert at["0.01"]["value"] == pytest.approx(0.5)  # members > 1 are above every non-member
    assert at["0.01"]["ci_low"] is not None
    assert at["0.001"]["value"] is None


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_contains_estimate_and_shrinks() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for count in (60, 2000):
        members, nonmembers = rng.normal(0.5, 1.0, count), rng.normal(0.0, 1.0, count)
        report = attack_report(members, nonmembers, alphas=(), n_bootstrap=100, seed=0)
        for key in ("auc", "balanced_accuracy"):
            assert report[key]["ci_low"] <= report[key]["value"] <= report[key]["ci_high"], key
        widths.append(report["auc"]["ci_high"] - report["auc"]["ci_low"])
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(n): sqrt(2000 / 60) = 5.8


def test_bootstrap_interval_generic_statistic_is_seeded() -> None:
    scores = np.random.default_rng(4).normal(size=200)
    member = np.arange(200) < 80
    first = bootstrap_interval(scores, member, auc, n_bootstrap=50, seed=7)
    assert first == bootstrap_interval(scores, member, auc, n_bootstrap=50, seed=7)
    assert first[0] <= auc(scores, member) <= first[1]


# ------------------------------------------------------------------------------------------ ROC curve


def test_downsampled_roc_keeps_low_fpr_and_end_points() -> None:
    rng = np.random.default_rng(5)
    curve = roc_curve(rng.normal(size=6000), np.arange(6000) < 1000)
    points = downsample_roc(curve)
    fpr, tpr = np.array(points["fpr"]), np.array(points["tpr"])
    assert len(fpr) <= 200
    assert (fpr[0], tpr[0], points["thresholds"][0]) == (0.0, 0.0, None)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # Log grid: the first decade of FPR (1 to 10 false positives) is kept point by point.
    assert np.allclose(fpr[:11], np.arange(11) / 5000)
    assert np.sum(fpr <= 0.01) > 30
    small = downsample_roc(roc_curve(TIED_SCORES, TIED_MEMBER))
    assert small == {
        "fpr": [0.0, 0.0, 0.5, 1.0],
        "tpr": [0.0, 1 / 3, 1.0, 1.0],
        "thresholds": [None, 3.0, 2.0, 1.0],
    }


# -------------------------------------------------------------------------------------- full attack


def test_fit_split_is_stratified_disjoint_and_seeded() -> None:
    split = fit_split(11, 20, seed=0)
    assert (len(split["member_fit"]), len(split["member_eval"])) == (5, 6)
    assert (len(split["nonmember_fit"]), len(split["nonmember_eval"])) == (10, 10)
    assert sorted(np.concatenate([split["member_fit"], split["member_eval"]])) == list(range(11))
    assert all(np.array_equal(split[k], fit_split(11, 20, seed=0)[k]) for k in split)
    with pytest.raises(ValueError, match="fitted attackers need"):
        fit_split(1, 20, seed=0)


def test_population_attack_beats_chance_on_separable_data_and_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    member_probs, member_labels = _synthetic_probs(rng, 300, 5.0)
    nonmember_probs, nonmember_labels = _synthetic_probs(rng, 300, 0.0)
    kwargs = {"n_bootstrap": 20, "seed": 0}
    result = population_attack(member_probs, member_labels, nonmember_probs, nonmember_labels, **kwargs)
    json.dumps(result, allow_nan=False)  # JSON-able, no inf / nan
    assert result["counts"] == {
        "members": 300,
        "nonmembers": 300,
        "members_fit": 150,
        "members_eval": 150,
        "nonmembers_fit": 150,
        "nonmembers_eval": 150,
    }
    assert set(result["attacks"]) == set(SCORES)
    for score, by_attacker in result["attacks"].items():
        assert set(by_attacker) == set(ATTACKERS)
        for attacker, report in by_attacker.items():
            assert report["auc"]["value"] > 0.9, (score, attacker)
            assert report["balanced_accuracy"]["value"] > 0.8, (score, attacker)
            assert report["tpr_at_fpr"]["0.01"]["value"] is None  # only 150-300 non-members
            if attacker == "threshold":
                assert report["n_nonmembers"] == 300
                assert report["balanced_accuracy_at_decision"]["value"] is None
            else:
                assert report["n_nonmembers"] == 150
                assert report["balanced_accuracy_at_decision"]["value"] > 0.8, (score, attacker)
    again = population_attack(member_probs, member_labels, nonmember_probs, nonmember_labels, **kwargs)
    assert json.dumps(again) == json.dumps(result)


def test_population_attack_on_identical_distributions_is_near_chance() -> None:
    rng = np.random.default_rng(7)
    probs, labels = _synthetic_probs(rng, 400, 1.0)
    result = population_attack(
        probs[:200], labels[:200], probs[200:], labels[200:], scores=["loss"], n_bootstrap=50, seed=1
    )
    for report in result["attacks"]["loss"].values():
        assert report["auc"]["ci_low"] < 0.5 < report["auc"]["ci_high"]


def test_population_attack_threshold_only_needs_no_split_and_rejects_bad_input() -> None:
    result = population_attack(
        PROBS[:1], LABELS[:1], PROBS[1:], LABELS[1:], attackers=["threshold"], n_bootstrap=0
    )
    assert result["counts"] == {"members": 1, "nonmembers": 2}
    assert result["attacks"]["loss"]["threshold"]["auc"] == {"value": 1.0, "ci_low": None, "ci_high": None}
    with pytest.raises(ValueError, match="unknown"):
        population_attack(PROBS, LABELS, PROBS, LABELS, attackers=["knn"])
    with pytest.raises(ValueError, match="labels"):
        population_attack(PROBS, np.array([0, 1, 3]), PROBS, LABELS)
