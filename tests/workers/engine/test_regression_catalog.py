"""Regression datasets, ArrayDataset's regression invariants and the scalar-head architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.activations import activation_names, collect_activations
from workers.engine.architectures.build import build_model
from workers.engine.datasets import DATASETS, ArrayDataset, build_dataset
from workers.engine.errors import InvalidInputError
from workers.engine.task_types import TaskType

SMALL_IMAGES = {"n_train": 60, "n_test": 20, "channels": 1, "image_size": 16}


def test_diabetes_is_a_standardised_tabular_regression_set() -> None:
    dataset = build_dataset("diabetes")
    assert DATASETS.get("diabetes").task_type is TaskType.regression
    assert dataset.task is TaskType.regression and dataset.num_classes == 1
    assert (dataset.n_train, dataset.n_test) == (354, 88) and dataset.input_shape == (10,)
    assert (
        dataset.y_train.dtype == np.float32 and 25.0 <= dataset.y_train.min() < dataset.y_train.max() <= 346.0
    )
    assert np.allclose(dataset.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(dataset.x_train.std(axis=0), 1.0, atol=1e-4)
    raw = build_dataset("diabetes", {"standardize_features": False})
    assert raw.x_train.std() < 0.1 and np.array_equal(raw.y_train, dataset.y_train)


def test_procedural_regression_is_seeded_with_noise_free_test_targets() -> None:
    first = build_dataset("procedural_regression", {**SMALL_IMAGES, "target_noise": 0.0})
    again = build_dataset("procedural_regression", {**SMALL_IMAGES, "target_noise": 0.0})
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_train, again.y_train)
    assert first.input_shape == (1, 16, 16) and first.task is TaskType.regression
    assert first.y_train.min() >= 0.0 and first.y_train.max() <= 100.0
    assert first.x_train.min() >= 0.0 and first.x_train.max() <= 1.0
    noisy = build_dataset("procedural_regression", {**SMALL_IMAGES, "target_noise": 5.0})
    assert np.array_equal(noisy.x_train, first.x_train) and np.array_equal(noisy.y_test, first.y_test)
    assert 1.0 < np.std(noisy.y_train - first.y_train) < 10.0
    with pytest.raises(InvalidInputError, match="target_high"):
        build_dataset("procedural_regression", {"target_low": 5.0, "target_high": 5.0})


def test_regression_arrays_validate_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    dataset = ArrayDataset.from_arrays(
        rng.random((6, 3)), rng.normal(size=6), rng.random((4, 3)), np.arange(4), task=TaskType.regression
    )
    assert dataset.y_train.dtype == np.float32 and dataset.y_test.dtype == np.float32
    assert dataset.num_classes == 1 and dataset.task is TaskType.regression
    restored = ArrayDataset.from_npz_bytes(dataset.to_npz_bytes())
    assert restored.task is TaskType.regression and np.array_equal(restored.y_train, dataset.y_train)
    with pytest.raises(InvalidInputError, match="NaN or infinite targets"):
        ArrayDataset.from_arrays(
            rng.random((2, 3)), [1.0, np.nan], rng.random((2, 3)), [0.0, 1.0], task=TaskType.regression
        )
    dataset.y_train = dataset.y_train.astype(np.int64)
    with pytest.raises(InvalidInputError, match="float32"):
        dataset.validate()


@pytest.mark.parametrize(
    ("name", "config", "input_shape", "activations"),
    [
        ("mlp_regressor", {"input_shape": [10], "hidden": [8, 4]}, (10,), 2),
        ("small_cnn_regressor", {"in_channels": 1, "image_size": 16, "channels": [4, 8]}, (1, 16, 16), 2),
        ("resnet18_regressor", {"in_channels": 1, "width": 2}, (1, 16, 16), 9),
    ],
)
def test_regressors_return_one_prediction_per_sample_and_their_activations(
    name: str, config: dict, input_shape: tuple[int, ...], activations: int
) -> None:
    spec = ARCHITECTURES.get(name)
    assert spec.task_types == (TaskType.regression,)
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    assert set(model.state_dict()) == set(spec.expected_state(config))
    inputs = torch.randn(3, *input_shape)
    prediction, blocks = collect_activations(model, inputs)
    assert prediction.shape == (3,) and torch.equal(prediction, model(inputs))
    assert len(blocks) == len(activation_names(model)) == activations
    spec.check_input(spec.parse_config(config), input_shape, 1)
    with pytest.raises(InvalidInputError):
        spec.parse_config({**config, "num_classes": 2})


def test_resnet18_regressor_exposes_the_stem_and_every_block() -> None:
    model = build_model("resnet18_regressor", {"in_channels": 1, "width": 2})
    names = activation_names(model)
    assert names[0] == "stem" and names[1:3] == ["layer1.0", "layer1.1"] and names[-1] == "layer4.1"
