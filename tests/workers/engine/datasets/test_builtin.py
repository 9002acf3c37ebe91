from __future__ import annotations

import numpy as np
import pytest

from workers.engine.datasets import DATASETS, build_dataset
from workers.engine.datasets.digits import stratified_split
from workers.engine.errors import InvalidInputError

SMALL_PROCEDURAL = {"n_train": 200, "n_test": 60, "image_size": 8, "channels": 2, "num_classes": 4}


def _assert_identical(first, second) -> None:  # type: ignore[no-untyped-def]
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


@pytest.mark.parametrize(("name", "config"), [("digits", {}), ("procedural", SMALL_PROCEDURAL)])
def test_same_config_gives_identical_arrays(name: str, config: dict[str, object]) -> None:
    _assert_identical(build_dataset(name, config), build_dataset(name, config))


def test_digits_shapes_range_and_stratification() -> None:
    dataset = build_dataset("digits", {"test_fraction": 0.2, "split_seed": 0})
    assert dataset.input_shape == (1, 8, 8)
    assert dataset.n_train + dataset.n_test == 1797
    assert dataset.x_train.min() >= 0.0 and dataset.x_train.max() <= 1.0
    train_counts = np.bincount(dataset.y_train, minlength=10)
    test_counts = np.bincount(dataset.y_test, minlength=10)
    totals = train_counts + test_counts
    assert np.array_equal(test_counts, np.round(0.2 * totals).astype(int))
    other = build_dataset("digits", {"split_seed": 1})
    assert not np.array_equal(other.y_test, dataset.y_test)


def test_stratified_split_partitions_and_sorts() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    train, test = stratified_split(labels, 0.25, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(10))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.bincount(labels[test]).tolist() == [1, 2]  # round(0.25 * 4), round(0.25 * 6)


def test_procedural_shapes_balance_and_range() -> None:
    dataset = build_dataset("procedural", SMALL_PROCEDURAL)
    assert dataset.x_train.shape == (200, 2, 8, 8) and dataset.x_test.shape == (60, 2, 8, 8)
    assert dataset.x_train.dtype == np.float32
    assert dataset.x_train.min() >= 0.0 and dataset.x_train.max() <= 1.0
    assert np.bincount(dataset.y_test, minlength=4).tolist() == [15, 15, 15, 15]


@pytest.mark.parametrize(("n_train", "fraction"), [(200, 0.1), (333, 0.25), (50, 0.0)])
def test_procedural_label_noise_flips_exactly_the_requested_fraction(n_train: int, fraction: float) -> None:
    config = {**SMALL_PROCEDURAL, "n_train": n_train}
    clean = build_dataset("procedural", {**config, "label_noise": 0.0})
    noisy = build_dataset("procedural", {**config, "label_noise": fraction})
    assert np.array_equal(clean.x_train, noisy.x_train)  # noise touches labels only
    assert np.array_equal(clean.y_test, noisy.y_test)  # and never the test set
    changed = int(np.sum(clean.y_train != noisy.y_train))
    assert changed == round(fraction * n_train)
    counts = np.bincount(clean.y_train, minlength=4)
    assert counts.max() - counts.min() <= 1  # clean labels are balanced


def test_procedural_seed_changes_data_and_test_set_is_independent_of_n_train() -> None:
    base = build_dataset("procedural", SMALL_PROCEDURAL)
    reseeded = build_dataset("procedural", {**SMALL_PROCEDURAL, "seed": 1})
    assert not np.array_equal(base.x_train, reseeded.x_train)
    bigger = build_dataset("procedural", {**SMALL_PROCEDURAL, "n_train": 300})
    assert np.array_equal(base.x_test, bigger.x_test)


def _nearest_class_mean_accuracy(noise_std: float) -> float:
    dataset = build_dataset("procedural", {**SMALL_PROCEDURAL, "label_noise": 0.0, "noise_std": noise_std})
    means = np.stack([dataset.x_train[dataset.y_train == label].mean(axis=0) for label in range(4)])
    distances = ((dataset.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    return float(np.mean(distances.argmin(axis=1) == dataset.y_test))


def test_procedural_signal_is_learnable_and_noise_controls_difficulty() -> None:
    # Even a nearest-class-mean classifier on 8x8 images recovers the classes when the noise is low, and
    # the accuracy falls towards chance (25 %) as noise_std grows.
    accuracies = [_nearest_class_mean_accuracy(noise) for noise in (0.0, 0.25, 1.0, 2.0)]
    assert accuracies[0] == 1.0 and accuracies[1] > 0.9
    assert accuracies[0] >= accuracies[1] > accuracies[2] > accuracies[3]
    assert accuracies[3] < 0.5


def test_invalid_configs() -> None:
    with pytest.raises(InvalidInputError, match="test_fraction"):
        build_dataset("digits", {"test_fraction": 0.9})
    with pytest.raises(InvalidInputError, match="limit"):
        build_dataset("procedural", {"n_train": 200_000, "image_size": 128})
    with pytest.raises(InvalidInputError, match="Extra inputs"):
        build_dataset("procedural", {"colour": "red"})
    assert DATASETS.get("procedural").task_type.value == "classification"
