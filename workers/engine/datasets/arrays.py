"""In-memory datasets as plain numpy arrays (torch-free)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from workers.engine.errors import InvalidInputError
from workers.engine.task_types import TaskType

UINT8_MAX = 255.0
# Channel counts recognised when guessing whether 4-D images are stored channels-last (N, H, W, C).
IMAGE_CHANNEL_COUNTS = (1, 3, 4)
MIN_CLASSES = 2
# A regression dataset has one continuous target per sample; its ``num_classes`` is the model's output count.
REGRESSION_OUTPUTS = 1
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test", "num_classes", "task")
# Optional members: a dataset without them is not normalised (older archives have none).
NPZ_NORMALIZATION_KEYS = ("norm_mean", "norm_std")
# Input dtypes an ArrayDataset holds: float32 features, or uint8 pixels (0..255) that stay uint8 in storage
# and in host memory and are scaled to [0, 1] on the device (workers.engine.device_inputs).
INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8))


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std``, applied on the device after uint8 pixels are scaled to [0, 1].

    Part of the dataset's config (so recorded with the row and in every job result), not baked into the
    stored arrays: the same stored uint8 images serve any normalisation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def check(self, channels: int) -> None:
        if len(self.mean) != channels or len(self.std) != channels:
            raise InvalidInputError(
                f"normalization needs one mean and one std per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(s) and s > 0 for s in self.std):
            raise InvalidInputError("normalization mean must be finite and std finite and positive")


@dataclass
class ArrayDataset:
    """A train/test split held as numpy arrays.

    Inputs are float32, or uint8 pixels (0..255, images only: at least C x H) that are scaled by 1/255 on
    the device, with per-sample shape ``input_shape`` (images are channels-first, C x H x W).
    ``normalization`` (per channel, optional) is applied on the device after that scaling.
    Classification: labels are int64 class indices in ``[0, num_classes)``. Regression: labels are finite
    float32 targets and ``num_classes`` is 1 (one scalar output). Indices into ``x_train`` are the "original
    indices" forget sets refer to.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    task: TaskType
    input_shape: tuple[int, ...]
    normalization: Normalization | None = None
    # Where the arrays came from (source, row id, content digest, and the config that made them: transforms,
    # format options, normalisation), set by the dataset source's load; recorded in every job result.
    provenance: dict[str, object] | None = None

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    def validate(self) -> ArrayDataset:
        """Raise :class:`InvalidInputError` unless every invariant above holds; return ``self``."""
        if self.task not in (TaskType.classification, TaskType.regression):
            raise InvalidInputError(f"unsupported task type {self.task!r}")
        regression = self.task is TaskType.regression
        if self.normalization is not None:
            if len(self.input_shape) < 2:
                raise InvalidInputError("normalization applies to images (C x H x W), not flat features")
            self.normalization.check(self.input_shape[0])
        if regression and self.num_classes != REGRESSION_OUTPUTS:
            raise InvalidInputError(f"a regression dataset has num_classes={REGRESSION_OUTPUTS} (one output)")
        if not regression and self.num_classes < MIN_CLASSES:
            raise InvalidInputError(f"num_classes must be at least {MIN_CLASSES}, got {self.num_classes}")
        for split, inputs, labels in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if inputs.dtype not in INPUT_DTYPES:
                raise InvalidInputError(f"x_{split} must be float32 or uint8, got {inputs.dtype}")
            if inputs.dtype == np.uint8 and len(self.input_shape) < 2:
                raise InvalidInputError(f"uint8 x_{split} must be images (C x H x W), not flat features")
            label_dtype = np.float32 if regression else np.int64
            if labels.dtype != label_dtype or labels.ndim != 1:
                raise InvalidInputError(
                    f"y_{split} must be a 1-D {np.dtype(label_dtype).name} array, "
                    f"got {labels.dtype} {labels.shape}"
                )
            if inputs.ndim < 2 or tuple(inputs.shape[1:]) != tuple(self.input_shape):
                expected = ", ".join(["N", *map(str, self.input_shape)])
                raise InvalidInputError(f"x_{split} has shape {list(inputs.shape)}; expected [{expected}]")
            if inputs.shape[0] != labels.shape[0]:
                raise InvalidInputError(
                    f"x_{split} has {inputs.shape[0]} samples but y_{split} has {labels.shape[0]} labels"
                )
            if labels.shape[0] == 0:
                raise InvalidInputError(f"the {split} split is empty")
            if regression:
                if not np.all(np.isfinite(labels)):
                    raise InvalidInputError(f"y_{split} contains NaN or infinite targets")
            elif labels.min() < 0 or labels.max() >= self.num_classes:
                raise InvalidInputError(
                    f"y_{split} labels must lie in [0, {self.num_classes}), "
                    f"found [{labels.min()}, {labels.max()}]"
                )
            if inputs.dtype == np.float32 and not np.all(np.isfinite(inputs)):
                raise InvalidInputError(f"x_{split} contains NaN or infinite values")
        return self

    @classmethod
    def from_arrays(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        num_classes: int | None = None,
        task: TaskType = TaskType.classification,
    ) -> ArrayDataset:
        """Normalise user arrays and validate them.

        - uint8 inputs are scaled to [0, 1]; other numeric inputs are cast to float32 unchanged;
        - N x H x W grayscale images gain a channel axis (N x 1 x H x W);
        - N x H x W x C images with C in {1, 3, 4} (and a non-channel-like second axis) are transposed to
          channels-first;
        - integer labels (or floats holding whole numbers) become int64;
        - ``num_classes`` defaults to ``max(label) + 1`` over both splits;
        - regression (``task``): targets of any real dtype become float32 and ``num_classes`` is 1.
        """
        train_inputs, test_inputs = _normalise_inputs(x_train, "x_train"), _normalise_inputs(x_test, "x_test")
        if task is TaskType.regression:
            return cls(
                x_train=train_inputs,
                y_train=_normalise_targets(y_train, "y_train"),
                x_test=test_inputs,
                y_test=_normalise_targets(y_test, "y_test"),
                num_classes=REGRESSION_OUTPUTS,
                task=TaskType.regression,
                input_shape=tuple(int(size) for size in train_inputs.shape[1:]),
            ).validate()
        train_labels, test_labels = _normalise_labels(y_train, "y_train"), _normalise_labels(y_test, "y_test")
        if num_classes is None:
            largest = max(int(train_labels.max(initial=-1)), int(test_labels.max(initial=-1)))
            num_classes = largest + 1
        dataset = cls(
            x_train=train_inputs,
            y_train=train_labels,
            x_test=test_inputs,
            y_test=test_labels,
            num_classes=int(num_classes),
            task=TaskType.classification,
            input_shape=tuple(int(size) for size in train_inputs.shape[1:]),
        )
        return dataset.validate()

    def input_record(self) -> dict[str, object]:
        """How the stored inputs become the model's inputs, as recorded in every job result."""
        uint8 = self.x_train.dtype == np.uint8
        record: dict[str, object] = {
            "dtype": str(self.x_train.dtype),
            "scale": 1.0 / UINT8_MAX if uint8 else 1.0,  # applied first, on the device
            "mean": list(self.normalization.mean) if self.normalization else None,
            "std": list(self.normalization.std) if self.normalization else None,
        }
        if self.provenance is not None:
            record["dataset"] = self.provenance
        return record

    def to_npz_bytes(self) -> bytes:
        """Serialise with ``np.savez`` (no pickled objects), readable by :meth:`from_npz_bytes`; uint8 inputs
        stay uint8 (a quarter of float32's size)."""
        buffer = io.BytesIO()
        extra: dict[str, np.ndarray] = {}
        if self.normalization is not None:
            extra = {
                "norm_mean": np.asarray(self.normalization.mean, dtype=np.float64),
                "norm_std": np.asarray(self.normalization.std, dtype=np.float64),
            }
        members: dict[str, np.ndarray] = {
            "x_train": self.x_train,
            "y_train": self.y_train,
            "x_test": self.x_test,
            "y_test": self.y_test,
            "num_classes": np.asarray(self.num_classes, dtype=np.int64),
            "task": np.asarray(self.task.value),
            **extra,
        }
        np.savez(buffer, allow_pickle=False, **members)
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> ArrayDataset:
        return cls.from_npz_file(io.BytesIO(data))

    @classmethod
    def from_npz_file(cls, source: BinaryIO) -> ArrayDataset:
        """From a seekable binary file (an npz is a zip archive: its directory is at the end)."""
        try:
            with np.load(source, allow_pickle=False) as archive:
                missing = [key for key in NPZ_KEYS if key not in archive.files]
                if missing:
                    raise InvalidInputError(f"dataset archive lacks {', '.join(missing)}")
                arrays = {key: archive[key] for key in NPZ_KEYS}
                norm = [archive[key] for key in NPZ_NORMALIZATION_KEYS if key in archive.files]
        except (ValueError, OSError, EOFError) as error:
            raise InvalidInputError(f"not a readable dataset archive: {error}") from None
        try:
            task = TaskType(str(arrays["task"]))
        except ValueError:
            raise InvalidInputError(f"unknown task type {arrays['task']!s}") from None
        dataset = cls(
            x_train=arrays["x_train"],
            y_train=arrays["y_train"],
            x_test=arrays["x_test"],
            y_test=arrays["y_test"],
            num_classes=int(arrays["num_classes"]),
            task=task,
            input_shape=tuple(int(size) for size in arrays["x_train"].shape[1:]),
            normalization=(
                Normalization(tuple(map(float, norm[0])), tuple(map(float, norm[1])))
                if len(norm) == len(NPZ_NORMALIZATION_KEYS)
                else None
            ),
        )
        return dataset.validate()


def _normalise_inputs(inputs: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(inputs)
    if array.dtype.kind not in "uif":
        raise InvalidInputError(f"{name} must be numeric, got {array.dtype}")
    if array.ndim < 2:
        raise InvalidInputError(f"{name} must have a sample axis and at least one feature axis")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / np.float32(UINT8_MAX)
    if array.ndim == 3:
        array = array[:, np.newaxis]
    elif (
        array.ndim == 4
        and array.shape[3] in IMAGE_CHANNEL_COUNTS
        and array.shape[1] not in IMAGE_CHANNEL_COUNTS
    ):
        array = array.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(array, dtype=np.float32)


def _normalise_labels(labels: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D array of class indices, got shape {list(array.shape)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InvalidInputError(f"{name} must hold whole-number class indices")
    elif array.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} must hold integer class indices, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _normalise_targets(targets: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(targets)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D array of targets, got shape {list(array.shape)}")
    if array.dtype.kind not in "iuf":
        raise InvalidInputError(f"{name} must hold real-valued targets, got {array.dtype}")
    converted = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(converted)):
        raise InvalidInputError(f"{name} contains NaN or infinite targets (or values beyond float32)")
    return converted
