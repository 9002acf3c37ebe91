"""validate_npz on legitimate datasets, malformed archives, bombs and bad arrays."""

from __future__ import annotations

import hashlib
import io
import struct
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.intake import IntakeError, NpzDataset, validate_npz
from app.intake.npz_check import MAX_NUM_CLASSES

LIMIT = 64 * 1024 * 1024
CENTRAL_DIRECTORY_SIGNATURE = b"PK\x01\x02"
ZIP_BOMB_MEMBER_BYTES = 200 * 1024 * 1024
ZIP_STREAM_CHUNK_BYTES = 1024 * 1024


def _arrays(**overrides: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.standard_normal((12, 5)).astype(np.float32),
        "y_train": np.arange(12) % 3,
        "x_test": rng.standard_normal((6, 5)).astype(np.float32),
        "y_test": np.arange(6) % 3,
    }
    arrays.update(overrides)
    return {name: value for name, value in arrays.items() if value is not None}


def _npz(arrays: dict[str, Any], *, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _valid_members(**overrides: bytes) -> dict[str, bytes]:
    members = {f"{name}.npy": _npy(value) for name, value in _arrays().items()}
    members.update(overrides)
    return members


def _patch_central_directory(data: bytes, member_name: str, **fields: int) -> bytes:
    """Overwrite a member's central-directory record (what zipfile trusts) without touching its data."""
    layout = {"flag_bits": (8, "<H"), "compress_size": (20, "<I"), "file_size": (24, "<I")}
    patched = bytearray(data)
    position = patched.find(CENTRAL_DIRECTORY_SIGNATURE)
    while position != -1:
        name_length = struct.unpack_from("<H", patched, position + 28)[0]
        name = bytes(patched[position + 46 : position + 46 + name_length]).decode()
        if name == member_name:
            for field, value in fields.items():
                offset, fmt = layout[field]
                struct.pack_into(fmt, patched, position + offset, value)
            return bytes(patched)
        position = patched.find(CENTRAL_DIRECTORY_SIGNATURE, position + 4)
    raise AssertionError(f"{member_name} not in archive")


def _validate(data: bytes, **limits: int) -> NpzDataset:
    options = {"max_bytes": LIMIT, "max_uncompressed_bytes": LIMIT, **limits}
    return validate_npz(data, **options)


def _error(data: bytes, **limits: int) -> IntakeError:
    with pytest.raises(IntakeError) as excinfo:
        _validate(data, **limits)
    return excinfo.value


# --- legitimate datasets -------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_valid_tabular_dataset_is_returned_normalised(compressed: bool) -> None:
    arrays = _arrays(
        x_train=np.arange(60, dtype=np.float64).reshape(12, 5), y_train=(np.arange(12) % 4).astype(np.uint8)
    )
    data = _npz(arrays, compressed=compressed)
    dataset = _validate(data)
    assert dataset.x_train.dtype == np.float32 and dataset.x_test.dtype == np.float32
    assert dataset.y_train.dtype == np.int64 and dataset.y_test.dtype == np.int64
    np.testing.assert_array_equal(dataset.x_train, arrays["x_train"].astype(np.float32))
    assert (dataset.n_train, dataset.n_test, dataset.input_shape) == (12, 6, (5,))
    assert dataset.num_classes == 4
    assert dataset.sha256 == hashlib.sha256(data).hexdigest()
    assert dataset.to_manifest()["num_classes"] == 4


def test_uint8_images_are_scaled_and_get_a_channel_axis() -> None:
    x_train = np.full((4, 7, 6), 255, dtype=np.uint8)
    x_train[0, 0, 0] = 0
    dataset = _validate(
        _npz(
            _arrays(
                x_train=x_train,
                y_train=np.array([0, 1, 0, 1]),
                x_test=np.zeros((2, 7, 6), np.uint8),
                y_test=np.array([1, 0]),
            )
        )
    )
    assert dataset.x_train.shape == (4, 1, 7, 6) and dataset.x_test.shape == (2, 1, 7, 6)
    assert dataset.input_shape == (1, 7, 6)
    assert dataset.x_train.dtype == np.float32
    assert dataset.x_train.min() == 0.0 and dataset.x_train.max() == 1.0
    assert dataset.x_train.flags.c_contiguous


def test_nchw_float16_big_endian_images_are_accepted() -> None:
    x_train = np.ones((4, 3, 2, 2), dtype=">f2")
    dataset = _validate(
        _npz(
            _arrays(
                x_train=x_train,
                y_train=np.array([0, 1, 2, 1]),
                x_test=np.ones((1, 3, 2, 2), np.float32),
                y_test=np.array([2]),
            )
        )
    )
    assert dataset.x_train.shape == (4, 3, 2, 2) and dataset.x_train.dtype == np.float32
    assert dataset.x_train.dtype.isnative


def test_float_labels_with_whole_values_become_int64() -> None:
    dataset = _validate(_npz(_arrays(y_train=(np.arange(12) % 3).astype(np.float32))))
    assert dataset.y_train.dtype == np.int64
    np.testing.assert_array_equal(dataset.y_train, np.arange(12) % 3)


def test_explicit_num_classes_allows_unseen_top_classes() -> None:
    dataset = _validate(_npz(_arrays(num_classes=np.array(10))))
    assert dataset.num_classes == 10


# --- not an npz at all -----------------------------------------------------------------------------------


def test_oversized_upload_is_rejected_before_parsing() -> None:
    data = _npz(_arrays())
    error = _error(data, max_bytes=len(data) - 1)
    assert (error.code, error.status) == ("upload-too-large", 413)


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        (b"", "empty-upload", "empty"),
        (b"just some text", "npz-structure", "not an .npz"),
        (_npy(np.zeros(3)), "npz-structure", "single .npy array"),
        (_npz(_arrays())[:200], "npz-structure", "corrupt or truncated"),
        (b"PK\x05\x06" + b"\x00" * 18, "npz-structure", "empty"),
    ],
    ids=["empty", "text", "single-npy", "truncated", "empty-zip"],
)
def test_non_npz_uploads_are_rejected(data: bytes, code: str, fragment: str) -> None:
    error = _error(data)
    assert error.code == code
    assert fragment in error.detail


