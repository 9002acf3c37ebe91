"""The data-root formats, each written as tiny files in torchvision's exact on-disk layout, read back with
shapes, labels and normalisation checked against hand-computed values; and the refusals (missing files, bad
headers, path traversal, links out of the root, a pickle with a ``__reduce__`` gadget)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from tests.workers.engine.datasets.data_root_files import (
    cifar_batch,
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_image,
    write_mnist,
    write_svhn,
)
from workers.engine.datasets import ArrayDataset
from workers.engine.datasets.data_root import (
    DataRootConfigError,
    DataRootPathError,
    DatasetFilesError,
    read_dataset,
)
from workers.engine.device_inputs import device_inputs
from workers.engine.errors import InvalidInputError

CPU = torch.device("cpu")


def test_cifar10_layout_shapes_labels_and_normalisation(tmp_path: Path) -> None:
    rows = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=2, test=3)
    config = {"normalization": {"mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]}}
    read = read_dataset(tmp_path, "cifar10", "cifar-10-batches-py", config)
    data = read.dataset
    assert data.x_train.dtype == np.uint8 and data.x_train.shape == (10, 3, 32, 32)
    assert data.x_test.shape == (3, 3, 32, 32) and data.num_classes == 10
    # Batch i holds labels (i + j) % 10: batches 1..5 of two images each, in file order.
    assert data.y_train.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert data.y_test.tolist() == [0, 1, 2]
    # Each row is the red plane, then green, then blue, each 32 rows of 32 pixels.
    first = rows[0]
    assert data.x_train[0, 0, 0, 0] == first[0] and data.x_train[0, 1, 0, 0] == first[1024]
    assert data.x_train[0, 2, 31, 31] == first[3071]
    assert read.class_names[3] == "class3" and len(read.files) == 7
    # On the device: pixel / 255, then (x - mean) / std per channel.
    inputs = device_inputs(data, data.x_train, CPU)
    assert inputs.dtype == torch.float32
    for channel, (mean, std) in enumerate([(0.5, 0.5), (0.25, 0.25), (0.0, 1.0)]):
        expected = (float(data.x_train[0, channel, 0, 0]) / 255.0 - mean) / std
        assert inputs[0, channel, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert data.input_record() == {
        "dtype": "uint8", "scale": 1 / 255, "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0],
    }  # fmt: skip


def test_the_digest_is_of_the_content(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "a", seed=1)
    write_cifar10(tmp_path / "b", seed=1)
    write_cifar10(tmp_path / "c", seed=2)
    digests = [read_dataset(tmp_path, "cifar10", name, {}).files_sha256 for name in "abc"]
    assert digests[0] == digests[1] != digests[2]


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    fine = read_dataset(tmp_path, "cifar100", "cifar-100-python", {}).dataset
    assert fine.num_classes == 100 and fine.y_train.tolist() == [99, 98, 97, 96]
    coarse = read_dataset(tmp_path, "cifar100", "cifar-100-python", {"label": "coarse"}).dataset
    assert coarse.num_classes == 20 and coarse.y_test.tolist() == [19, 18]
    assert np.all(fine.x_train == 7) and fine.x_train.shape == (4, 3, 32, 32)


def test_svhn_mat_files(tmp_path: Path) -> None:
    x = write_svhn(tmp_path / "svhn")
    data = read_dataset(tmp_path, "svhn", "svhn", {}).dataset
    assert data.y_train.tolist() == [0, 1, 9] and data.y_test.tolist() == [2, 0]  # 10 is the digit 0
    assert data.x_train.shape == (3, 3, 32, 32)
    # X[h, w, c, n] → x[n, c, h, w]
    assert data.x_train[2, 1, 5, 7] == x[5, 7, 1, 2]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_idx_files(tmp_path: Path, name: str, gz: bool) -> None:
    images = write_mnist(tmp_path / "raw", gz=gz)
    read = read_dataset(tmp_path, name, "raw", {"normalization": {"mean": [0.1307], "std": [0.3081]}})
    data = read.dataset
    assert data.x_train.shape == (3, 1, 28, 28) and data.y_train.tolist() == [5, 0, 4]
    assert data.y_test.tolist() == [7, 2] and np.array_equal(data.x_train[:, 0], images)
    value = device_inputs(data, data.x_train[1:2], CPU)[0, 0, 3, 4].item()
    assert value == pytest.approx((float(images[1, 3, 4]) / 255 - 0.1307) / 0.3081, abs=1e-5)
    assert read.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")


def test_image_folder_train_test_and_resize(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    write_image(root / "train" / "cat" / "a.png", (255, 0, 0))
    write_image(root / "train" / "cat" / "b.jpg", (250, 0, 0))
    write_image(root / "train" / "dog" / "c.png", (0, 0, 255))
    write_image(root / "test" / "dog" / "d.png", (0, 0, 255))
    (root / "train" / "dog" / "notes.txt").write_text("ignored, as torchvision ignores it")
    data = read_dataset(tmp_path, "image_folder", "pets", {}).dataset
    assert data.x_train.shape == (3, 3, 3, 4) and data.y_train.tolist() == [0, 0, 1]
    assert data.y_test.tolist() == [1] and data.num_classes == 2
    assert data.x_train[0, :, 0, 0].tolist() == [255, 0, 0] and data.x_train[2, 2, 1, 1] == 255
    resized = read_dataset(tmp_path, "image_folder", "pets", {"image_size": [8, 6], "channels": 1}).dataset
    assert resized.x_train.shape == (3, 1, 8, 6)
    # L = (299 R + 587 G + 114 B) / 1000: pure red is 76.
    assert resized.x_train[0, 0, 4, 3] == 76


def test_image_folder_sizes_must_match_unless_resized(tmp_path: Path) -> None:
    write_image(tmp_path / "f" / "a" / "1.png", (1, 2, 3), size=(4, 4))
    write_image(tmp_path / "f" / "b" / "2.png", (1, 2, 3), size=(5, 4))
    write_image(tmp_path / "f" / "b" / "3.png", (1, 2, 3), size=(5, 4))
    write_image(tmp_path / "f" / "a" / "4.png", (1, 2, 3), size=(4, 4))
    with pytest.raises(DatasetFilesError, match="set image_size"):
        read_dataset(tmp_path, "image_folder", "f", {"test_fraction": 0.5})
    split = read_dataset(tmp_path, "image_folder", "f", {"test_fraction": 0.5, "image_size": [4, 4]}).dataset
    assert split.n_train == 2 and split.n_test == 2 and sorted(split.y_test.tolist()) == [0, 1]


def test_refusals_missing_files_and_bad_headers(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(DatasetFilesError, match="missing file 'data_batch_3'"):
        read_dataset(tmp_path, "cifar10", "c", {})
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2, 3]))[:-1])
    with pytest.raises(DatasetFilesError, match="header says"):
        read_dataset(tmp_path, "mnist", "m", {})
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DatasetFilesError, match="not an idx file"):
        read_dataset(tmp_path, "mnist", "m", {})
    write_cifar10(tmp_path / "w")
    cifar_batch(tmp_path / "w" / "test_batch", np.zeros((2, 100), dtype=np.uint8), [0, 1])
    with pytest.raises(DatasetFilesError, match="N x 3072"):
        read_dataset(tmp_path, "cifar10", "w", {})
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "train_32x32.mat").write_bytes(b"not matlab at all" * 10)
    with pytest.raises(DatasetFilesError, match="MATLAB"):
        read_dataset(tmp_path, "svhn", "s", {})
    with pytest.raises(DataRootConfigError):
        read_dataset(tmp_path, "cifar10", "c", {"normalization": {"mean": [0.5], "std": [0.0]}})
    with pytest.raises(InvalidInputError, match="unknown data-root format"):
        read_dataset(tmp_path, "imagenet", "c", {})


def test_refusals_paths(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_cifar10(root / "inside")
    write_cifar10(outside / "c")
    os.symlink(outside / "c", root / "link-out")
    os.symlink(root / "inside", root / "link-in")
    (root / "mixed").mkdir()
    for name in os.listdir(root / "inside"):
        os.symlink(root / "inside" / name, root / "mixed" / name)
    os.unlink(root / "mixed" / "test_batch")
    os.symlink(outside / "c" / "test_batch", root / "mixed" / "test_batch")
    for path in ("../outside/c", "/etc", str(outside / "c"), "inside/../../outside/c", "link-out", "a\\b"):
        with pytest.raises(DataRootPathError):
            read_dataset(root, "cifar10", path, {})
    with pytest.raises(DataRootPathError, match="test_batch"):  # one file linked out of the root
        read_dataset(root, "cifar10", "mixed", {})
    with pytest.raises(DatasetFilesError, match="does not exist"):
        read_dataset(root, "cifar10", "nowhere", {})
    assert read_dataset(root, "cifar10", "link-in", {}).dataset.n_train == 10  # links inside are fine


class Gadget:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_gadget_is_refused_and_never_runs(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c")
    marker = tmp_path / "pwned"
    batch = {"data": Gadget(marker), "labels": [0]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(InvalidInputError, match=r"not a safe data pickle: refused to load posix\.system"):
        read_dataset(tmp_path, "cifar10", "c", {})
    assert not marker.exists()
    # An object array (numpy would rebuild its items with pickle) is refused too.
    objects = {"data": np.array([object()] * 2, dtype=object), "labels": [0, 1]}
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(objects, protocol=2))
    with pytest.raises(InvalidInputError, match="not a safe data pickle"):
        read_dataset(tmp_path, "cifar10", "c", {})


def test_uint8_arrays_round_trip_the_store_at_their_size() -> None:
    rng = np.random.default_rng(0)
    data = ArrayDataset.from_arrays(
        rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8).astype(np.float32) / 255,
        np.arange(6) % 2, np.zeros((2, 3, 4, 4), np.float32), np.array([0, 1]),
    )  # fmt: skip
    pixels = rng.integers(0, 256, (200, 3, 8, 8), dtype=np.uint8)
    uint8 = ArrayDataset(
        x_train=pixels, y_train=np.arange(200) % 2, x_test=pixels[:4], y_test=np.arange(4) % 2,
        num_classes=2, task=data.task, input_shape=(3, 8, 8),
    ).validate()  # fmt: skip
    blob = uint8.to_npz_bytes()
    assert len(blob) < pixels.nbytes * 1.05 + 4096  # uint8 size plus headers and labels, not float32's
    back = ArrayDataset.from_npz_bytes(blob)
    assert back.x_train.dtype == np.uint8 and np.array_equal(back.x_train, pixels)
    assert back.normalization is None


def test_svhn_extra_split_is_appended_to_train(tmp_path: Path) -> None:
    x = write_svhn(tmp_path / "svhn")
    extra = np.full((32, 32, 3, 2), 200, dtype=np.uint8)
    savemat(tmp_path / "svhn" / "extra_32x32.mat", {"X": extra, "y": np.array([[3], [10]], dtype=np.uint8)})
    read = read_dataset(tmp_path, "svhn", "svhn", {"train_split": "train+extra"})
    data = read.dataset
    assert data.y_train.tolist() == [0, 1, 9, 3, 0] and data.x_train.shape == (5, 3, 32, 32)
    assert data.x_train[2, 1, 5, 7] == x[5, 7, 1, 2] and np.all(data.x_train[3:] == 200)
    assert data.y_test.tolist() == [2, 0]
    assert "extra_32x32.mat" in [f["name"] for f in read.files]  # in the content digest
    plain = read_dataset(tmp_path, "svhn", "svhn", {})
    assert plain.dataset.n_train == 3 and "extra_32x32.mat" not in [f["name"] for f in plain.files]
    (tmp_path / "svhn" / "extra_32x32.mat").unlink()
    with pytest.raises(DatasetFilesError, match=r"extra_32x32\.mat"):
        read_dataset(tmp_path, "svhn", "svhn", {"train_split": "train+extra"})


def test_svhn_compressed_mat_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MATLAB v5 file of zlib-compressed zeros declares far more elements than its bytes could hold at a
    sane ratio: refused from the variable headers, and scipy's loadmat (the decoder) is never called."""
    import scipy.io

    directory = tmp_path / "bomb"
    write_svhn(directory)
    zeros = np.zeros((32, 32, 3, 2000), dtype=np.uint8)  # 6 MB of zeros, a few KB compressed
    savemat(directory / "train_32x32.mat", {"X": zeros, "y": np.ones((2000, 1))}, do_compression=True)
    assert (directory / "train_32x32.mat").stat().st_size * 64 < zeros.size

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(scipy.io, "loadmat", never)
    with pytest.raises(DatasetFilesError, match="declares 6144000 elements"):
        read_dataset(tmp_path, "svhn", "bomb", {})
