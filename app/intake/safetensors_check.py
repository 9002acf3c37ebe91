"""A pure-Python/numpy parser and validator for uploaded safetensors checkpoints.

The safetensors library is not used to read uploads: its error messages are not written for our
users, and we want every rule checked explicitly. The format
(https://huggingface.co/docs/safetensors) is::

    [8 bytes: N, unsigned little-endian] [N bytes: UTF-8 JSON header] [data section]

The header is a JSON object mapping tensor names to ``{"dtype", "shape", "data_offsets"}`` plus an
optional ``"__metadata__"`` string-to-string map. ``data_offsets`` are ``[begin, end)`` byte offsets
relative to the start of the data section. This validator additionally requires what the reference
writer always produces and what a loader needs to be unambiguous: no duplicate JSON keys, no extra
fields, byte ranges that exactly match ``prod(shape) * itemsize``, and tensors that tile the data
section exactly (no overlaps, no gaps, no trailing bytes).

Accepted dtypes (``ALLOWED_DTYPES``): F64, F32, F16, BF16 (floating), I64, I32, I16, I8, U8
(integer) and BOOL. Rejected although part of the format: the 8/6/4-bit floats (numpy cannot check
them for NaN, and no method here can train in them), U16/U32/U64 (PyTorch supports them only
partially) and complex types.

Matching against the architecture (``expected``): a key's dtype must be in the same *category* as
the expected dtype, not identical. A floating parameter may be uploaded in any of F32/F16/BF16/F64
(the loader casts to the model's dtype); an integer buffer such as BatchNorm's
``num_batches_tracked`` must be uploaded as an integer type; a bool buffer as BOOL. Expected dtype
strings may be safetensors codes ("F32"), numpy names ("float32") or torch names ("torch.float32").
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.intake._numeric import bfloat16_bits_to_float32, count_non_finite
from app.intake._upload import check_upload_size
from app.intake.errors import IntakeError, IntakeErrorCode, finding, format_shape, raise_findings
from app.intake.sniff import SAFETENSORS_LENGTH_PREFIX_BYTES, UploadFormat, reject_pickle

# A header larger than this cannot come from a sane state_dict and would only cost parse time.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# More tensors than any real checkpoint (large LLMs have a few thousand); bounds per-tensor work.
MAX_TENSOR_COUNT = 100_000
# Conv3d weights have rank 5; nothing in a state_dict needs more than this.
MAX_TENSOR_RANK = 8
METADATA_KEY = "__metadata__"
TENSOR_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
# Prefix of every weights digest: a later change of the canonical form changes every digest visibly.
WEIGHTS_DIGEST_VERSION = b"lethe-weights/1\n"

FLOAT = "floating"
INTEGER = "integer"
BOOLEAN = "bool"


@dataclass(frozen=True)
class DtypeSpec:
    """How one safetensors dtype is stored (little-endian) and which category it belongs to."""

    code: str
    storage: str  # numpy dtype of the raw bytes; BF16 is read as its uint16 bit patterns
    itemsize: int
    category: str


ALLOWED_DTYPES: dict[str, DtypeSpec] = {
    spec.code: spec
    for spec in (
        DtypeSpec("F64", "<f8", 8, FLOAT),
        DtypeSpec("F32", "<f4", 4, FLOAT),
        DtypeSpec("F16", "<f2", 2, FLOAT),
        DtypeSpec("BF16", "<u2", 2, FLOAT),
        DtypeSpec("I64", "<i8", 8, INTEGER),
        DtypeSpec("I32", "<i4", 4, INTEGER),
        DtypeSpec("I16", "<i2", 2, INTEGER),
        DtypeSpec("I8", "i1", 1, INTEGER),
        DtypeSpec("U8", "u1", 1, INTEGER),
        DtypeSpec("BOOL", "u1", 1, BOOLEAN),
    )
}
# Valid safetensors dtypes we refuse, with the reason shown to the user.
REJECTED_KNOWN_DTYPES: dict[str, str] = {
    **dict.fromkeys(
        ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"),
        "low-precision floats cannot be checked or trained here; cast to F16/BF16/F32",
    ),
    **dict.fromkeys(("U16", "U32", "U64"), "PyTorch has only partial unsigned-integer support; use I64/I32"),
    **dict.fromkeys(("C64", "C128"), "complex parameters are not supported"),
}

# Spellings accepted in ``expected`` for each allowed dtype (lower-cased, without a "torch." prefix).
_EXPECTED_DTYPE_ALIASES: dict[str, str] = {
    **dict.fromkeys(("f64", "float64", "double"), "F64"),
    **dict.fromkeys(("f32", "float32", "float"), "F32"),
    **dict.fromkeys(("f16", "float16", "half"), "F16"),
    **dict.fromkeys(("bf16", "bfloat16"), "BF16"),
    **dict.fromkeys(("i64", "int64", "long"), "I64"),
    **dict.fromkeys(("i32", "int32", "int"), "I32"),
    **dict.fromkeys(("i16", "int16", "short"), "I16"),
    **dict.fromkeys(("i8", "int8"), "I8"),
    **dict.fromkeys(("u8", "uint8"), "U8"),
    **dict.fromkeys(("bool",), "BOOL"),
}
_CATEGORY_DESCRIPTION = {
    FLOAT: "a floating-point tensor (F32, F16, BF16 or F64)",
    INTEGER: "an integer tensor (I64, I32, I16, I8 or U8)",
    BOOLEAN: "a BOOL tensor",
}
_DTYPE_MISMATCH_ADVICE = {
    FLOAT: "upload floating-point weights, not a quantized or integer-cast state_dict.",
    INTEGER: "cast only the floating parameters, not integer buffers such as num_batches_tracked.",
    BOOLEAN: "keep boolean buffers (masks) as bool when saving.",
}
# Wrappers that prefix every state_dict key: DataParallel/DDP, torch.compile, Lightning modules.
_KNOWN_KEY_PREFIXES = ("module.", "_orig_mod.", "model.")

ExpectedStateDict = Mapping[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class SafetensorsSummary:
    """What a validated checkpoint contains; ``tensor_names`` keeps the header's order."""

    tensor_names: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    total_params: int  # elements over all tensors, buffers included
    total_bytes: int  # size of the whole file
    header_bytes: int
    sha256: str  # of the whole file (storage identity: metadata and tensor order included)
    weights_sha256: str  # of the tensors alone (model identity: see ``weights_digest``)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        """A JSON-serialisable description to store next to the artifact."""
        return {
            "format": "safetensors",
            "sha256": self.sha256,
            "weights_sha256": self.weights_sha256,
            "total_bytes": self.total_bytes,
            "total_params": self.total_params,
            "metadata": dict(self.metadata),
            "tensors": {
                name: {"dtype": self.dtypes[name], "shape": list(self.shapes[name])}
                for name in self.tensor_names
            },
        }


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    spec: DtypeSpec
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _ParsedFile:
    header_bytes: int
    data_start: int
    tensors: list[_TensorEntry]
    metadata: dict[str, str]


