"""Shared fixtures: the digits dataset and one small original model trained on it once per session."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.engine.datasets import ArrayDataset, build_dataset

DIGITS_MLP_CONFIG: dict[str, Any] = {"input_shape": [1, 8, 8], "hidden": [128]}
DIABETES_MLP_CONFIG: dict[str, Any] = {"input_shape": [10], "hidden": [64, 64]}
# A few-second recipe: the reference's 100 Adam epochs on AgeDB, reduced for a 354-sample set on a CPU.
DIABETES_RECIPE: dict[str, Any] = {
    "epochs": 60,
    "batch_size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "augment": False,
}
# A few-second digits recipe (the reference's 182-epoch default is for CIFAR on a GPU).
DIGITS_RECIPE: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.1,
    "schedule": "cosine",
    "augment": False,
    "weight_decay": 0.0,
}
FORGET_CLASS = 3  # digit "3": one tenth of the data, learned well by the original
RANDOM_FORGET_FRACTION = 0.1


@pytest.fixture(scope="session")
def digits() -> ArrayDataset:
    return build_dataset("digits")


@pytest.fixture(scope="session")
def random_forget_indices(digits: ArrayDataset) -> np.ndarray:
    rng = np.random.default_rng(0)
    count = round(RANDOM_FORGET_FRACTION * digits.n_train)
    return np.sort(rng.choice(digits.n_train, size=count, replace=False)).astype(np.int64)


@pytest.fixture(scope="session")
def forget_class() -> int:
    return FORGET_CLASS


@pytest.fixture(scope="session")
def class_forget_indices(digits: ArrayDataset, forget_class: int) -> np.ndarray:
    return np.flatnonzero(digits.y_train == forget_class).astype(np.int64)


@pytest.fixture(scope="session")
def original_digits_model(digits: ArrayDataset) -> Any:
    """EngineResult of training the digits MLP once (imports torch lazily)."""
    from workers.engine.execute import EngineRequest, execute

    request = EngineRequest(
        kind="train",
        method="train",
        params={"recipe": DIGITS_RECIPE},
        seed=0,
        device="cpu",
        dataset=digits,
        architecture="mlp",
        arch_config=DIGITS_MLP_CONFIG,
    )
    return execute(request)
