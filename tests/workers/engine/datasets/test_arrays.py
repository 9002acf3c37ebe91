from __future__ import annotations

import numpy as np
import pytest

from workers.engine.datasets import ArrayDataset
from workers.engine.errors import InvalidInputError
from workers.engine.task_types import TaskType


def _arrays(train: int = 6, test: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (train, 5, 5), dtype=np.uint8),
        np.arange(train) % 3,
        rng.integers(0, 256, (test, 5, 5), dtype=np.uint8),
        np.arange(test) % 3,
    )


def test_from_arrays_normalises_uint8_grayscale_and_labels() -> None:
    x_train, y_train, x_test, y_test = _arrays()
    dataset = ArrayDataset.from_arrays(x_train, y_train.astype(np.int32), x_test, y_test.astype(np.uint8))
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.shape == (6, 1, 5, 5)
    assert dataset.input_shape == (1, 5, 5)
    assert np.allclose(dataset.x_train[:, 0] * 255.0, x_train)
    assert dataset.x_train.max() <= 1.0
    assert dataset.y_train.dtype == np.int64 and dataset.y_test.dtype == np.int64
    assert dataset.num_classes == 3
    assert dataset.task is TaskType.classification
    assert (dataset.n_train, dataset.n_test) == (6, 4)


def test_from_arrays_transposes_channels_last_images() -> None:
    rng = np.random.default_rng(1)
    x_train = rng.random((4, 6, 7, 3), dtype=np.float32)
    dataset = ArrayDataset.from_arrays(x_train, np.array([0, 1, 0, 1]), x_train[:2], np.array([1, 0]))
    assert dataset.input_shape == (3, 6, 7)
    assert np.array_equal(dataset.x_train[2, 1], x_train[2, :, :, 1])


def test_from_arrays_keeps_tabular_and_float_values() -> None:
    features = np.array([[0.5, 2.0], [3.0, -1.0], [1.0, 1.0]], dtype=np.float64)
    dataset = ArrayDataset.from_arrays(
        features, np.array([0.0, 1.0, 1.0]), features, np.array([1, 0, 0]), num_classes=4
    )
    assert dataset.input_shape == (2,)
    assert np.array_equal(dataset.x_train, features.astype(np.float32))
    assert dataset.num_classes == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_train": np.array([0, 1, 2, 0, 1, 3])}, r"labels must lie in \[0, 3\)"),
        ({"y_train": np.array([0.5, 1, 2, 0, 1, 2])}, "whole-number"),
        ({"y_train": np.array([0, 1, 2])}, "6 samples but y_train has 3"),
        ({"x_test": np.zeros((4, 5, 6), np.uint8)}, "x_test has shape"),
        ({"x_train": np.full((6, 5, 5), np.nan, np.float32)}, "NaN"),
        ({"x_train": np.array(["a"] * 6)}, "numeric"),
        ({"x_test": np.zeros((0, 5, 5), np.uint8), "y_test": np.zeros(0, np.int64)}, "empty"),
    ],
)
def test_invalid_arrays_raise_user_errors(change: dict[str, np.ndarray], message: str) -> None:
    x_train, y_train, x_test, y_test = _arrays()
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, **change}
    with pytest.raises(InvalidInputError, match=message):
        ArrayDataset.from_arrays(**arrays, num_classes=3)


def test_validate_rejects_wrong_dtype_and_single_class() -> None:
    x_train, y_train, x_test, y_test = _arrays()
    dataset = ArrayDataset.from_arrays(x_train, y_train, x_test, y_test)
    dataset.x_train = dataset.x_train.astype(np.float64)
    with pytest.raises(InvalidInputError, match="float32"):
        dataset.validate()
    with pytest.raises(InvalidInputError, match="num_classes"):
        ArrayDataset.from_arrays(x_train, np.zeros(6, np.int64), x_test, np.zeros(4, np.int64))


def test_npz_round_trip_is_exact() -> None:
    dataset = ArrayDataset.from_arrays(*_arrays())
    restored = ArrayDataset.from_npz_bytes(dataset.to_npz_bytes())
    for name in ("x_train", "y_train", "x_test", "y_test"):
        original, loaded = getattr(dataset, name), getattr(restored, name)
        assert loaded.dtype == original.dtype and np.array_equal(loaded, original)
    assert (restored.num_classes, restored.task, restored.input_shape) == (
        3,
        TaskType.classification,
        (1, 5, 5),
    )


def test_npz_reader_refuses_pickles_and_garbage() -> None:
    import io

    buffer = io.BytesIO()
    x_train, y_train, x_test, y_test = _arrays()
    np.savez(
        buffer,
        x_train=np.array([object()], dtype=object),
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=np.asarray(3),
        task=np.asarray("classification"),
    )
    with pytest.raises(InvalidInputError, match="not a readable dataset archive"):
        ArrayDataset.from_npz_bytes(buffer.getvalue())
    with pytest.raises(InvalidInputError, match="not a readable dataset archive"):
        ArrayDataset.from_npz_bytes(b"definitely not a zip file")
    partial = io.BytesIO()
    np.savez(partial, x_train=x_train)
    with pytest.raises(InvalidInputError, match="lacks y_train"):
        ArrayDataset.from_npz_bytes(partial.getvalue())