class _RejectedJsonConstant(ValueError):
    pass


class _DuplicateJsonKey(ValueError):
    pass


def _reject_json_constant(constant: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and never appear in a real header.
    raise _RejectedJsonConstant(f"non-standard JSON constant {constant}")


def _header_error(message: str) -> IntakeError:
    return IntakeError(
        IntakeErrorCode.SAFETENSORS_HEADER,
        f"The file is not a valid safetensors checkpoint: {message} "
        "Save the state_dict with safetensors (`safetensors.torch.save_file`) "
        "and upload that file unmodified.",
    )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Parsers disagree on which duplicate wins, so readers could see different tensors.
            raise _DuplicateJsonKey(key)
        result[key] = value
    return result


def _is_json_int(value: Any) -> bool:
    # bool is a subclass of int in Python, but `true` is not a valid dimension.
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_header(data: bytes) -> tuple[int, dict[str, Any]]:
    if len(data) < SAFETENSORS_LENGTH_PREFIX_BYTES:
        raise _header_error(
            f"it is only {len(data)} bytes long, but a safetensors file starts with an 8-byte header length."
        )
    (header_length,) = struct.unpack_from("<Q", data, 0)
    available = len(data) - SAFETENSORS_LENGTH_PREFIX_BYTES
    if header_length > MAX_HEADER_BYTES:
        raise _header_error(
            f"the header length field is {header_length} bytes, above the {MAX_HEADER_BYTES}-byte limit."
        )
    if header_length > available:
        raise _header_error(
            f"the header length field says {header_length} bytes, but only {available} bytes follow it "
            "(truncated upload, or not a safetensors file)."
        )
    raw_header = data[SAFETENSORS_LENGTH_PREFIX_BYTES : SAFETENSORS_LENGTH_PREFIX_BYTES + header_length]
    if not raw_header.startswith(b"{"):
        raise _header_error("the JSON header must start with '{'.")
    try:
        text = raw_header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _header_error(
            f"the header is not valid UTF-8 (invalid byte at header offset {exc.start})."
        ) from None
    try:
        header = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_json_constant
        )
    except json.JSONDecodeError as exc:
        raise _header_error(f"the header is not valid JSON ({exc.msg} at header offset {exc.pos}).") from None
    except _RejectedJsonConstant as exc:
        raise _header_error(f"the header contains a {exc}.") from None
    except _DuplicateJsonKey as exc:
        raise _header_error(f"the JSON header contains the key {exc.args[0]!r} more than once.") from None
    except (ValueError, RecursionError):
        # Integers beyond Python's digit limit (ValueError) or absurd nesting (RecursionError).
        raise _header_error("the header JSON contains values no safetensors writer produces.") from None
    if not isinstance(header, dict):
        raise _header_error(
            f"the header must be a JSON object mapping tensor names to "
            f"{{dtype, shape, data_offsets}}, but it is a JSON {type(header).__name__}."
        )
    return header_length, header