def test_object_array_is_rejected_without_unpickling(armed_object_npy: bytes, marker_path: Path) -> None:
    data = _zip(_valid_members(**{"x_train.npy": armed_object_npy}))
    error = _error(data)
    assert error.code == "pickle-rejected"
    assert "'x_train' has dtype object" in error.detail
    assert not marker_path.exists()


# --- zip structure and bombs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_bomb_npz() -> bytes:
    """~200 MB of zeros deflated into ~200 KB, written in 1 MiB chunks so the test stays light."""
    element_count = ZIP_BOMB_MEMBER_BYTES // 4
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (element_count,)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(ZIP_STREAM_CHUNK_BYTES)
            for _ in range(ZIP_BOMB_MEMBER_BYTES // ZIP_STREAM_CHUNK_BYTES):
                member.write(zeros)
        for name in ("y_train", "x_test", "y_test"):
            archive.writestr(f"{name}.npy", _npy(_arrays()[name]))
    return buffer.getvalue()


def _forbid_decompression(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, opening any zip member or calling np.load fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was opened/loaded before the bomb was detected")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)
    monkeypatch.setattr(np, "load", refuse)


def test_zip_bomb_is_rejected_by_declared_size_before_decompression(
    zero_bomb_npz: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(zero_bomb_npz) < 2 * 1024 * 1024
    _forbid_decompression(monkeypatch)
    tracemalloc.start()
    try:
        error = _error(zero_bomb_npz, max_uncompressed_bytes=64 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "zip-bomb"
    assert "declares" in error.detail
    assert peak < 16 * 1024 * 1024


def test_zip_bomb_is_rejected_by_compression_ratio_under_a_generous_limit(
    zero_bomb_npz: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forbid_decompression(monkeypatch)
    error = _error(zero_bomb_npz, max_bytes=LIMIT, max_uncompressed_bytes=1024 * 1024 * 1024)
    assert error.code == "zip-bomb"
    assert "expands from" in error.detail


def test_lying_large_declared_size_is_a_zip_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _patch_central_directory(_zip(_valid_members()), "x_train.npy", file_size=3_000_000_000)
    _forbid_decompression(monkeypatch)
    assert _error(data).code == "zip-bomb"


def test_understated_declared_size_is_caught_as_corruption() -> None:
    members = _valid_members()
    data = _patch_central_directory(_zip(members), "x_train.npy", file_size=len(members["x_train.npy"]) - 40)
    error = _error(data)
    assert error.code == "npz-structure"
    assert "'x_train' is corrupt" in error.detail


def test_npy_header_claiming_a_huge_array_is_rejected_without_allocating() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 5)}
    )
    lying_member = header.getvalue() + b"\x00" * 80
    error = _error(_zip(_valid_members(**{"x_train.npy": lying_member})))
    assert error.code == "npz-structure"
    assert "80 bytes of data" in error.detail


def test_too_many_entries_is_a_zip_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zip({f"extra_{index}.npy": _npy(np.zeros(1)) for index in range(17)})
    _forbid_decompression(monkeypatch)
    error = _error(data)
    assert error.code == "zip-bomb"
    assert "17 entries" in error.detail


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../x_train.npy", "not a plain file name"),
        ("data/x_train.npy", "not a plain file name"),
        ("C:x_train.npy", "not a plain file name"),
        ("notes.txt", "not a .npy array"),
    ],
)
def test_unsafe_or_foreign_member_names_are_rejected(name: str, fragment: str) -> None:
    error = _error(_zip({**_valid_members(), name: _npy(np.zeros(1))}))
    assert error.code == "npz-structure"
    assert fragment in error.detail


