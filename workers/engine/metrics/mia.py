"""MIA-Efficacy: the SVC membership-inference attack of the OPTML-Group code (optml.md §3.1).

Reproduces Unlearn-Sparse ``evaluation/SVC_MIA.py`` + the ``SVC_MIA_forget_efficacy`` block of
``main_forget.py``:

- members (label 1): the first ``|D_test|`` retain samples in ascending original-index order (option
  ``member_selection="random"`` draws them uniformly instead, seeded);
- non-members (label 0): the whole test set (class-filtered for class-wise forgetting - the caller passes
  the filtered set);
- one ``SVC(C=3, kernel="rbf", gamma="auto")`` per feature, fitted on the evaluated model's own softmax
  outputs, then applied to the forget set;
- the score is the percentage of forget samples predicted NON-member. The headline "MIA-Efficacy" is the
  ``confidence`` feature.

Deliberate deviation: ``m_entropy`` is Song & Mittal's modified entropy computed correctly,
``-(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)``; the reference's torch version uses ``log p``
where ``log(1 - p)`` is meant and indexes whole label columns, so its ``m_entropy`` numbers are not
comparable with ours (the other four features match).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from sklearn.svm import SVC

from workers.engine.metrics.classification import PERCENT, predictions

SVC_C = 3.0
SVC_KERNEL = "rbf"
SVC_GAMMA = "auto"  # 1 / n_features, as in the reference
# log() floor: probabilities are clipped from below so log(0) never occurs (Song & Mittal use 1e-30 too).
LOG_FLOOR = 1e-30

MemberSelection = Literal["first", "random"]


def _safe_log(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(values, LOG_FLOOR))


def _true_class_probability(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probabilities[np.arange(labels.shape[0]), labels]


def correctness_feature(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (predictions(probabilities) == labels).astype(np.float64)[:, None]


def confidence_feature(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _true_class_probability(probabilities, labels)[:, None]


def entropy_feature(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Shannon entropy ``-sum_k p_k log p_k`` (0 log 0 = 0 through the clipped log)."""
    return -np.sum(probabilities * _safe_log(probabilities), axis=1)[:, None]


def modified_entropy_feature(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal (2021) modified entropy, correctly: uses log(1 - p_k) for the wrong classes."""
    true_probability = _true_class_probability(probabilities, labels)
    wrong_class_terms = -probabilities * _safe_log(1.0 - probabilities)
    wrong_class_terms[np.arange(labels.shape[0]), labels] = 0.0
    true_class_term = -(1.0 - true_probability) * _safe_log(true_probability)
    return (true_class_term + wrong_class_terms.sum(axis=1))[:, None]


def probability_feature(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probabilities


MIA_FEATURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "correctness": correctness_feature,
    "confidence": confidence_feature,
    "entropy": entropy_feature,
    "m_entropy": modified_entropy_feature,
    "prob": probability_feature,
}
HEADLINE_MIA_FEATURE = "confidence"


def select_members(
    retain_count: int, member_count: int, member_selection: MemberSelection, seed: int
) -> np.ndarray:
    """Positions (into the ascending-ordered retain set) of the attack's member samples.

    The reference takes ``Subset(range(|D_test|))``; when the retain set is smaller than the test set we
    take all of it (the reference would fail).
    """
    count = min(member_count, retain_count)
    if member_selection == "first":
        return np.arange(count)
    if member_selection == "random":
        return np.sort(np.random.default_rng(seed).choice(retain_count, size=count, replace=False))
    raise ValueError(f"member_selection must be 'first' or 'random', got {member_selection!r}")


def svc_nonmember_rate(
    member_features: np.ndarray, nonmember_features: np.ndarray, target_features: np.ndarray
) -> float:
    """Fit the reference SVC on members (1) vs non-members (0); percent of targets predicted non-member."""
    inputs = np.concatenate([member_features, nonmember_features])
    targets = np.concatenate([np.ones(member_features.shape[0]), np.zeros(nonmember_features.shape[0])])
    attack = SVC(C=SVC_C, kernel=SVC_KERNEL, gamma=SVC_GAMMA)
    attack.fit(inputs, targets)
    predicted_member = attack.predict(target_features)
    return float((1.0 - predicted_member.mean()) * PERCENT)


def mia_efficacy(
    retain_probabilities: np.ndarray,
    retain_labels: np.ndarray,
    test_probabilities: np.ndarray,
    test_labels: np.ndarray,
    forget_probabilities: np.ndarray,
    forget_labels: np.ndarray,
    *,
    member_selection: MemberSelection = "first",
    seed: int = 0,
    features: Sequence[str] = tuple(MIA_FEATURES),
    on_feature_done: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Percent of the forget set predicted non-member, per feature name.

    ``retain_*`` must be in ascending original-index order (that order defines "first"); ``test_*`` is the
    non-member set (already class-filtered for class-wise forgetting). ``on_feature_done(name)`` runs after
    each SVC (seconds each at CIFAR scale), so a caller can report progress or cancel in between.
    """
    unknown = sorted(set(features) - set(MIA_FEATURES))
    if unknown:
        raise ValueError(f"unknown MIA features {unknown}; available: {sorted(MIA_FEATURES)}")
    if forget_labels.shape[0] == 0 or test_labels.shape[0] == 0 or retain_labels.shape[0] == 0:
        raise ValueError("MIA-Efficacy needs non-empty retain, test and forget sets")
    members = select_members(retain_labels.shape[0], test_labels.shape[0], member_selection, seed)
    member_probabilities, member_labels = retain_probabilities[members], retain_labels[members]
    scores = {}
    for name in features:
        feature = MIA_FEATURES[name]
        scores[name] = svc_nonmember_rate(
            feature(member_probabilities, member_labels),
            feature(test_probabilities, test_labels),
            feature(forget_probabilities, forget_labels),
        )
        if on_feature_done is not None:
            on_feature_done(name)
    return scores
