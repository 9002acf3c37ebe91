"""validate_safetensors / load_safetensors_arrays on legitimate and hand-corrupted files."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from app.intake import IntakeError, load_safetensors_arrays, validate_safetensors, weights_digest
from app.intake.safetensors_check import MAX_HEADER_BYTES, MAX_TENSOR_RANK

LIMIT = 10 * 1024 * 1024

# A tiny CNN-with-BatchNorm state_dict, as the architecture registry would describe it.
EXPECTED: dict[str, tuple[tuple[int, ...], str]] = {
    "conv.weight": ((4, 1, 3, 3), "float32"),
    "bn.weight": ((4,), "float32"),
    "bn.running_mean": ((4,), "float32"),
    "bn.num_batches_tracked": ((), "int64"),
    "fc.weight": ((10, 4), "torch.float32"),
    "fc.bias": ((10,), "F32"),
}


def _state_dict(float_dtype: type[np.floating[Any]] = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        name: rng.standard_normal(shape).astype(float_dtype) for name, (shape, _) in EXPECTED.items()
    }
    arrays["bn.num_batches_tracked"] = np.array(17, dtype=np.int64)
    return arrays


def _raw_file(header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Assemble a safetensors file by hand so the header can say anything."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    declared = len(header_bytes) if length is None else length
    return struct.pack("<Q", declared) + header_bytes + data


def _entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _bf16_bits(values: list[float]) -> bytes:
    """Truncate float32 values to bfloat16 bit patterns (exact for the values used here)."""
    as_uint32 = np.asarray(values, dtype=np.float32).view(np.uint32)
    return (as_uint32 >> 16).astype("<u2").tobytes()


def _error(data: bytes, expected: dict[str, tuple[tuple[int, ...], str]] | None = None) -> IntakeError:
    with pytest.raises(IntakeError) as excinfo:
        validate_safetensors(data, expected, max_bytes=LIMIT)
    return excinfo.value


# --- legitimate files -----------------------------------------------------------------------------


def test_valid_checkpoint_summary_describes_the_file() -> None:
    arrays = _state_dict()
    data = safetensors.numpy.save(arrays, metadata={"format": "pt", "epoch": "3"})
    summary = validate_safetensors(data, EXPECTED, max_bytes=LIMIT)
    assert set(summary.tensor_names) == set(EXPECTED)
    assert summary.shapes["conv.weight"] == (4, 1, 3, 3)
    assert summary.dtypes == {
        name: ("I64" if name == "bn.num_batches_tracked" else "F32") for name in EXPECTED
    }
    assert summary.total_params == sum(array.size for array in arrays.values())
    assert summary.total_bytes == len(data)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.metadata == {"format": "pt", "epoch": "3"}
    manifest = summary.to_manifest()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["tensors"]["fc.weight"] == {"dtype": "F32", "shape": [10, 4]}


def test_weights_digest_names_the_tensors_not_the_file() -> None:
    """Issue 14: a model's identity is its weights. Metadata (the producing job) and the tensors' order in
    the file change the file's hash but not the weights digest; one changed value, dtype, shape or name
    changes it."""
    arrays = _state_dict()
    first = safetensors.numpy.save(arrays, metadata={"job_id": "a"})
    second = safetensors.numpy.save(dict(reversed(list(arrays.items()))), metadata={"job_id": "b"})
    hand_ordered = _raw_file(
        {name: _entry("F32", [2], 8 * index, 8 * index + 8) for index, name in enumerate(("b", "a"))},
        np.array([3, 4, 1, 2], dtype="<f4").tobytes(),
    )
    reordered = _raw_file(
        {name: _entry("F32", [2], 8 * index, 8 * index + 8) for index, name in enumerate(("a", "b"))},
        np.array([1, 2, 3, 4], dtype="<f4").tobytes(),
    )
    assert first != second
    assert weights_digest(first) == weights_digest(second)
    assert validate_safetensors(first, EXPECTED, max_bytes=LIMIT).weights_sha256 == weights_digest(first)
    assert weights_digest(hand_ordered) == weights_digest(reordered)
    variants = []
    changed = dict(arrays)
    changed["fc.bias"] = arrays["fc.bias"].copy()
    changed["fc.bias"][0] = np.nextafter(changed["fc.bias"][0], np.float32(np.inf))
    variants.append(changed)
    variants.append({**arrays, "fc.bias": arrays["fc.bias"].astype(np.float64)})
    variants.append({**arrays, "fc.bias": arrays["fc.bias"].reshape(2, 5)})
    variants.append({("head.bias" if k == "fc.bias" else k): v for k, v in arrays.items()})
    digests = {weights_digest(safetensors.numpy.save(variant)) for variant in variants}
    assert weights_digest(first) not in digests and len(digests) == len(variants)


@pytest.mark.parametrize("float_dtype", [np.float16, np.float64])
def test_any_float_dtype_is_accepted_for_float_parameters(float_dtype: type[np.floating[Any]]) -> None:
    data = safetensors.numpy.save(_state_dict(float_dtype))
    summary = validate_safetensors(data, EXPECTED, max_bytes=LIMIT)
    assert summary.dtypes["fc.weight"] == {np.float16: "F16", np.float64: "F64"}[float_dtype]


def test_bf16_tensor_is_accepted_and_widened_exactly_on_load() -> None:
    values = [1.0, -2.5, 0.15625, 3.0e38, 0.0, -0.0]
    payload = _bf16_bits(values)
    data = _raw_file({"w": _entry("BF16", [2, 3], 0, len(payload))}, payload)
    summary = validate_safetensors(data, {"w": ((2, 3), "float32")}, max_bytes=LIMIT)
    assert summary.dtypes == {"w": "BF16"}
    loaded = load_safetensors_arrays(data)["w"]
    assert loaded.dtype == np.float32
    assert loaded.shape == (2, 3)
    expected_values = np.frombuffer(payload, "<u2").astype(np.uint32) << 16
    np.testing.assert_array_equal(loaded.reshape(-1).view(np.uint32), expected_values)
    assert loaded[0, 0] == 1.0 and loaded[0, 1] == -2.5


def test_loaded_arrays_are_writable_native_and_bool_aware() -> None:
    arrays = {
        "mask": np.array([True, False, True]),
        "w": np.arange(6, dtype=np.float64).reshape(2, 3),
        "steps": np.array([1, 2], dtype=np.int32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    loaded = load_safetensors_arrays(safetensors.numpy.save(arrays))
    for name, original in arrays.items():
        assert loaded[name].dtype == original.dtype
        np.testing.assert_array_equal(loaded[name], original)
        assert loaded[name].flags.writeable
        assert loaded[name].dtype.isnative


# --- size and format --------------------------------------------------------------------------------


def test_oversized_upload_is_rejected_with_413() -> None:
    data = safetensors.numpy.save({"w": np.zeros(1000, np.float32)})
    with pytest.raises(IntakeError) as excinfo:
        validate_safetensors(data, None, max_bytes=len(data) - 1)
    assert excinfo.value.code == "upload-too-large"
    assert excinfo.value.status == 413
    assert str(len(data)) in excinfo.value.detail


def test_empty_upload_is_rejected() -> None:
    assert _error(b"").code == "empty-upload"


def test_npz_uploaded_as_checkpoint_is_unsupported_format() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, w=np.zeros(3))
    error = _error(buffer.getvalue())
    assert error.code == "unsupported-format"
    assert error.status == 415


def test_checkpoint_without_tensors_is_rejected() -> None:
    assert _error(safetensors.numpy.save({}, metadata={"format": "pt"})).code == "no-tensors"


# --- lying or malformed headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x05\x00\x00", "only 3 bytes"),
        (_raw_file({"w": _entry("F32", [1], 0, 4)}, b"\x00" * 4, length=10_000), "only"),
        (_raw_file(b"{}", length=MAX_HEADER_BYTES + 1), "above the"),
        (_raw_file(b"{}", length=2**64 - 1), "above the"),
        (_raw_file(b"{not json}"), "not valid JSON"),
        (_raw_file(b"[1, 2, 3]"), "must start with '{'"),
        (_raw_file(b'{"w": \xff}'), "not valid UTF-8"),
        (_raw_file(b'{"w": 1, "w": 2}'), "more than once"),
        (_raw_file(b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'), "NaN"),
        (_raw_file({"__metadata__": {"epoch": 3}}), "__metadata__"),
        (_raw_file({"w": [1, 2]}), "must be an object"),
        (_raw_file({"w": {"dtype": "F32", "shape": [1]}}), "missing: ['data_offsets']"),
        (_raw_file({"w": {**_entry("F32", [1], 0, 4), "extra": 1}}, b"\x00" * 4), "unexpected: ['extra']"),
        (_raw_file({"w": _entry("F32", [-1], 0, 4)}, b"\x00" * 4), "non-negative integers"),
        (_raw_file({"w": _entry("F32", [True], 0, 4)}, b"\x00" * 4), "non-negative integers"),
        (_raw_file({"w": _entry("F32", [2.0], 0, 8)}, b"\x00" * 8), "non-negative integers"),
        (_raw_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}), "data_offsets"),
        (_raw_file({"w": _entry("F32", [0], 4, 0)}), "begin <= end"),
        (_raw_file({"w": _entry("F32", [1] * (MAX_TENSOR_RANK + 1), 0, 4)}, b"\x00" * 4), "dimensions"),
        (
            _raw_file({"w": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
            "must be a string",
        ),
        (_raw_file({"": _entry("F32", [1], 0, 4)}, b"\x00" * 4), "empty name"),
        (_raw_file(b'{"w": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"), "no safetensors writer"),
    ],
    ids=[
        "shorter-than-length-field",
        "header-length-beyond-file",
        "header-length-over-limit",
        "header-length-u64-max",
        "non-json-header",
        "header-not-an-object",
        "invalid-utf8",
        "duplicate-key",
        "nan-constant",
        "metadata-not-strings",
        "entry-not-object",
        "entry-missing-field",
        "entry-extra-field",
        "negative-dim",
        "bool-dim",
        "float-dim",
        "offsets-wrong-length",
        "offsets-reversed",
        "rank-too-high",
        "dtype-not-string",
        "empty-name",
        "deeply-nested-json",
    ],
)
def test_malformed_headers_are_rejected_with_specific_detail(data: bytes, fragment: str) -> None:
    error = _error(data)
    assert error.code == "safetensors-header"
    assert fragment in error.detail
    with pytest.raises(IntakeError):
        load_safetensors_arrays(data)


def test_unknown_and_refused_dtypes_are_all_reported() -> None:
    header = {
        "a": _entry("Q32", [1], 0, 4),
        "b": _entry("F8_E4M3", [4], 4, 8),
        "c": _entry("F32", [1], 8, 12),
    }
    error = _error(_raw_file(header, b"\x00" * 12))
    assert error.code == "dtype-not-allowed"
    assert [item["key"] for item in error.errors] == ["a", "b"]
    assert "not a safetensors dtype" in error.errors[0]["message"]
    assert "cast to F16/BF16/F32" in error.errors[1]["message"]
    assert "F32" in error.errors[0]["allowed"]


# --- data layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        ({"w": _entry("F32", [4], 0, 16)}, b"\x00" * 12, "only 12 bytes"),
        ({"w": _entry("F32", [4], 0, 12)}, b"\x00" * 12, "needs 16 bytes"),
        ({"w": _entry("I64", [2], 0, 8)}, b"\x00" * 8, "needs 16 bytes"),
        ({"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [2], 8, 16)}, b"\x00" * 16, "overlap"),
        ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 12, 20)}, b"\x00" * 20, "4 unused bytes"),
        ({"w": _entry("F32", [2], 4, 12)}, b"\x00" * 12, "at the start of the data section"),
        ({"w": _entry("F32", [2], 0, 8)}, b"\x00" * 8 + b"TRAILING", "8 bytes of trailing data"),
    ],
    ids=[
        "out-of-range",
        "byte-count-short",
        "dtype-size-mismatch",
        "overlap",
        "gap",
        "leading-gap",
        "trailing",
    ],
)
def test_inconsistent_offsets_are_rejected(header: dict[str, Any], data: bytes, fragment: str) -> None:
    error = _error(_raw_file(header, data))
    assert error.code == "safetensors-offsets"
    assert fragment in error.detail
    with pytest.raises(IntakeError):
        load_safetensors_arrays(_raw_file(header, data))


def test_zero_sized_tensors_share_an_offset() -> None:
    header = {
        "empty": _entry("F32", [0, 3], 0, 0),
        "w": _entry("F32", [1], 0, 4),
        "e2": _entry("I64", [0], 4, 4),
    }
    summary = validate_safetensors(_raw_file(header, b"\x00" * 4), None, max_bytes=LIMIT)
    assert summary.total_params == 1


# --- against the architecture ----------------------------------------------------------------------


def test_missing_key_is_reported_with_expected_shape() -> None:
    arrays = _state_dict()
    del arrays["fc.bias"]
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "missing-keys"
    assert error.errors == [
        {
            "code": "missing-keys",
            "message": "Missing key 'fc.bias' (expected shape [10], dtype F32).",
            "key": "fc.bias",
            "expected_shape": [10],
            "expected_dtype": "F32",
        }
    ]


def test_unexpected_key_is_reported() -> None:
    arrays = {**_state_dict(), "head.weight": np.zeros((2, 2), np.float32)}
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "unexpected-keys"
    assert [item["key"] for item in error.errors] == ["head.weight"]


def test_wrong_shape_names_expected_and_actual() -> None:
    arrays = {**_state_dict(), "fc.weight": np.zeros((10, 5), np.float32)}
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "shape-mismatch"
    assert error.errors[0]["expected_shape"] == [10, 4]
    assert error.errors[0]["actual_shape"] == [10, 5]
    assert "'fc.weight' has shape [10, 5] but the architecture expects [10, 4]" in error.detail


def test_float_integer_buffer_is_a_dtype_mismatch() -> None:
    arrays = {**_state_dict(), "bn.num_batches_tracked": np.array(17.0, np.float32)}
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "dtype-mismatch"
    assert error.errors[0]["key"] == "bn.num_batches_tracked"
    assert "num_batches_tracked" in error.detail and "integer" in error.detail


def test_integer_weights_for_float_parameters_are_a_dtype_mismatch() -> None:
    arrays = {**_state_dict(), "fc.bias": np.zeros(10, np.int32)}
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "dtype-mismatch"
    assert error.errors[0]["actual_dtype"] == "I32"


def test_every_mismatch_is_reported_together() -> None:
    arrays = _state_dict()
    del arrays["bn.weight"]
    arrays["fc.bias"] = np.zeros(11, np.float32)
    arrays["extra"] = np.zeros(1, np.float32)
    arrays["bn.num_batches_tracked"] = np.array(1.0, np.float64)
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "state-dict-mismatch"
    assert sorted(item["code"] for item in error.errors) == [
        "dtype-mismatch",
        "missing-keys",
        "shape-mismatch",
        "unexpected-keys",
    ]


def test_dataparallel_prefix_gets_a_fix_hint() -> None:
    arrays = {f"module.{name}": value for name, value in _state_dict().items()}
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "state-dict-mismatch"
    assert "extra 'module.' prefix" in error.detail
    assert len(error.errors) == 2 * len(EXPECTED)


def test_unknown_expected_dtype_is_a_programming_error_not_an_upload_error() -> None:
    data = safetensors.numpy.save({"w": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="not a dtype intake can check") as excinfo:
        validate_safetensors(data, {"w": ((1,), "quaternion")}, max_bytes=LIMIT)
    assert not isinstance(excinfo.value, IntakeError)


# --- non-finite weights -------------------------------------------------------------------------------


def test_nan_and_inf_in_f32_are_counted_per_tensor() -> None:
    arrays = _state_dict()
    arrays["fc.weight"][0, :3] = [np.nan, np.inf, -np.inf]
    arrays["bn.running_mean"][1] = np.nan
    error = _error(safetensors.numpy.save(arrays), EXPECTED)
    assert error.code == "non-finite-values"
    by_key = {item["key"]: item for item in error.errors}
    assert by_key["fc.weight"]["nan_count"] == 1 and by_key["fc.weight"]["inf_count"] == 2
    assert by_key["bn.running_mean"]["nan_count"] == 1
    assert "'fc.weight' (F32, shape [10, 4]) contains 1 NaN and 2 infinite" in error.detail


@pytest.mark.parametrize(
    ("bits", "nan", "inf"), [(0x7FC0, 1, 0), (0x7F80, 0, 1), (0xFF80, 0, 1), (0xFFC1, 1, 0)]
)
def test_nan_and_inf_in_bf16_are_detected(bits: int, nan: int, inf: int) -> None:
    payload = _bf16_bits([0.5, 1.0, 2.0]) + struct.pack("<H", bits)
    error = _error(_raw_file({"w": _entry("BF16", [4], 0, len(payload))}, payload))
    assert error.code == "non-finite-values"
    assert (error.errors[0]["nan_count"], error.errors[0]["inf_count"]) == (nan, inf)


def test_inf_in_f16_is_detected() -> None:
    data = safetensors.numpy.save({"w": np.array([1.0, np.inf], np.float16)})
    assert _error(data).code == "non-finite-values"
