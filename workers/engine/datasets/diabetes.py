"""scikit-learn's bundled diabetes data (442 patients, 10 features, a continuous disease-progression target
in 25..346) as a small tabular regression dataset (no download: the file ships with scikit-learn).

The features come mean-centred and scaled to unit Euclidean norm per column (std ~0.048); by default they are
z-scored with the TRAIN split's mean and std so a network trains at ordinary learning rates. Targets keep
their natural units, so a target-range forget set ("every patient with target <= 100") reads naturally.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.datasets import load_diabetes

from workers.engine.datasets.arrays import REGRESSION_OUTPUTS, ArrayDataset
from workers.engine.task_types import TaskType

MAX_SEED = 2**32 - 1
DIABETES_FEATURES = 10


class DiabetesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(
        default=0.2, ge=0.05, le=0.5, allow_inf_nan=False, description="Fraction held out for test."
    )
    split_seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the random train/test split.")
    standardize_features: bool = Field(
        default=True, description="Z-score every feature with the train split's mean and std."
    )


def random_split(count: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction * count)`` random samples; return sorted (train, test) indices."""
    held_out = round(test_fraction * count)
    test_indices = np.sort(np.random.default_rng(seed).permutation(count)[:held_out])
    train_mask = np.ones(count, dtype=bool)
    train_mask[test_indices] = False
    return np.flatnonzero(train_mask), test_indices


def build_diabetes(config: DiabetesConfig) -> ArrayDataset:
    bunch = load_diabetes()
    features = np.asarray(bunch.data, dtype=np.float64)
    targets = np.asarray(bunch.target, dtype=np.float32)
    train_indices, test_indices = random_split(targets.shape[0], config.test_fraction, config.split_seed)
    if config.standardize_features:
        mean = features[train_indices].mean(axis=0)
        std = features[train_indices].std(axis=0)
        features = (features - mean) / np.where(std > 0, std, 1.0)
    inputs = features.astype(np.float32)
    return ArrayDataset(
        x_train=np.ascontiguousarray(inputs[train_indices]),
        y_train=np.ascontiguousarray(targets[train_indices]),
        x_test=np.ascontiguousarray(inputs[test_indices]),
        y_test=np.ascontiguousarray(targets[test_indices]),
        num_classes=REGRESSION_OUTPUTS,
        task=TaskType.regression,
        input_shape=(DIABETES_FEATURES,),
    ).validate()
