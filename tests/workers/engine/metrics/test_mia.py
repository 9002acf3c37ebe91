from __future__ import annotations

import math

import numpy as np
import pytest

from workers.engine.metrics import MIA_FEATURES, mia_efficacy, select_members
from workers.engine.metrics.mia import LOG_FLOOR, entropy_feature, modified_entropy_feature

PROBABILITIES = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
)
LABELS = np.array([0, 2, 1, 0, 1])


def test_entropy_by_hand() -> None:
    expected = [
        -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
        -(0.1 * math.log(0.1) + 0.6 * math.log(0.6) + 0.3 * math.log(0.3)),
        math.log(2.0),  # the zero entry contributes 0 log 0 = 0
        0.0,
        0.0,
    ]
    assert np.allclose(entropy_feature(PROBABILITIES, LABELS)[:, 0], expected)


def test_modified_entropy_by_hand() -> None:
    # Song & Mittal: -(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)
    expected = [
        -(0.3 * math.log(0.7)) - (0.2 * math.log(0.8) + 0.1 * math.log(0.9)),
        -(0.7 * math.log(0.3)) - (0.1 * math.log(0.9) + 0.6 * math.log(0.4)),
        -(0.5 * math.log(0.5)) - (0.5 * math.log(0.5) + 0.0),
        0.0,  # certain and right: no uncertainty at all
        -2.0 * math.log(LOG_FLOOR),  # certain and wrong: both logs hit the floor, stays finite
    ]
    assert np.allclose(modified_entropy_feature(PROBABILITIES, LABELS)[:, 0], expected)


def test_modified_entropy_differs_from_the_reference_bug() -> None:
    # The reference used log(p) for the wrong-class term; on row 0 that would give a different value.
    buggy_row0 = -(0.3 * math.log(0.7)) - (0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert not math.isclose(modified_entropy_feature(PROBABILITIES[:1], LABELS[:1])[0, 0], buggy_row0)


def test_feature_shapes() -> None:
    for name, feature in MIA_FEATURES.items():
        values = feature(PROBABILITIES, LABELS)
        assert values.shape == ((5, 3) if name == "prob" else (5, 1)), name
    assert MIA_FEATURES["correctness"](PROBABILITIES, LABELS)[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert MIA_FEATURES["confidence"](PROBABILITIES, LABELS)[:, 0].tolist() == [0.7, 0.3, 0.5, 1.0, 0.0]


def _two_class_probabilities(confidences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 0 with p_0 = confidence: the argmax is right whenever confidence > 0.5."""
    return np.stack([confidences, 1.0 - confidences], axis=1), np.zeros(confidences.shape[0], dtype=np.int64)


def test_perfectly_separable_confidences() -> None:
    members = np.linspace(0.95, 1.0, 40)  # training data: confident
    nonmembers = np.linspace(0.05, 0.45, 40)  # unseen data: unsure (and wrong)
    retain_p, retain_y = _two_class_probabilities(members)
    test_p, test_y = _two_class_probabilities(nonmembers)
    remembered_p, remembered_y = _two_class_probabilities(np.full(10, 0.98))
    forgotten_p, forgotten_y = _two_class_probabilities(np.full(10, 0.2))

    remembered = mia_efficacy(retain_p, retain_y, test_p, test_y, remembered_p, remembered_y)
    forgotten = mia_efficacy(retain_p, retain_y, test_p, test_y, forgotten_p, forgotten_y)
    for name in ("confidence", "entropy", "m_entropy", "prob", "correctness"):
        assert remembered[name] == 0.0, name  # all forget samples look like members
        assert forgotten[name] == 100.0, name  # all look like non-members

    half_p = np.concatenate([remembered_p, forgotten_p])
    half_y = np.concatenate([remembered_y, forgotten_y])
    assert mia_efficacy(retain_p, retain_y, test_p, test_y, half_p, half_y)["confidence"] == 50.0


def test_first_member_selection_ignores_later_retain_samples() -> None:
    retain_p, retain_y = _two_class_probabilities(np.concatenate([np.full(20, 0.99), np.full(30, 0.3)]))
    test_p, test_y = _two_class_probabilities(np.linspace(0.05, 0.45, 20))
    forget_p, forget_y = _two_class_probabilities(np.full(5, 0.97))
    first = mia_efficacy(retain_p, retain_y, test_p, test_y, forget_p, forget_y, features=["confidence"])
    assert first == {"confidence": 0.0}
    # Random members include the unconfident tail, so confident forget samples no longer stand out as
    # cleanly; what matters is that selection changes which samples are members.
    assert select_members(50, 20, "first", 0).tolist() == list(range(20))
    chosen = select_members(50, 20, "random", 7)
    assert chosen.size == 20 and np.all(np.diff(chosen) > 0) and chosen.max() >= 20
    assert np.array_equal(chosen, select_members(50, 20, "random", 7))


def test_member_count_is_capped_by_retain_size() -> None:
    assert select_members(5, 20, "first", 0).tolist() == [0, 1, 2, 3, 4]
    assert select_members(5, 20, "random", 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="member_selection"):
        select_members(5, 2, "last", 0)  # type: ignore[arg-type]


def test_input_errors() -> None:
    p, y = _two_class_probabilities(np.array([0.9, 0.1]))
    with pytest.raises(ValueError, match="unknown MIA features"):
        mia_efficacy(p, y, p, y, p, y, features=["loss"])
    with pytest.raises(ValueError, match="non-empty"):
        mia_efficacy(p, y, p, y, p[:0], y[:0])


def test_progress_callback_runs_after_each_attack() -> None:
    retain_p, retain_y = _two_class_probabilities(np.linspace(0.9, 1.0, 10))
    test_p, test_y = _two_class_probabilities(np.linspace(0.1, 0.4, 10))
    done: list[str] = []
    mia_efficacy(
        retain_p,
        retain_y,
        test_p,
        test_y,
        test_p,
        test_y,
        features=["entropy", "prob"],
        on_feature_done=done.append,
    )
    assert done == ["entropy", "prob"]


def test_result_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    retain_p, retain_y = _two_class_probabilities(rng.uniform(0.4, 1.0, 200))
    test_p, test_y = _two_class_probabilities(rng.uniform(0.2, 0.9, 100))
    forget_p, forget_y = _two_class_probabilities(rng.uniform(0.3, 1.0, 30))
    first = mia_efficacy(retain_p, retain_y, test_p, test_y, forget_p, forget_y)
    second = mia_efficacy(retain_p, retain_y, test_p, test_y, forget_p, forget_y)
    assert first == second
    assert set(first) == set(MIA_FEATURES)
    assert all(0.0 <= value <= 100.0 for value in first.values())
