"""Readers of torchvision's exact on-disk dataset formats, numpy only (torch-free: the API validates with
them), each producing uint8 images (N x C x H x W) and int64 labels.

* ``cifar10``: ``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta`` (python pickles);
  10 classes, 3x32x32.
* ``cifar100``: ``train``, ``test``, ``meta`` (python pickles); ``label`` fine (100 classes) or coarse (20);
  3x32x32.
* ``svhn``: ``train_32x32.mat``, ``test_32x32.mat`` and, with ``train_split: train+extra``,
  ``extra_32x32.mat`` appended to the training split (MATLAB v5; label 10 is the digit 0, as torchvision
  maps it); 10 classes, 3x32x32.
* ``mnist``, ``fashion_mnist``: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``; 10 classes, 1xHxW
  from the header (28x28).
* ``image_folder``: ``train/<class>/*.png|jpg|jpeg`` and ``test/<class>/…``, or (``test_fraction`` set) one
  ``<class>/…`` tree split per class.

ImageFolder: classes are the sorted subfolder names (torchvision's order); files with other extensions and
hidden entries are ignored; images are converted to RGB (or L with ``channels: 1``) and must all have one
size, unless ``image_size`` is set, when each is resized to it with Pillow's bilinear filter.

The CIFAR pickles are read with :mod:`.safe_pickle` (a restricted unpickler), never ``pickle.load``.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.datasets.arrays import ArrayDataset, Normalization
from workers.engine.datasets.data_root.files import MAX_GZIP_RATIO, DatasetFilesError, FileReader, walk_files
from workers.engine.datasets.data_root.safe_pickle import safe_unpickle
from workers.engine.datasets.digits import MAX_SEED, stratified_split
from workers.engine.registry import Registry
from workers.engine.task_types import TaskType

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE
CIFAR10_TRAIN_BATCHES = 5
SVHN_ZERO_LABEL = 10  # SVHN's .mat files label the digit 0 as 10
SVHN_VARIABLES = ("X", "y")
IDX_UBYTE = 0x08
MNIST_CLASSES = 10
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096  # per ImageFolder image: beyond this a file is refused, not decoded
MAX_CHANNELS = 4
MIN_CLASSES = 2


class NormalizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: list[float] = Field(min_length=1, max_length=MAX_CHANNELS, description="Per channel, on [0, 1].")
    std: list[float] = Field(min_length=1, max_length=MAX_CHANNELS, description="Per channel, positive.")

    @model_validator(mode="after")
    def _check(self) -> NormalizationConfig:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if not all(np.isfinite(v) for v in self.mean) or not all(np.isfinite(v) and v > 0 for v in self.std):
            raise ValueError("mean must be finite and std finite and positive")
        return self


class DataRootConfig(BaseModel):
    """Options every data-root format takes."""

    model_config = ConfigDict(extra="forbid")

    normalization: NormalizationConfig | None = Field(
        None,
        description="Per-channel (x - mean) / std, applied on the device after pixels are scaled to [0, 1]; "
        "recorded in every result. Unset: the [0, 1] pixels as they are.",
    )


class Cifar100Config(DataRootConfig):
    label: Literal["fine", "coarse"] = Field("fine", description="fine: 100 classes; coarse: 20.")


class SvhnConfig(DataRootConfig):
    train_split: Literal["train", "train+extra"] = Field(
        "train",
        description="train: train_32x32.mat (73,257 digits); train+extra: train_32x32.mat followed by "
        "extra_32x32.mat (531,131 more, the larger training set many SVHN papers use). Test: test_32x32.mat.",
    )


class ImageFolderConfig(DataRootConfig):
    image_size: tuple[int, int] | None = Field(
        None, description="[height, width] every image is resized to (bilinear). Unset: all must match."
    )
    channels: Literal[1, 3] = Field(3, description="3: converted to RGB (torchvision's loader); 1: to L.")
    test_fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Unset: the directory holds train/ and test/ ImageFolders. Set: it is one ImageFolder, "
        "split per class (stratified) with split_seed.",
    )
    split_seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _check_size(self) -> ImageFolderConfig:
        if self.image_size is not None and not all(0 < side <= 4096 for side in self.image_size):
            raise ValueError("image_size sides must lie in 1..4096")
        return self


@dataclass(frozen=True)
class FileDataset:
    """What a reader produced: the arrays (uint8 images) and the class names it found."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class DataRootFormat:
    name: str
    description: str
    config_model: type[DataRootConfig]
    read: Callable[[FileReader, Any], FileDataset]