def _parse_metadata(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(value, str) for value in raw.values()):
        raise _header_error(f"'{METADATA_KEY}' must be an object whose values are all strings.")
    return dict(raw)


def _parse_entry(name: str, raw: Any, findings: list[dict[str, Any]]) -> _TensorEntry | None:
    """Parse one tensor entry; structural problems raise, disallowed dtypes are collected."""
    if not name:
        raise _header_error("a tensor has an empty name.")
    if not isinstance(raw, dict):
        raise _header_error(f"the entry for tensor {name!r} must be an object, not {type(raw).__name__}.")
    missing_fields = TENSOR_ENTRY_FIELDS - raw.keys()
    extra_fields = raw.keys() - TENSOR_ENTRY_FIELDS
    if missing_fields or extra_fields:
        raise _header_error(
            f"the entry for tensor {name!r} must have exactly the fields dtype, shape and data_offsets "
            f"(missing: {sorted(missing_fields) or 'none'}, unexpected: {sorted(extra_fields) or 'none'})."
        )
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(shape, list) or not all(_is_json_int(dim) and dim >= 0 for dim in shape):
        raise _header_error(
            f"the shape of tensor {name!r} must be a list of non-negative integers, got {shape!r}."
        )
    if len(shape) > MAX_TENSOR_RANK:
        raise _header_error(
            f"tensor {name!r} has {len(shape)} dimensions; at most {MAX_TENSOR_RANK} are supported."
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_json_int(offset) and offset >= 0 for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _header_error(
            f"data_offsets of tensor {name!r} must be [begin, end] with 0 <= begin <= end, got {offsets!r}."
        )
    if not isinstance(dtype, str):
        raise _header_error(f"the dtype of tensor {name!r} must be a string, got {dtype!r}.")
    spec = ALLOWED_DTYPES.get(dtype)
    if spec is None:
        reason = REJECTED_KNOWN_DTYPES.get(dtype, "it is not a safetensors dtype")
        findings.append(
            finding(
                IntakeErrorCode.DTYPE_NOT_ALLOWED,
                f"Tensor {name!r} has dtype {dtype!r}, which is not accepted ({reason}).",
                key=name,
                dtype=dtype,
                allowed=sorted(ALLOWED_DTYPES),
            )
        )
        return None
    return _TensorEntry(name=name, spec=spec, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _check_layout(tensors: list[_TensorEntry], data_length: int) -> None:
    """Each tensor's byte range matches its shape, and together they tile the data section exactly."""
    for tensor in tensors:
        expected_bytes = tensor.numel * tensor.spec.itemsize
        if tensor.end > data_length:
            raise IntakeError(
                IntakeErrorCode.SAFETENSORS_OFFSETS,
                f"Tensor {tensor.name!r} declares data_offsets [{tensor.begin}, {tensor.end}], but the data "
                f"section after the header is only {data_length} bytes: the file is truncated or its header "
                "is wrong. Upload the complete file as written by safetensors.",
            )
        if tensor.end - tensor.begin != expected_bytes:
            raise IntakeError(
                IntakeErrorCode.SAFETENSORS_OFFSETS,
                f"Tensor {tensor.name!r} has dtype {tensor.spec.code} and shape "
                f"{format_shape(tensor.shape)}, which needs {expected_bytes} bytes, but its data_offsets "
                f"[{tensor.begin}, {tensor.end}] span {tensor.end - tensor.begin} bytes. "
                "The header does not describe the data; re-save the file.",
            )
    position = 0
    previous: _TensorEntry | None = None
    for tensor in sorted(tensors, key=lambda entry: (entry.begin, entry.end)):
        if tensor.begin < position and previous is not None:
            raise IntakeError(
                IntakeErrorCode.SAFETENSORS_OFFSETS,
                f"Tensors {previous.name!r} (bytes [{previous.begin}, {previous.end})) and {tensor.name!r} "
                f"(bytes [{tensor.begin}, {tensor.end})) overlap; every tensor must have its own bytes.",
            )
        if tensor.begin > position:
            after = (
                f"after tensor {previous.name!r}"
                if previous is not None
                else "at the start of the data section"
            )
            raise IntakeError(
                IntakeErrorCode.SAFETENSORS_OFFSETS,
                f"There are {tensor.begin - position} unused bytes {after}, before tensor {tensor.name!r} "
                f"(data offset {position} to {tensor.begin}); tensors must be stored back to back.",
            )
        position = tensor.end
        previous = tensor
    if position != data_length:
        raise IntakeError(
            IntakeErrorCode.SAFETENSORS_OFFSETS,
            f"{data_length - position} bytes of trailing data follow the last tensor (tensors end at data "
            f"offset {position}, the data section is {data_length} bytes). Upload the file exactly as "
            "safetensors wrote it.",
        )


def _parse_structure(data: bytes) -> _ParsedFile:
    header_length, header = _decode_header(data)
    metadata = _parse_metadata(header.pop(METADATA_KEY)) if METADATA_KEY in header else {}
    if len(header) > MAX_TENSOR_COUNT:
        raise _header_error(f"it declares {len(header)} tensors; at most {MAX_TENSOR_COUNT} are supported.")
    dtype_findings: list[dict[str, Any]] = []
    tensors = [
        entry
        for name, raw in header.items()
        if (entry := _parse_entry(name, raw, dtype_findings)) is not None
    ]
    raise_findings(
        dtype_findings,
        mixed_code=IntakeErrorCode.DTYPE_NOT_ALLOWED,
        summary=f"The checkpoint uses dtypes Lethe does not accept (allowed: {', '.join(ALLOWED_DTYPES)}).",
    )
    data_start = SAFETENSORS_LENGTH_PREFIX_BYTES + header_length
    _check_layout(tensors, len(data) - data_start)
    return _ParsedFile(header_bytes=header_length, data_start=data_start, tensors=tensors, metadata=metadata)


def _raw_values(data: bytes, parsed: _ParsedFile, tensor: _TensorEntry) -> np.ndarray:
    """A zero-copy, read-only view of one tensor's stored values (BF16 as uint16 bit patterns)."""
    start = parsed.data_start + tensor.begin
    return np.frombuffer(data, dtype=np.dtype(tensor.spec.storage), count=tensor.numel, offset=start)


def _expected_dtype_code(expected_dtype: str) -> str:
    normalized = expected_dtype.strip().lower().removeprefix("torch.")
    code = _EXPECTED_DTYPE_ALIASES.get(normalized)
    if code is None:
        # A registry bug, not a bad upload: deliberately not an IntakeError, so it surfaces as a 500.
        raise ValueError(f"expected dtype {expected_dtype!r} is not a dtype intake can check against")
    return code


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Explain the common case of every key carrying (or lacking) a wrapper's prefix."""
    missing_set, unexpected_set = set(missing), set(unexpected)
    for prefix in _KNOWN_KEY_PREFIXES:
        if missing_set and {prefix + key for key in missing_set} <= unexpected_set:
            return (
                f" The uploaded keys carry an extra {prefix!r} prefix (saved from a wrapped model); save the "
                f"inner model's state_dict, or strip it: "
                f"`{{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}}`."
            )
        if unexpected_set and {prefix + key for key in unexpected_set} <= missing_set:
            return f" The architecture's keys start with {prefix!r} but the uploaded keys do not."
    return ""


def _compare_with_expected(parsed: _ParsedFile, expected: ExpectedStateDict) -> None:
    expected_codes = {key: _expected_dtype_code(dtype) for key, (_, dtype) in expected.items()}
    actual = {tensor.name: tensor for tensor in parsed.tensors}
    missing = [key for key in expected if key not in actual]
    unexpected = [name for name in actual if name not in expected]
    findings: list[dict[str, Any]] = []
    for key in missing:
        shape, _ = expected[key]
        findings.append(
            finding(
                IntakeErrorCode.MISSING_KEYS,
                f"Missing key {key!r} (expected shape {format_shape(shape)}, dtype {expected_codes[key]}).",
                key=key,
                expected_shape=list(shape),
                expected_dtype=expected_codes[key],
            )
        )
    for name in unexpected:
        extra = actual[name]
        findings.append(
            finding(
                IntakeErrorCode.UNEXPECTED_KEYS,
                f"Unexpected key {name!r} (shape {format_shape(extra.shape)}, dtype {extra.spec.code}) "
                "is not part of the architecture.",
                key=name,
                actual_shape=list(extra.shape),
                actual_dtype=extra.spec.code,
            )
        )
    for key, (expected_shape, _) in expected.items():
        if key not in actual:
            continue
        present = actual[key]
        if tuple(expected_shape) != present.shape:
            findings.append(
                finding(
                    IntakeErrorCode.SHAPE_MISMATCH,
                    f"Key {key!r} has shape {format_shape(present.shape)} but the architecture expects "
                    f"{format_shape(expected_shape)}.",
                    key=key,
                    expected_shape=list(expected_shape),
                    actual_shape=list(present.shape),
                )
            )
        expected_category = ALLOWED_DTYPES[expected_codes[key]].category
        if present.spec.category != expected_category:
            findings.append(
                finding(
                    IntakeErrorCode.DTYPE_MISMATCH,
                    f"Key {key!r} has dtype {present.spec.code} but the architecture expects "
                    f"{_CATEGORY_DESCRIPTION[expected_category]} ({expected_codes[key]}); "
                    f"{_DTYPE_MISMATCH_ADVICE[expected_category]}",
                    key=key,
                    expected_dtype=expected_codes[key],
                    actual_dtype=present.spec.code,
                )
            )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.STATE_DICT_MISMATCH,
        summary=(
            f"The checkpoint does not match the architecture's state_dict ({len(findings)} problem(s))."
            + _prefix_hint(missing, unexpected)
        ),
    )


def _check_finite(data: bytes, parsed: _ParsedFile) -> None:
    findings: list[dict[str, Any]] = []
    for tensor in parsed.tensors:
        if tensor.spec.category != FLOAT:
            continue
        decode = bfloat16_bits_to_float32 if tensor.spec.code == "BF16" else None
        counts = count_non_finite(_raw_values(data, parsed, tensor), decode)
        if counts.total:
            findings.append(
                finding(
                    IntakeErrorCode.NON_FINITE_VALUES,
                    f"Tensor {tensor.name!r} ({tensor.spec.code}, shape {format_shape(tensor.shape)}) "
                    f"contains {counts.nan} NaN and {counts.inf} infinite value(s) out of {tensor.numel}.",
                    key=tensor.name,
                    nan_count=counts.nan,
                    inf_count=counts.inf,
                    numel=tensor.numel,
                )
            )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.NON_FINITE_VALUES,
        summary=(
            "The checkpoint contains NaN or infinite weights, so no metric computed from it would mean "
            "anything. Upload a checkpoint from before training diverged."
        ),
    )


