"""Non-members drawn from the members' label distribution (workers.engine.metrics.nonmembers)."""

from __future__ import annotations

import numpy as np

from workers.engine.metrics.nonmembers import MIN_NONMEMBERS, select_nonmembers

TEST_LABELS = np.repeat(np.arange(4), 30)  # 4 classes x 30 test samples


def test_class_forget_set_takes_the_forgotten_class_of_the_test_split() -> None:
    chosen = select_nonmembers(np.full(50, 2), TEST_LABELS, forget_class=2, seed=0)
    assert chosen.rule == "forgotten_class_test"
    assert chosen.indices is not None
    np.testing.assert_array_equal(chosen.indices, np.flatnonzero(TEST_LABELS == 2))
    assert chosen.summary()["n"] == 30 and chosen.reason is None


def test_class_forget_set_without_enough_test_samples_of_its_class_gives_a_reason() -> None:
    labels = np.concatenate([TEST_LABELS, np.full(MIN_NONMEMBERS - 1, 7)])
    chosen = select_nonmembers(np.full(20, 7), labels, forget_class=7, seed=0)
    assert chosen.indices is None
    assert chosen.reason is not None and "9 samples of class 7" in chosen.reason


def test_a_representative_forget_set_keeps_the_whole_test_split() -> None:
    members = np.repeat(np.arange(4), 10)
    chosen = select_nonmembers(members, TEST_LABELS, forget_class=None, seed=0)
    assert chosen.rule == "test_split"
    assert chosen.indices is not None
    np.testing.assert_array_equal(chosen.indices, np.arange(TEST_LABELS.size))


def test_a_skewed_forget_set_gets_a_label_matched_subsample() -> None:
    # 40 members of class 0, 10 of class 1: the test split is uniform, so the labels differ.
    members = np.concatenate([np.zeros(40, dtype=np.int64), np.ones(10, dtype=np.int64)])
    chosen = select_nonmembers(members, TEST_LABELS, forget_class=None, seed=3)
    assert chosen.rule == "label_matched_test"
    assert chosen.indices is not None
    picked = TEST_LABELS[chosen.indices]
    # s = min(30/40, 30/10) = 0.75: 30 of class 0 and 7 of class 1, none of the classes without members.
    assert np.count_nonzero(picked == 0) == 30 and np.count_nonzero(picked == 1) == 7
    assert set(np.unique(picked)) == {0, 1}
    assert np.unique(chosen.indices).size == chosen.indices.size
    again = select_nonmembers(members, TEST_LABELS, forget_class=None, seed=3)
    assert again.indices is not None
    np.testing.assert_array_equal(again.indices, chosen.indices)


def test_a_member_class_missing_from_the_test_split_gives_a_reason() -> None:
    members = np.concatenate([np.zeros(30, dtype=np.int64), np.full(30, 9)])
    chosen = select_nonmembers(members, TEST_LABELS, forget_class=None, seed=0)
    assert chosen.indices is None
    assert chosen.reason is not None and "[9]" in chosen.reason


def test_a_random_forget_set_rarely_counts_as_skewed() -> None:
    generator = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(10), 150)
    test_labels = np.repeat(np.arange(10), 40)
    skewed = 0
    for _ in range(200):
        members = generator.choice(train_labels, size=150, replace=False)
        skewed += select_nonmembers(members, test_labels, None, 0).rule != "test_split"
    assert skewed <= 3  # the test's level is 0.1 %
