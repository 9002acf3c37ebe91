"""Writers of tiny datasets in torchvision's exact on-disk formats (shared by the engine and API tests)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str = "labels") -> None:
    """A CIFAR python batch: a pickled dict (protocol 2, as the released files) of uint8 rows and labels."""
    batch = {
        "batch_label": "tiny",
        label_key: labels,
        "data": data,
        "filenames": [f"{i}.png" for i in labels],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(directory: Path, per_batch: int = 2, test: int = 3, seed: int = 0) -> np.ndarray:
    """cifar-10-batches-py with five train batches of ``per_batch`` images; returns every train row."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        rows.append(data)
        cifar_batch(directory / f"data_batch_{index}", data, [(index + i) % 10 for i in range(per_batch)])
    cifar_batch(
        directory / "test_batch", rng.integers(0, 256, (test, 3072), dtype=np.uint8), list(range(test))
    )
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(rows)


def write_cifar100(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", 4), ("test", 2)):
        batch = {
            "data": np.full((n, 3072), 7, dtype=np.uint8),
            "fine_labels": [99 - i for i in range(n)],
            "coarse_labels": [19 - i for i in range(n)],
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    (directory / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_svhn(directory: Path) -> np.ndarray:
    """train_32x32.mat / test_32x32.mat: X is H x W x 3 x N uint8, y is N x 1 with 10 for the digit 0."""
    directory.mkdir(parents=True, exist_ok=True)
    x = np.arange(32 * 32 * 3 * 3, dtype=np.int64).reshape(32, 32, 3, 3).astype(np.uint8)
    savemat(directory / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [9]], dtype=np.uint8)})
    savemat(directory / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[2], [10]], dtype=np.uint8)})
    return x


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, gz: bool = False) -> np.ndarray:
    directory.mkdir(parents=True, exist_ok=True)
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte": idx_bytes(images),
        "train-labels-idx1-ubyte": idx_bytes(np.array([5, 0, 4])),
        "t10k-images-idx3-ubyte": idx_bytes(images[:2]),
        "t10k-labels-idx1-ubyte": idx_bytes(np.array([7, 2])),
    }
    for name, data in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return images


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> None:
    """A solid ``size`` (width, height) image; the format follows the suffix (PNG, or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