def test_duplicate_member_names_are_rejected() -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate we want
        for name, content in _valid_members().items():
            archive.writestr(name, content)
        archive.writestr("x_train.npy", _npy(np.ones((12, 5))))
    error = _error(buffer.getvalue())
    assert error.code == "npz-structure"
    assert "more than once" in error.detail


def test_encrypted_and_exotic_compression_members_are_rejected() -> None:
    encrypted = _patch_central_directory(_zip(_valid_members()), "y_train.npy", flag_bits=0x1)
    assert "encrypted" in _error(encrypted).detail
    bzip2 = _zip(_valid_members(), compression=zipfile.ZIP_BZIP2)
    assert "compression method 12" in _error(bzip2).detail


def test_corrupt_compressed_data_is_reported_not_raised_raw() -> None:
    # Random floats do not compress, so the member's deflate stream spans most of the file.
    noise = np.random.default_rng(1).standard_normal((12, 5000)).astype(np.float32)
    data = bytearray(_npz(_arrays(x_train=noise, x_test=noise[:6]), compressed=True))
    middle = data.find(b"x_train.npy") + noise.nbytes // 2
    data[middle : middle + 64] = bytes(64)
    error = _error(bytes(data))
    assert error.code == "npz-structure"
    assert "'x_train'" in error.detail


# --- array set, dtypes and shapes ---------------------------------------------------------------------------


def test_missing_array_is_reported() -> None:
    error = _error(_npz(_arrays(y_test=None)))
    assert error.code == "npz-missing-array"
    assert [item["array"] for item in error.errors] == ["y_test"]


def test_extra_array_is_reported() -> None:
    error = _error(_npz(_arrays(notes=np.zeros(1))))
    assert error.code == "npz-unexpected-array"
    assert [item["array"] for item in error.errors] == ["notes"]


def test_positional_savez_gets_a_naming_hint() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, np.zeros((3, 2)), np.arange(3))
    error = _error(buffer.getvalue())
    assert error.code == "npz-arrays-mismatch"
    assert "positionally" in error.detail
    assert len(error.errors) == 6