DATA_ROOT_FORMATS: Registry[DataRootFormat] = Registry("data-root format")


def to_array_dataset(files: FileDataset, config: DataRootConfig) -> ArrayDataset:
    normalization = None
    if config.normalization is not None:
        normalization = Normalization(tuple(config.normalization.mean), tuple(config.normalization.std))
    return ArrayDataset(
        x_train=files.x_train,
        y_train=files.y_train,
        x_test=files.x_test,
        y_test=files.y_test,
        num_classes=len(files.class_names),
        task=TaskType.classification,
        input_shape=tuple(int(n) for n in files.x_train.shape[1:]),
        normalization=normalization,
    ).validate()


# ------------------------------------------------------------------------------------------------ CIFAR
def _names(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str | bytes) for n in value):
        raise DatasetFilesError(f"{what} must be a list of names")
    return [n.decode("latin-1") if isinstance(n, bytes) else n for n in value]


def _cifar_batch(
    reader: FileReader, name: str, label_key: str, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(reader.read(name), name)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DatasetFilesError(f"{name} must be a dict with 'data' and {label_key!r}")
    data, labels = batch["data"], batch[label_key]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != CIFAR_PIXELS
    ):
        raise DatasetFilesError(f"{name}: 'data' must be a uint8 array of N x {CIFAR_PIXELS} pixels")
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DatasetFilesError(f"{name}: {label_key!r} must be a list of integers")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape[0] != data.shape[0]:
        raise DatasetFilesError(f"{name}: {data.shape[0]} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DatasetFilesError(f"{name}: labels must lie in [0, {classes})")
    # Rows are the red, green then blue planes of a 32x32 image, row-major: exactly C x H x W.
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), y


def _cifar_meta(reader: FileReader, name: str, key: str, classes: int) -> list[str]:
    meta = safe_unpickle(reader.read(name), name)
    if not isinstance(meta, dict) or key not in meta:
        raise DatasetFilesError(f"{name} must be a dict with {key!r}")
    names = _names(meta[key], f"{name}: {key!r}")
    if len(names) != classes:
        raise DatasetFilesError(f"{name}: {key!r} lists {len(names)} classes, expected {classes}")
    return names