def validate_safetensors(
    data: bytes,
    expected: ExpectedStateDict | None,
    *,
    max_bytes: int,
) -> SafetensorsSummary:
    """Validate an uploaded safetensors checkpoint and describe it; raise IntakeError if unusable.

    Checks, in order: size limit; not a pickle or zip; header structure and dtypes; byte layout;
    when ``expected`` is given, its keys, shapes and dtype categories (every mismatch reported in
    one error); finiteness of every floating tensor.
    """
    check_upload_size(data, max_bytes, "checkpoint")
    detected = reject_pickle(data, "model checkpoint")
    if detected in (UploadFormat.NPZ, UploadFormat.ZIP):
        raise IntakeError(
            IntakeErrorCode.UNSUPPORTED_FORMAT,
            "The checkpoint is a zip archive (for example .npz or a torch.export .pt2), not a safetensors "
            "file. Save the weights with `safetensors.torch.save_file(model.state_dict(), "
            '"model.safetensors")` and upload that.',
        )
    parsed = _parse_structure(data)
    if not parsed.tensors:
        raise IntakeError(
            IntakeErrorCode.NO_TENSORS,
            "The safetensors file contains no tensors. Save the model's state_dict, not an empty dict.",
        )
    if expected is not None:
        _compare_with_expected(parsed, expected)
    _check_finite(data, parsed)
    return SafetensorsSummary(
        tensor_names=tuple(tensor.name for tensor in parsed.tensors),
        shapes={tensor.name: tensor.shape for tensor in parsed.tensors},
        dtypes={tensor.name: tensor.spec.code for tensor in parsed.tensors},
        total_params=sum(tensor.numel for tensor in parsed.tensors),
        total_bytes=len(data),
        header_bytes=parsed.header_bytes,
        sha256=hashlib.sha256(data).hexdigest(),
        weights_sha256=_weights_digest(data, parsed),
        metadata=parsed.metadata,
    )


