"""Which test samples stand as non-members beside a forget set, so that a population attack measures
membership and not a difference between two label distributions.

A population attack asks whether the model treats the forget set (members) differently from data it never
saw (non-members). That question only makes sense when both sides come from one distribution: with a class
forget set, members are all of class ``c`` while the whole test split spans every class, so an attack that
merely recognises class ``c`` reads AUC far from 0.5 even on a perfect retrain. The rules:

- **class forget set**: the test samples of the forgotten class (``forgotten_class_test``); a perfect retrain
  treats both sides alike, the untouched original does not. Fewer than ``MIN_NONMEMBERS`` such samples:
  no attack, and the reason says why.
- **any other forget set** (random, indices, worst case): the whole test split (``test_split``) unless a
  chi-square test of homogeneity rejects, at ``LABEL_SHIFT_P_VALUE``, that members and test samples share
  one label distribution (a skewed worst-case or hand-picked set). Then a label-matched subsample of the
  test split (``label_matched_test``): per class, ``floor(s * m_c)`` test samples, ``s`` the largest scale
  every member class can afford (``s = min_c t_c / m_c``), drawn with a fixed seed. A member class absent
  from the test split, or a matched set below ``MIN_NONMEMBERS``: no attack, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import chi2_contingency

MIN_NONMEMBERS = 10  # below this a ROC curve is a handful of steps: no attack rather than a noisy one
LABEL_SHIFT_P_VALUE = 1e-3  # random forget sets reject this rarely (0.1 %), a skewed set almost always
NonMemberRule = Literal["test_split", "forgotten_class_test", "label_matched_test"]


@dataclass(frozen=True)
class NonMembers:
    """The chosen non-members (indices into the test split), or ``None`` with the reason none fit."""

    rule: NonMemberRule
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


def select_nonmembers(
    member_labels: np.ndarray, test_labels: np.ndarray, forget_class: int | None, seed: int
) -> NonMembers:
    """Non-members from the test split drawn from the members' label distribution (rules in the module
    docstring). ``seed`` only matters for the label-matched subsample."""
    if forget_class is not None:
        return _forgotten_class(test_labels, forget_class)
    if member_labels.size == 0:
        return NonMembers("test_split", None, "no members", "the forget set is empty")
    if not _labels_differ(member_labels, test_labels):
        return NonMembers(
            "test_split",
            np.arange(test_labels.size),
            "the whole test split (its label distribution is compatible with the forget set's)",
        )
    return _label_matched(member_labels, test_labels, seed)


def _forgotten_class(test_labels: np.ndarray, forget_class: int) -> NonMembers:
    indices = np.flatnonzero(test_labels == forget_class)
    description = (
        f"test samples of the forgotten class {forget_class} (members and non-members share a class)"
    )
    if indices.size < MIN_NONMEMBERS:
        return NonMembers(
            "forgotten_class_test",
            None,
            description,
            f"the test split has {indices.size} samples of class {forget_class}; a population attack on a "
            f"class forget set needs >= {MIN_NONMEMBERS} of them (other classes would measure class "
            "identity)",
        )
    return NonMembers("forgotten_class_test", indices, description)


def _labels_differ(member_labels: np.ndarray, test_labels: np.ndarray) -> bool:
    classes = np.union1d(member_labels, test_labels)
    table = np.stack(
        [
            np.array([np.count_nonzero(member_labels == c) for c in classes]),
            np.array([np.count_nonzero(test_labels == c) for c in classes]),
        ]
    )
    if classes.size < 2:  # one class on both sides: nothing to differ
        return False
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return p_value < LABEL_SHIFT_P_VALUE


def _label_matched(member_labels: np.ndarray, test_labels: np.ndarray, seed: int) -> NonMembers:
    classes, member_counts = np.unique(member_labels, return_counts=True)
    test_counts = np.array([np.count_nonzero(test_labels == c) for c in classes])
    description = (
        "a label-matched subsample of the test split (the forget set's label distribution differs from the "
        f"test split's, chi-square p < {LABEL_SHIFT_P_VALUE:g})"
    )
    missing = classes[test_counts == 0]
    if missing.size:
        return NonMembers(
            "label_matched_test",
            None,
            description,
            f"classes {missing.tolist()} of the forget set have no test samples to stand as non-members",
        )
    scale = float(np.min(test_counts / member_counts))
    per_class = np.floor(scale * member_counts).astype(np.int64)
    if per_class.sum() < MIN_NONMEMBERS:
        return NonMembers(
            "label_matched_test",
            None,
            description,
            f"a label-matched test subsample has {int(per_class.sum())} samples; needs >= {MIN_NONMEMBERS}",
        )
    generator = np.random.default_rng(seed)
    chosen = [
        generator.choice(np.flatnonzero(test_labels == c), size=int(count), replace=False)
        for c, count in zip(classes, per_class, strict=True)
    ]
    return NonMembers("label_matched_test", np.sort(np.concatenate(chosen)), description)
