"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as a tiny image dataset."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.datasets import load_digits

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.task_types import TaskType

# load_digits pixels are integer ink counts in 0..16.
DIGITS_MAX_PIXEL = 16.0
DIGITS_IMAGE_SIZE = 8
DIGITS_CLASSES = 10
MAX_SEED = 2**32 - 1


class DigitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(
        default=0.2,
        ge=0.05,
        le=0.5,
        allow_inf_nan=False,
        description="Fraction of each class held out for test.",
    )
    split_seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the stratified train/test split."
    )


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, hold out ``round(test_fraction * class_size)`` samples; return sorted (train, test) indices.

    Sorting keeps each split in original file order, which is what "first-N" member selection refers to.
    """
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held_out = round(test_fraction * members.size)
        test_parts.append(rng.permutation(members)[:held_out])
    test_indices = np.sort(np.concatenate(test_parts))
    train_mask = np.ones(labels.shape[0], dtype=bool)
    train_mask[test_indices] = False
    return np.flatnonzero(train_mask), test_indices


def build_digits(config: DigitsConfig) -> ArrayDataset:
    bunch = load_digits()
    images = (bunch.images / DIGITS_MAX_PIXEL).astype(np.float32)[:, np.newaxis]
    labels = bunch.target.astype(np.int64)
    train_indices, test_indices = stratified_split(labels, config.test_fraction, config.split_seed)
    return ArrayDataset(
        x_train=np.ascontiguousarray(images[train_indices]),
        y_train=labels[train_indices],
        x_test=np.ascontiguousarray(images[test_indices]),
        y_test=labels[test_indices],
        num_classes=DIGITS_CLASSES,
        task=TaskType.classification,
        input_shape=(1, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE),
    ).validate()
