"""Property tests: valid files round-trip, and arbitrary corruption only ever produces IntakeError."""

from __future__ import annotations

import contextlib
import io
import struct
from typing import Any, Literal

import hypothesis.extra.numpy as hnp
import numpy as np
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.intake import IntakeError, load_safetensors_arrays, sniff_format, validate_npz, validate_safetensors

LIMIT = 16 * 1024 * 1024
NUMPY_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_]
FLOAT_WIDTH_BITS: dict[int, Literal[16, 32, 64]] = {2: 16, 4: 32, 8: 64}
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any valid UTF-8 (no lone surrogates), except the one key the format reserves.
tensor_names = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=24).filter(
    lambda name: name != "__metadata__"
)


@st.composite
def finite_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    elements = (
        st.floats(allow_nan=False, allow_infinity=False, width=FLOAT_WIDTH_BITS[dtype.itemsize])
        if dtype.kind == "f"
        else None
    )
    array: np.ndarray = draw(hnp.arrays(dtype, shape, elements=elements))
    return array


tensor_dicts = st.dictionaries(tensor_names, finite_arrays(), min_size=1, max_size=6)


def _header_length(data: bytes) -> int:
    length: int = struct.unpack_from("<Q", data)[0]
    return length


@PROPERTY_SETTINGS
@given(arrays=tensor_dicts, metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_valid_tensor_dicts_round_trip(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    data = safetensors.numpy.save(arrays, metadata=metadata or None)
    expected = {name: (array.shape, str(array.dtype)) for name, array in arrays.items()}
    summary = validate_safetensors(data, expected, max_bytes=LIMIT)
    assert set(summary.tensor_names) == set(arrays)
    assert summary.shapes == {name: array.shape for name, array in arrays.items()}
    assert summary.total_params == sum(array.size for array in arrays.values())
    assert summary.metadata == metadata
    loaded = load_safetensors_arrays(data)
    assert loaded.keys() == arrays.keys()
    for name, original in arrays.items():
        assert loaded[name].dtype == original.dtype
        np.testing.assert_array_equal(loaded[name], original)


@st.composite
def header_mutations(draw: st.DrawFn) -> bytes:
    original = safetensors.numpy.save(draw(tensor_dicts))
    mutated = bytearray(original)
    header_end = 8 + _header_length(original)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        position = draw(st.integers(min_value=0, max_value=header_end - 1))
        mutated[position] = draw(st.integers(min_value=0, max_value=255))
    if draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(mutated)))
        mutated = mutated[:cut] + draw(st.binary(max_size=16))
    return bytes(mutated)


@PROPERTY_SETTINGS
@given(data=header_mutations())
def test_header_mutations_only_raise_intake_error(data: bytes) -> None:
    sniff_format(data)
    with contextlib.suppress(IntakeError):
        validate_safetensors(data, None, max_bytes=LIMIT)
    with contextlib.suppress(IntakeError):
        load_safetensors_arrays(data)


def _small_npz(compressed: bool) -> bytes:
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {
        "x_train": rng.integers(0, 255, (6, 2, 3), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": rng.integers(0, 255, (2, 2, 3), dtype=np.uint8),
        "y_test": np.array([1, 0]),
    }
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


NPZ_SAMPLES = (_small_npz(compressed=False), _small_npz(compressed=True))


@st.composite
def npz_mutations(draw: st.DrawFn) -> bytes:
    mutated = bytearray(draw(st.sampled_from(NPZ_SAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        mutated[position] = draw(st.integers(min_value=0, max_value=255))
    return bytes(mutated)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=npz_mutations())
def test_npz_byte_mutations_only_raise_intake_error(data: bytes) -> None:
    try:
        dataset = validate_npz(data, max_bytes=LIMIT, max_uncompressed_bytes=LIMIT)
    except IntakeError:
        return
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