def _concatenate(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_cifar10(reader: FileReader, config: DataRootConfig) -> FileDataset:
    names = _cifar_meta(reader, "batches.meta", "label_names", 10)
    train = [
        _cifar_batch(reader, f"data_batch_{i}", "labels", 10) for i in range(1, CIFAR10_TRAIN_BATCHES + 1)
    ]
    x_train, y_train = _concatenate(train)
    x_test, y_test = _cifar_batch(reader, "test_batch", "labels", 10)
    return FileDataset(x_train, y_train, x_test, y_test, names)


def read_cifar100(reader: FileReader, config: Cifar100Config) -> FileDataset:
    classes = 100 if config.label == "fine" else 20
    names = _cifar_meta(reader, "meta", f"{config.label}_label_names", classes)
    x_train, y_train = _cifar_batch(reader, "train", f"{config.label}_labels", classes)
    x_test, y_test = _cifar_batch(reader, "test", f"{config.label}_labels", classes)
    return FileDataset(x_train, y_train, x_test, y_test, names)


# ------------------------------------------------------------------------------------------------- SVHN
def _check_mat_sizes(data: bytes, name: str) -> None:
    """MATLAB v5 variables may be zlib-compressed, so a small file can declare a huge array (a zip bomb):
    the declared element counts, read from the variables' headers (scipy's ``whosmat`` inflates only as far
    as each header), are capped at MAX_GZIP_RATIO times the file's size before anything is decoded."""
    from scipy.io import whosmat

    try:
        variables = whosmat(io.BytesIO(data))
    except (ValueError, TypeError, OSError, NotImplementedError, KeyError, zlib.error) as error:
        raise DatasetFilesError(f"{name} is not a readable MATLAB v5 file: {error}") from None
    limit = len(data) * MAX_GZIP_RATIO
    for variable, shape, _ in variables:
        elements = math.prod(shape)
        if variable in SVHN_VARIABLES and elements > limit:
            raise DatasetFilesError(
                f"{name}: variable {variable!r} declares {elements} elements {tuple(shape)}, more than "
                f"{MAX_GZIP_RATIO} per byte of its {len(data)}-byte file: refused before decoding"
            )


def _svhn_split(reader: FileReader, name: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat  # imported on use: only SVHN needs it

    data = reader.read(name)
    _check_mat_sizes(data, name)
    try:
        # MATLAB v5: scipy parses the documented container itself, executing nothing from the file.
        # scipy raises NotImplementedError for MATLAB v7.3 (HDF5) files: refused with the same clear error.
        mat = loadmat(io.BytesIO(data), variable_names=list(SVHN_VARIABLES))
    except (ValueError, TypeError, OSError, NotImplementedError, KeyError) as error:
        raise DatasetFilesError(f"{name} is not a readable MATLAB v5 file: {error}") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        raise DatasetFilesError(f"{name}: 'X' must be a uint8 H x W x 3 x N array")
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iuf" or y.size != x.shape[3]:
        raise DatasetFilesError(f"{name}: 'y' must hold one label per image ({x.shape[3]})")
    labels = y.reshape(-1)
    if labels.size and (not np.all(labels == np.round(labels)) or labels.min() < 1 or labels.max() > 10):
        raise DatasetFilesError(f"{name}: labels must be whole numbers in 1..10")
    labels = labels.astype(np.int64)
    labels[labels == SVHN_ZERO_LABEL] = 0
    # H x W x C x N (MATLAB order) → N x C x H x W, as torchvision's transpose (3, 2, 0, 1).
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), labels


def read_svhn(reader: FileReader, config: SvhnConfig) -> FileDataset:
    x_train, y_train = _svhn_split(reader, "train_32x32.mat")
    if config.train_split == "train+extra":
        x_extra, y_extra = _svhn_split(reader, "extra_32x32.mat")
        x_train, y_train = np.concatenate([x_train, x_extra]), np.concatenate([y_train, y_extra])
    x_test, y_test = _svhn_split(reader, "test_32x32.mat")
    return FileDataset(x_train, y_train, x_test, y_test, [str(d) for d in range(10)])


# ------------------------------------------------------------------------------------------------ MNIST
def parse_idx(data: bytes, name: str, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes: 0x00 0x00 0x08 <ndim>, ndim big-endian uint32 sizes, then the bytes."""
    header = 4 + 4 * ndim
    if len(data) < header or data[0:2] != b"\x00\x00" or data[2] != IDX_UBYTE or data[3] != ndim:
        raise DatasetFilesError(f"{name}: not an idx file of unsigned bytes with {ndim} dimension(s)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DatasetFilesError(
            f"{name}: header says {shape} ({expected} bytes), the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _mnist_split(reader: FileReader, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = parse_idx(reader.read_maybe_gzip(f"{prefix}-images-idx3-ubyte"), f"{prefix}-images", 3)
    labels = parse_idx(reader.read_maybe_gzip(f"{prefix}-labels-idx1-ubyte"), f"{prefix}-labels", 1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFilesError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() >= MNIST_CLASSES:
        raise DatasetFilesError(f"{prefix}: labels must lie in [0, {MNIST_CLASSES})")
    return images[:, np.newaxis], labels.astype(np.int64)


def _read_idx_pair(class_names: list[str]) -> Callable[[FileReader, DataRootConfig], FileDataset]:
    def read(reader: FileReader, config: DataRootConfig) -> FileDataset:
        x_train, y_train = _mnist_split(reader, "train")
        x_test, y_test = _mnist_split(reader, "t10k")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DatasetFilesError("train and t10k images differ in size")
        return FileDataset(x_train, y_train, x_test, y_test, class_names)

    return read


FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


# ----------------------------------------------------------------------------------------- ImageFolder
def _decode(data: bytes, name: str, config: ImageFolderConfig) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DatasetFilesError(
                        f"{name}: {width}x{height} is more than {MAX_IMAGE_PIXELS} pixels"
                    )
                converted = image.convert("RGB" if config.channels == 3 else "L")
                if config.image_size is not None:
                    target_height, target_width = config.image_size
                    converted = converted.resize((target_width, target_height), Image.Resampling.BILINEAR)
                pixels = np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning) as error:
        raise DatasetFilesError(f"{name} is not a readable PNG/JPEG image: {error}") from None
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _image_tree(reader: FileReader, base: str) -> dict[str, list[str]]:
    """class name → its image files (relative names, sorted), for the ImageFolder rooted at ``base``."""
    directory = reader.directory / base if base else reader.directory
    classes: dict[str, list[str]] = {}
    for entry in sorted(directory.iterdir()) if directory.is_dir() else []:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        prefix = f"{base}/{entry.name}" if base else entry.name
        images = [n for n in walk_files(reader, prefix) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if images:
            classes[entry.name] = images
    return classes


def _decode_all(
    reader: FileReader, files: list[tuple[str, int]], config: ImageFolderConfig
) -> tuple[np.ndarray, np.ndarray]:
    images: list[np.ndarray] = []
    for name, _ in files:
        image = _decode(reader.read(name), name, config)
        if images and image.shape != images[0].shape:
            raise DatasetFilesError(
                f"{name} is {image.shape[2]}x{image.shape[1]}, {files[0][0]} is "
                f"{images[0].shape[2]}x{images[0].shape[1]}: set image_size to resize them to one size"
            )
        images.append(image)
    return np.stack(images), np.asarray([label for _, label in files], dtype=np.int64)


def read_image_folder(reader: FileReader, config: ImageFolderConfig) -> FileDataset:
    if config.test_fraction is None:
        train_tree, test_tree = _image_tree(reader, "train"), _image_tree(reader, "test")
        if not train_tree or not test_tree:
            raise DatasetFilesError("expected train/<class>/<image> and test/<class>/<image> (PNG or JPEG)")
        unknown = sorted(set(test_tree) - set(train_tree))
        if unknown:
            raise DatasetFilesError(f"test/ has classes that train/ lacks: {unknown[:5]}")
    else:
        train_tree, test_tree = _image_tree(reader, ""), {}
        if not train_tree:
            raise DatasetFilesError("expected <class>/<image> subfolders of PNG or JPEG images")
    names = sorted(train_tree)
    if len(names) < MIN_CLASSES:
        raise DatasetFilesError(
            f"an ImageFolder needs at least {MIN_CLASSES} class folders, found {len(names)}"
        )
    index = {name: i for i, name in enumerate(names)}
    train_files = [(f, index[c]) for c in names for f in train_tree[c]]
    x_train, y_train = _decode_all(reader, train_files, config)
    if config.test_fraction is None:
        test_files = [(f, index[c]) for c in sorted(test_tree) for f in test_tree[c]]
        x_test, y_test = _decode_all(reader, test_files, config)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DatasetFilesError("train/ and test/ images differ in size: set image_size")
    else:
        train_index, test_index = stratified_split(y_train, config.test_fraction, config.split_seed)
        x_train, y_train, x_test, y_test = (
            x_train[train_index],
            y_train[train_index],
            x_train[test_index],
            y_train[test_index],
        )
    return FileDataset(x_train, y_train, x_test, y_test, names)


for _format in (
    DataRootFormat("cifar10", "CIFAR-10 python version (cifar-10-batches-py).", DataRootConfig, read_cifar10),
    DataRootFormat("cifar100", "CIFAR-100 python version (cifar-100-python).", Cifar100Config, read_cifar100),
    DataRootFormat(
        "svhn",
        "SVHN cropped digits (train_32x32.mat, test_32x32.mat; extra_32x32.mat with train_split "
        "train+extra).",
        SvhnConfig,
        read_svhn,
    ),
    DataRootFormat(
        "mnist", "MNIST idx files (MNIST/raw).", DataRootConfig, _read_idx_pair([str(d) for d in range(10)])
    ),
    DataRootFormat(
        "fashion_mnist",
        "Fashion-MNIST idx files (FashionMNIST/raw).",
        DataRootConfig,
        _read_idx_pair(FASHION_CLASSES),
    ),
    DataRootFormat(
        "image_folder",
        "Class subfolders of PNG/JPEG images (torchvision ImageFolder).",
        ImageFolderConfig,
        read_image_folder,
    ),
):
    DATA_ROOT_FORMATS.register(_format)

__all__ = [
    "DATA_ROOT_FORMATS",
    "Cifar100Config",
    "DataRootConfig",
    "DataRootFormat",
    "FileDataset",
    "ImageFolderConfig",
    "NormalizationConfig",
    "SvhnConfig",
    "parse_idx",
    "to_array_dataset",
]