@pytest.mark.parametrize(
    ("overrides", "bad_array"),
    [
        ({"x_train": np.ones((12, 5), dtype=bool)}, "x_train"),
        ({"x_train": np.ones((12, 5), dtype=np.complex64)}, "x_train"),
        ({"x_test": np.full((6, 5), "a")}, "x_test"),
        ({"x_train": np.ones((12, 5), dtype=np.int64)}, "x_train"),
        ({"y_train": np.ones(12, dtype=bool)}, "y_train"),
        ({"y_test": np.array(["a"] * 6)}, "y_test"),
        ({"num_classes": np.array(3.0)}, "num_classes"),
    ],
    ids=["x-bool", "x-complex", "x-string", "x-int64", "y-bool", "y-string", "num-classes-float"],
)
def test_disallowed_dtypes_are_rejected(overrides: dict[str, np.ndarray], bad_array: str) -> None:
    error = _error(_npz(_arrays(**overrides)))
    assert error.code == "dtype-not-allowed"
    assert [item["array"] for item in error.errors] == [bad_array]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"y_train": np.eye(3)[np.arange(12) % 3]}, "y.argmax(axis=1)"),
        ({"y_train": np.arange(11) % 3}, "'x_train' has 12 samples but 'y_train' has 11 labels"),
        (
            {"x_test": np.zeros((6, 4), np.float32)},
            "Training samples have shape [5] but test samples have [4]",
        ),
        ({"x_train": np.zeros(12, np.float32)}, "x.reshape(-1, 1)"),
        ({"x_train": np.zeros((12, 1, 1, 1, 1), np.float32)}, "NxF, NxHxW or NxCxHxW"),
        (
            {"x_train": np.zeros((12, 0), np.float32), "x_test": np.zeros((6, 0), np.float32)},
            "each sample is empty",
        ),
        ({"num_classes": np.array([3, 4])}, "must be a scalar"),
    ],
    ids=["one-hot", "length", "trailing-shape", "x-1d", "x-5d", "zero-features", "num-classes-vector"],
)
def test_shape_problems_are_rejected(overrides: dict[str, np.ndarray], fragment: str) -> None:
    error = _error(_npz(_arrays(**overrides)))
    assert error.code == "shape-mismatch"
    assert fragment in error.detail


def test_empty_split_is_rejected() -> None:
    error = _error(_npz(_arrays(x_test=np.zeros((0, 5), np.float32), y_test=np.zeros(0, np.int64))))
    assert error.code == "empty-split"
    assert "test split has no samples" in error.detail


# --- values ------------------------------------------------------------------------------------------------


def test_non_finite_features_are_counted() -> None:
    x_train = _arrays()["x_train"]
    x_train[0, 0], x_train[1, 1], x_train[2, 2] = np.nan, np.inf, np.nan
    error = _error(_npz(_arrays(x_train=x_train)))
    assert error.code == "non-finite-values"
    assert (error.errors[0]["nan_count"], error.errors[0]["inf_count"]) == (2, 1)


def test_float64_beyond_float32_range_is_non_finite_after_conversion() -> None:
    x_test = np.zeros((6, 5))
    x_test[0, 0] = 1e300
    error = _error(_npz(_arrays(x_test=x_test)))
    assert error.code == "non-finite-values"
    assert "beyond float32" in error.detail


def test_fractional_float_labels_are_rejected() -> None:
    y_train = (np.arange(12) % 3).astype(np.float64)
    y_train[4] = 1.5
    error = _error(_npz(_arrays(y_train=y_train)))
    assert error.code == "non-integer-labels"
    assert error.errors[0]["first_index"] == 4 and error.errors[0]["count"] == 1


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"y_test": np.array([0, 1, 2, -1, 0, 1])}, "1 negative label(s) (smallest -1)"),
        ({"y_train": np.full(12, MAX_NUM_CLASSES + 5)}, f">= {MAX_NUM_CLASSES}"),
        ({"num_classes": np.array(3), "y_test": np.array([0, 1, 2, 5, 0, 1])}, "1 label(s) >= 3 (largest 5)"),
        ({"num_classes": np.array(MAX_NUM_CLASSES + 1)}, "at most"),
    ],
    ids=["negative", "huge-inferred", "beyond-explicit", "explicit-too-many"],
)
def test_labels_out_of_range_are_rejected(overrides: dict[str, np.ndarray], fragment: str) -> None:
    error = _error(_npz(_arrays(**overrides)))
    assert error.code == "label-out-of-range"
    assert fragment in error.detail


@pytest.mark.parametrize(
    "overrides",
    [
        {"y_train": np.zeros(12, np.int64), "y_test": np.zeros(6, np.int64)},
        {"y_train": np.ones(12, np.int64)},
        {"num_classes": np.array(1), "y_train": np.zeros(12, np.int64), "y_test": np.zeros(6, np.int64)},
    ],
    ids=["all-zero", "single-train-class", "explicit-one-class"],
)
def test_fewer_than_two_classes_is_rejected(overrides: dict[str, np.ndarray]) -> None:
    assert _error(_npz(_arrays(**overrides))).code == "too-few-classes"