def _weights_digest(data: bytes, parsed: _ParsedFile) -> str:
    digest = hashlib.sha256(WEIGHTS_DIGEST_VERSION)
    for tensor in sorted(parsed.tensors, key=lambda entry: entry.name):
        described = json.dumps([tensor.name, tensor.spec.code, list(tensor.shape)], separators=(",", ":"))
        encoded = described.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        digest.update((tensor.end - tensor.begin).to_bytes(8, "little"))
        digest.update(memoryview(data)[parsed.data_start + tensor.begin : parsed.data_start + tensor.end])
    return digest.hexdigest()


def weights_digest(data: bytes) -> str:
    """The identity of a checkpoint's weights: SHA-256 over its tensors in name order, each framed as its
    length-prefixed ``[name, dtype, shape]`` JSON and its length-prefixed stored bytes (safetensors stores
    little-endian, so the bytes are canonical). The header's ``__metadata__`` (the producing job, say) and
    the tensors' order in the file do not count: two bit-identical models hash alike, however saved."""
    return _weights_digest(data, _parse_structure(data))


def load_safetensors_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Decode every tensor of a safetensors file into writable native-endian numpy arrays.

    The header and layout are re-checked (so slicing is always in bounds), but limits, expected
    keys and finiteness are not: call :func:`validate_safetensors` first. BF16 is widened to
    float32 (numpy has no bfloat16); BOOL becomes ``bool`` (any non-zero byte is True).
    """
    parsed = _parse_structure(data)
    arrays: dict[str, np.ndarray] = {}
    for tensor in parsed.tensors:
        raw = _raw_values(data, parsed, tensor)
        if tensor.spec.code == "BF16":
            values = bfloat16_bits_to_float32(raw)
        elif tensor.spec.category == BOOLEAN:
            values = raw != 0
        else:
            values = raw.astype(raw.dtype.newbyteorder("="), copy=True)
        arrays[tensor.name] = values.reshape(tensor.shape)
    return arrays
