"""Validation of uploaded datasets in numpy's ``.npz`` format.

An upload must be a zip of ``.npy`` members written by ``np.savez``/``np.savez_compressed`` holding
exactly ``x_train``, ``y_train``, ``x_test`` and ``y_test``, plus optionally ``num_classes``.

Everything that can be decided without decompressing data is checked first, from the zip central
directory and the ``.npy`` headers: member count, names, compression method, declared sizes and
compression ratio (zip bombs), dtypes (object arrays would need unpickling), shapes, and that each
member's size matches its header (numpy allocates the array from the header's shape before reading,
so a lying header would otherwise be a memory bomb). Only then are arrays loaded, with
``allow_pickle=False``.

Rules:

* features ``x_*``: dtype uint8, float16, float32 or float64; shape NxF, NxHxW or NxCxHxW, the
  same per-sample shape in both splits; all values finite. They are returned as float32 (uint8
  scaled to [0, 1]); NxHxW becomes Nx1xHxW.
* labels ``y_*``: 1-D, one per sample, any integer dtype or a float dtype holding whole numbers;
  returned as int64 (regression uploads, ``task="regression"``: any finite integer or float targets,
  returned as float32, with ``num_classes`` 1);
* classes: ``num_classes`` is the ``num_classes`` member when present (an integer scalar, which lets
  a split omit the highest classes), otherwise the largest label + 1. Every label must be in
  ``[0, num_classes)``, ``num_classes`` must be at least 2 and the training split must contain at
  least two distinct labels.

Memory: the returned arrays may take up to 4x ``max_uncompressed_bytes`` (uint8 to float32).
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np

from app.intake._numeric import count_non_finite
from app.intake._upload import check_upload_size
from app.intake._zip import ZIP_PARSE_ERRORS, read_zip_directory, starts_like_zip
from app.intake.errors import IntakeError, IntakeErrorCode, finding, format_shape, raise_findings
from app.intake.sniff import reject_pickle

FEATURE_ARRAYS = ("x_train", "x_test")
LABEL_ARRAYS = ("y_train", "y_test")
REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES_ARRAY = "num_classes"
OPTIONAL_ARRAYS = (NUM_CLASSES_ARRAY,)
SPLITS = (("train", "x_train", "y_train"), ("test", "x_test", "y_test"))

NPY_SUFFIX = ".npy"
NPY_MAGIC = b"\x93NUMPY"
# numpy's own default for np.load: parsing a larger header is slow and never needed.
MAX_NPY_HEADER_BYTES = 10_000
# np.savez writes STORED, np.savez_compressed DEFLATED; other methods only add decompressor risk.
ALLOWED_COMPRESSION_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
# Deflate tops out near 1032:1. Real image/tabular data compresses far less than 200:1, while runs of
# zeros hit the maximum; small members are exempt because tiny padded arrays compress absurdly well.
MAX_COMPRESSION_RATIO = 200
COMPRESSION_RATIO_MIN_BYTES = 1024 * 1024
MAX_MEMBER_NAME_LENGTH = 255
# Bounds the classifier head a dataset can demand (a label of 10**9 would otherwise mean 10**9 outputs).
MAX_NUM_CLASSES = 100_000
MIN_NUM_CLASSES = 2
FEATURE_NDIMS = (2, 3, 4)  # NxF, NxHxW, NxCxHxW
IMAGE_WITHOUT_CHANNEL_NDIM = 3
UINT8_SCALE = 255.0
# Zip general-purpose flag bit 0: the member is encrypted.
ZIP_FLAG_ENCRYPTED = 0x1
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}

NPZ_FORMAT_HINT = (
    "Save the dataset with numpy: "
    "`np.savez_compressed('data.npz', x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)`."
)


@dataclass(frozen=True, eq=False)
class NpzDataset:
    """A validated dataset with normalised dtypes: x float32 (NxF or NxCxHxW), y int64 (float32 targets
    for a regression upload)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]  # per-sample shape of x after normalisation
    n_train: int
    n_test: int
    sha256: str  # of the uploaded bytes

    def to_manifest(self) -> dict[str, Any]:
        """A JSON-serialisable description to store next to the artifact."""
        return {
            "format": "npz",
            "sha256": self.sha256,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "n_train": self.n_train,
            "n_test": self.n_test,
        }


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran_order: bool = False


def _structure_error(message: str) -> IntakeError:
    return IntakeError(IntakeErrorCode.NPZ_STRUCTURE, f"{message} {NPZ_FORMAT_HINT}")


def _read_members(data: bytes | BinaryIO) -> list[zipfile.ZipInfo]:
    if isinstance(data, bytes):
        head = data[: len(NPY_MAGIC)]
    else:
        data.seek(0)
        head = data.read(len(NPY_MAGIC))
    if head.startswith(NPY_MAGIC):
        raise _structure_error("The upload is a single .npy array, not an .npz archive of named arrays.")
    if not starts_like_zip(head):
        raise _structure_error("The upload is not an .npz (zip) archive.")
    try:
        if isinstance(data, bytes):
            return read_zip_directory(data)
        with zipfile.ZipFile(data) as archive:  # the central directory only, nothing decompressed
            return archive.infolist()
    except ZIP_PARSE_ERRORS:
        raise _structure_error(
            "The .npz archive is corrupt or truncated: its zip directory cannot be read."
        ) from None


def _is_safe_member_name(name: str) -> bool:
    # np.savez writes flat "<key>.npy" names; anything path-like could escape an extraction directory.
    return (
        0 < len(name) <= MAX_MEMBER_NAME_LENGTH
        and not name.startswith(".")
        and ".." not in name
        and not any(char in name for char in "/\\\x00:")
        and name.isprintable()
    )


def _check_members(members: list[zipfile.ZipInfo], *, max_entries: int, max_uncompressed_bytes: int) -> None:
    """Reject archives that are dangerous or not plain .npz before any member is decompressed."""
    if len(members) > max_entries:
        raise IntakeError(
            IntakeErrorCode.ZIP_BOMB,
            f"The archive has {len(members)} entries; at most {max_entries} are allowed. A dataset .npz "
            f"needs only {', '.join(REQUIRED_ARRAYS)} (and optionally {NUM_CLASSES_ARRAY}).",
        )
    if not members:
        raise _structure_error("The .npz archive is empty.")
    seen: set[str] = set()
    for member in members:
        name = member.filename
        if not _is_safe_member_name(name):
            raise _structure_error(f"The archive member name {name!r} is not a plain file name.")
        if name in seen:
            # zipfile and numpy would silently pick one of the copies.
            raise _structure_error(f"The archive contains the member {name!r} more than once.")
        seen.add(name)
        if not name.endswith(NPY_SUFFIX):
            raise _structure_error(
                f"The archive member {name!r} is not a .npy array; an .npz holds only .npy files."
            )
        if member.flag_bits & ZIP_FLAG_ENCRYPTED:
            raise _structure_error(f"The archive member {name!r} is encrypted.")
        if member.compress_type not in ALLOWED_COMPRESSION_METHODS:
            raise _structure_error(
                f"The archive member {name!r} uses zip compression method {member.compress_type}; only "
                "stored and deflate (what numpy writes) are accepted."
            )
    declared_total = sum(member.file_size for member in members)
    if declared_total > max_uncompressed_bytes:
        raise IntakeError(
            IntakeErrorCode.ZIP_BOMB,
            f"The archive declares {declared_total} bytes of uncompressed data; the limit is "
            f"{max_uncompressed_bytes} bytes. Upload a smaller dataset.",
        )
    for member in members:
        if member.file_size >= COMPRESSION_RATIO_MIN_BYTES and member.file_size > MAX_COMPRESSION_RATIO * max(
            member.compress_size, 1
        ):
            raise IntakeError(
                IntakeErrorCode.ZIP_BOMB,
                f"The archive member {member.filename!r} expands from {member.compress_size} to "
                f"{member.file_size} bytes (more than {MAX_COMPRESSION_RATIO}:1), which real datasets never "
                "do. Save it with np.savez (uncompressed) if it really is this repetitive.",
            )


def _check_array_names(names: set[str]) -> None:
    findings = [
        finding(
            IntakeErrorCode.NPZ_MISSING_ARRAY,
            f"Array {name!r} is missing.",
            array=name,
        )
        for name in REQUIRED_ARRAYS
        if name not in names
    ]
    allowed = set(REQUIRED_ARRAYS) | set(OPTIONAL_ARRAYS)
    findings += [
        finding(IntakeErrorCode.NPZ_UNEXPECTED_ARRAY, f"Array {name!r} is not expected.", array=name)
        for name in sorted(names - allowed)
    ]
    hint = ""
    if any(name.startswith("arr_") for name in names):
        hint = (
            " Arrays named arr_0, arr_1, ... come from passing arrays to np.savez positionally;"
            " pass them by name."
        )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.NPZ_ARRAYS_MISMATCH,
        summary=(
            f"The dataset must contain exactly the arrays {', '.join(REQUIRED_ARRAYS)} "
            f"(and optionally {NUM_CLASSES_ARRAY}).{hint} {NPZ_FORMAT_HINT}"
        ),
    )


def _read_npy_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> _NpyHeader:
    array_name = member.filename.removesuffix(NPY_SUFFIX)
    try:
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is not None:
                shape, fortran_order, dtype = read_header(stream, max_header_size=MAX_NPY_HEADER_BYTES)
                header_bytes = stream.tell()
    except ZIP_PARSE_ERRORS:
        raise _structure_error(
            f"Array {array_name!r} is corrupt: it has no valid .npy header or fails the zip checksum."
        ) from None
    if read_header is None:
        # Version 3.0 exists only for structured dtypes with non-Latin-1 field names, never accepted.
        raise _structure_error(f"Array {array_name!r} uses .npy format version {version}, not 1.0 or 2.0.")
    if dtype.hasobject:
        raise IntakeError(
            IntakeErrorCode.PICKLE_REJECTED,
            f"Array {array_name!r} has dtype object, whose elements numpy stores as pickles; Lethe never "
            "unpickles uploads. Convert it to a numeric array first, e.g. `np.asarray(x, dtype=np.float32)`.",
        )
    if any(dim < 0 for dim in shape):
        raise _structure_error(f"Array {array_name!r} has a negative dimension in its shape {shape}.")
    data_bytes = math.prod(shape) * dtype.itemsize
    if header_bytes + data_bytes != member.file_size:
        # Checked before np.load, which allocates prod(shape) elements before reading any data.
        raise _structure_error(
            f"Array {array_name!r} declares shape {format_shape(shape)} of {dtype} ({data_bytes} bytes), "
            f"but its archive member holds {member.file_size - header_bytes} bytes of data."
        )
    return _NpyHeader(shape=tuple(shape), dtype=dtype, fortran_order=bool(fortran_order))


def _read_npy_headers(data: bytes | BinaryIO, members: list[zipfile.ZipInfo]) -> dict[str, _NpyHeader]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except ZIP_PARSE_ERRORS:
        raise _structure_error("The .npz archive is corrupt: it cannot be opened.") from None
    with archive:
        return {
            member.filename.removesuffix(NPY_SUFFIX): _read_npy_header(archive, member) for member in members
        }


def _dtype_findings(headers: Mapping[str, _NpyHeader]) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    for name in FEATURE_ARRAYS:
        dtype = headers[name].dtype
        if dtype.names is not None or not (
            (dtype.kind == "u" and dtype.itemsize == 1) or (dtype.kind == "f" and dtype.itemsize in (2, 4, 8))
        ):
            findings.append(
                finding(
                    IntakeErrorCode.DTYPE_NOT_ALLOWED,
                    f"Array {name!r} has dtype {dtype}; features must be uint8, float16, float32 or float64 "
                    "(convert with `.astype(np.float32)`, scaled to a sensible range).",
                    array=name,
                    dtype=str(dtype),
                )
            )
    for name in LABEL_ARRAYS:
        dtype = headers[name].dtype
        if dtype.names is not None or dtype.kind not in "iuf":
            findings.append(
                finding(
                    IntakeErrorCode.DTYPE_NOT_ALLOWED,
                    f"Array {name!r} has dtype {dtype}; labels must be integers "
                    "(convert with `.astype(np.int64)`).",
                    array=name,
                    dtype=str(dtype),
                )
            )
    if NUM_CLASSES_ARRAY in headers:
        dtype = headers[NUM_CLASSES_ARRAY].dtype
        if dtype.names is not None or dtype.kind not in "iu":
            findings.append(
                finding(
                    IntakeErrorCode.DTYPE_NOT_ALLOWED,
                    f"Array {NUM_CLASSES_ARRAY!r} has dtype {dtype}; it must be an integer scalar, "
                    "e.g. `num_classes=np.int64(10)`.",
                    array=NUM_CLASSES_ARRAY,
                    dtype=str(dtype),
                )
            )
    return findings


def _shape_findings(headers: Mapping[str, _NpyHeader]) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    sample_shapes: dict[str, tuple[int, ...]] = {}
    for split, x_name, y_name in SPLITS:
        x_shape, y_shape = headers[x_name].shape, headers[y_name].shape
        if len(x_shape) not in FEATURE_NDIMS:
            findings.append(
                finding(
                    IntakeErrorCode.SHAPE_MISMATCH,
                    f"Array {x_name!r} has shape {format_shape(x_shape)}; "
                    "features must be NxF, NxHxW or NxCxHxW"
                    + (" (for one feature per sample use `x.reshape(-1, 1)`)." if len(x_shape) == 1 else "."),
                    array=x_name,
                    actual_shape=list(x_shape),
                )
            )
        elif x_shape[0] == 0:
            findings.append(
                finding(
                    IntakeErrorCode.EMPTY_SPLIT,
                    f"The {split} split has no samples ({x_name!r} is empty).",
                    array=x_name,
                    actual_shape=list(x_shape),
                )
            )
        elif 0 in x_shape[1:]:
            findings.append(
                finding(
                    IntakeErrorCode.SHAPE_MISMATCH,
                    f"Array {x_name!r} has shape {format_shape(x_shape)}: each sample is empty.",
                    array=x_name,
                    actual_shape=list(x_shape),
                )
            )
        else:
            sample_shapes[split] = x_shape[1:]
        if len(y_shape) != 1:
            one_hot_hint = (
                " If it is one-hot encoded, convert with `y.argmax(axis=1)`." if len(y_shape) == 2 else ""
            )
            findings.append(
                finding(
                    IntakeErrorCode.SHAPE_MISMATCH,
                    f"Array {y_name!r} has shape {format_shape(y_shape)}; "
                    f"labels must be 1-D, one integer per sample.{one_hot_hint}",
                    array=y_name,
                    actual_shape=list(y_shape),
                )
            )
        elif x_shape and y_shape[0] != x_shape[0]:
            findings.append(
                finding(
                    IntakeErrorCode.SHAPE_MISMATCH,
                    f"{x_name!r} has {x_shape[0]} samples but {y_name!r} has {y_shape[0]} labels.",
                    array=y_name,
                    expected_shape=[x_shape[0]],
                    actual_shape=list(y_shape),
                )
            )
    if len(sample_shapes) == len(SPLITS) and sample_shapes["train"] != sample_shapes["test"]:
        findings.append(
            finding(
                IntakeErrorCode.SHAPE_MISMATCH,
                f"Training samples have shape {format_shape(sample_shapes['train'])} but test samples have "
                f"{format_shape(sample_shapes['test'])}; both splits must use the same per-sample shape.",
                array="x_test",
                expected_shape=list(sample_shapes["train"]),
                actual_shape=list(sample_shapes["test"]),
            )
        )
    if NUM_CLASSES_ARRAY in headers and headers[NUM_CLASSES_ARRAY].shape not in ((), (1,)):
        findings.append(
            finding(
                IntakeErrorCode.SHAPE_MISMATCH,
                f"Array {NUM_CLASSES_ARRAY!r} has shape {format_shape(headers[NUM_CLASSES_ARRAY].shape)}; "
                "it must be a scalar.",
                array=NUM_CLASSES_ARRAY,
                actual_shape=list(headers[NUM_CLASSES_ARRAY].shape),
            )
        )
    return findings


def _load_arrays(data: bytes, headers: Mapping[str, _NpyHeader]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    name = ""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False, max_header_size=MAX_NPY_HEADER_BYTES) as npz:
            for name in headers:
                arrays[name] = npz[name]
    except ZIP_PARSE_ERRORS:
        # Headers and sizes were consistent, so this is a corrupt compressed stream or checksum.
        raise _structure_error(
            f"Array {name!r} could not be read: its compressed data is corrupt or fails its checksum."
        ) from None
    for name, header in headers.items():
        loaded = arrays[name]
        if not isinstance(loaded, np.ndarray) or loaded.shape != header.shape or loaded.dtype != header.dtype:
            raise _structure_error(f"Array {name!r} does not match its own .npy header.")
    return arrays


def _to_float32_features(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "u":
        scaled: np.ndarray = values.astype(np.float32)
        scaled /= np.float32(UINT8_SCALE)  # in place: no second float32 copy of the array
        return scaled
    # Values beyond float32's range become inf here and are reported by the finiteness check.
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(values, dtype=np.float32)


def _check_finite_features(
    features: Mapping[str, np.ndarray], raw_dtypes: Mapping[str, np.dtype[Any]]
) -> None:
    findings: list[dict[str, Any]] = []
    for name, values in features.items():
        counts = count_non_finite(values)
        if counts.total:
            overflow_note = (
                " (float64 values beyond float32's ±3.4e38 range count as infinite)"
                if raw_dtypes[name] == np.float64
                else ""
            )
            findings.append(
                finding(
                    IntakeErrorCode.NON_FINITE_VALUES,
                    f"Array {name!r} contains {counts.nan} NaN and {counts.inf} infinite value(s)"
                    f"{overflow_note}.",
                    array=name,
                    nan_count=counts.nan,
                    inf_count=counts.inf,
                )
            )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.NON_FINITE_VALUES,
        summary="Features must be finite; impute or drop the affected samples.",
    )


def _check_labels_integral(labels: Mapping[str, np.ndarray]) -> None:
    findings: list[dict[str, Any]] = []
    for name, values in labels.items():
        if values.dtype.kind != "f":
            continue
        fractional = ~np.isfinite(values) | (values != np.floor(values))
        if np.any(fractional):
            first_index = int(np.argmax(fractional))
            count = int(np.count_nonzero(fractional))
            findings.append(
                finding(
                    IntakeErrorCode.NON_INTEGER_LABELS,
                    f"Array {name!r} has {count} label(s) that are not whole numbers "
                    f"(first at index {first_index}: {values[first_index]!r}).",
                    array=name,
                    count=count,
                    first_index=first_index,
                )
            )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.NON_INTEGER_LABELS,
        summary="Labels must be class indices 0, 1, 2, ...; probabilities or soft labels are not accepted.",
    )


def _explicit_num_classes(values: np.ndarray) -> int:
    count = int(values.reshape(-1)[0])
    if count < MIN_NUM_CLASSES:
        raise IntakeError(
            IntakeErrorCode.TOO_FEW_CLASSES,
            f"The {NUM_CLASSES_ARRAY!r} array says {count}; a classification dataset needs at least "
            f"{MIN_NUM_CLASSES} classes.",
        )
    if count > MAX_NUM_CLASSES:
        raise IntakeError(
            IntakeErrorCode.LABEL_OUT_OF_RANGE,
            f"The {NUM_CLASSES_ARRAY!r} array says {count}; at most {MAX_NUM_CLASSES} classes are supported.",
        )
    return count


def _check_label_range(labels: Mapping[str, np.ndarray], upper: int, source: str) -> None:
    findings: list[dict[str, Any]] = []
    for name, values in labels.items():
        negative = int(np.count_nonzero(values < 0))
        too_large = int(np.count_nonzero(values >= upper))
        if not (negative or too_large):
            continue
        problems = []
        if negative:
            problems.append(f"{negative} negative label(s) (smallest {int(values.min())})")
        if too_large:
            problems.append(f"{too_large} label(s) >= {upper} (largest {int(values.max())})")
        findings.append(
            finding(
                IntakeErrorCode.LABEL_OUT_OF_RANGE,
                f"Array {name!r} has {' and '.join(problems)}.",
                array=name,
                negative_count=negative,
                too_large_count=too_large,
                allowed_min=0,
                allowed_max=upper - 1,
            )
        )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.LABEL_OUT_OF_RANGE,
        summary=(
            f"Labels must be class indices in [0, {upper}) ({source}); negative labels often mark "
            "unlabelled samples, which must be dropped."
        ),
    )


def _resolve_num_classes(labels: Mapping[str, np.ndarray], explicit: np.ndarray | None) -> int:
    """Check label ranges and return the number of classes (labels may be int or integral float)."""
    if explicit is not None:
        num_classes = _explicit_num_classes(explicit)
        _check_label_range(
            labels, num_classes, f"num_classes = {num_classes} from the {NUM_CLASSES_ARRAY!r} array"
        )
    else:
        # Inferred as max + 1, so only the global cap can be exceeded.
        _check_label_range(labels, MAX_NUM_CLASSES, f"at most {MAX_NUM_CLASSES} classes are supported")
        num_classes = max(int(values.max()) for values in labels.values()) + 1
        if num_classes < MIN_NUM_CLASSES:
            raise IntakeError(
                IntakeErrorCode.TOO_FEW_CLASSES,
                f"All labels are 0, so the dataset has one class; at least {MIN_NUM_CLASSES} are needed.",
            )
    distinct_train_labels = int(np.unique(labels["y_train"]).size)
    if distinct_train_labels < MIN_NUM_CLASSES:
        raise IntakeError(
            IntakeErrorCode.TOO_FEW_CLASSES,
            f"'y_train' contains only {distinct_train_labels} distinct label value; "
            f"the training split needs at least {MIN_NUM_CLASSES} classes.",
        )
    return num_classes


REGRESSION_TASK = "regression"
REGRESSION_OUTPUTS = 1


def _regression_targets(raw: Mapping[str, np.ndarray], has_num_classes: bool) -> dict[str, np.ndarray]:
    """Continuous targets as float32, after checking they are finite (and that no class count was sent)."""
    if has_num_classes:
        raise IntakeError(
            IntakeErrorCode.NPZ_UNEXPECTED_ARRAY,
            f"A regression dataset has no classes: drop the {NUM_CLASSES_ARRAY!r} array.",
        )
    with np.errstate(over="ignore"):
        targets = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in raw.items()}
    findings: list[dict[str, Any]] = []
    for name, values in targets.items():
        counts = count_non_finite(values)
        if counts.total:
            findings.append(
                finding(
                    IntakeErrorCode.NON_FINITE_VALUES,
                    f"Array {name!r} contains {counts.nan} NaN and {counts.inf} infinite target(s) "
                    "(values beyond float32's range count as infinite).",
                    array=name,
                    nan_count=counts.nan,
                    inf_count=counts.inf,
                )
            )
    raise_findings(
        findings,
        mixed_code=IntakeErrorCode.NON_FINITE_VALUES,
        summary="Regression targets must be finite; drop the affected samples.",
    )
    return targets


def _checked_headers(
    source: bytes | BinaryIO, members: list[zipfile.ZipInfo], *, max_entries: int, max_uncompressed_bytes: int
) -> dict[str, _NpyHeader]:
    """The archive's members and .npy headers checked (counts, sizes, names, dtypes, shapes), before any
    array is decompressed: the same checks for an upload in memory and one spooled to a file."""
    _check_members(members, max_entries=max_entries, max_uncompressed_bytes=max_uncompressed_bytes)
    _check_array_names({member.filename.removesuffix(NPY_SUFFIX) for member in members})
    headers = _read_npy_headers(source, members)
    raise_findings(
        _dtype_findings(headers),
        mixed_code=IntakeErrorCode.DTYPE_NOT_ALLOWED,
        summary="Some arrays have a dtype Lethe cannot use.",
    )
    raise_findings(
        _shape_findings(headers),
        mixed_code=IntakeErrorCode.SHAPE_MISMATCH,
        summary="The dataset arrays have inconsistent or unsupported shapes.",
    )
    return headers


def validate_npz(
    data: bytes,
    *,
    max_bytes: int,
    max_uncompressed_bytes: int,
    max_entries: int = 16,
    task: str = "classification",
) -> NpzDataset:
    """Validate an uploaded dataset archive and return it normalised; raise IntakeError if unusable.

    ``task="regression"``: ``y_*`` are continuous targets (any integer or float dtype, all finite), cast to
    float32; ``num_classes`` is 1 (one scalar output) and a ``num_classes`` member is refused.
    """
    check_upload_size(data, max_bytes, "dataset")
    reject_pickle(data, "dataset", hint=NPZ_FORMAT_HINT)
    members = _read_members(data)
    headers = _checked_headers(
        data, members, max_entries=max_entries, max_uncompressed_bytes=max_uncompressed_bytes
    )
    arrays = _load_arrays(data, headers)

    features = {name: _to_float32_features(arrays[name]) for name in FEATURE_ARRAYS}
    _check_finite_features(features, {name: arrays[name].dtype for name in FEATURE_ARRAYS})
    raw_labels = {name: arrays[name] for name in LABEL_ARRAYS}
    if task == REGRESSION_TASK:
        labels = _regression_targets(raw_labels, NUM_CLASSES_ARRAY in arrays)
        num_classes = REGRESSION_OUTPUTS
    else:
        _check_labels_integral(raw_labels)
        num_classes = _resolve_num_classes(raw_labels, arrays.get(NUM_CLASSES_ARRAY))
        # Every label is now a whole number in [0, num_classes), so the cast is exact.
        labels = {name: values.astype(np.int64) for name, values in raw_labels.items()}

    if features["x_train"].ndim == IMAGE_WITHOUT_CHANNEL_NDIM:
        # Image models expect NxCxHxW; a grayscale NxHxW upload gets its single channel made explicit.
        features = {name: values[:, np.newaxis, :, :] for name, values in features.items()}
    x_train, x_test = (np.ascontiguousarray(features[name]) for name in FEATURE_ARRAYS)
    y_train, y_test = (np.ascontiguousarray(labels[name]) for name in LABEL_ARRAYS)
    return NpzDataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        n_train=int(x_train.shape[0]),
        n_test=int(x_test.shape[0]),
        sha256=hashlib.sha256(data).hexdigest(),
    )


# ---------------------------------------------------------------------------------- streaming intake
# validate_npz above holds the upload, every decompressed array and their float32 copies at once. The API's
# upload route uses the streaming variant below instead: the upload stays in its (spooled) file, the labels
# are loaded (they are needed whole for the class checks, and are small next to the features), and each
# feature array is decompressed, normalised and checked a chunk of rows at a time while the caller writes it
# out, so the API holds about one chunk, not the dataset. Unlike validate_npz, it keeps uint8 images as uint8
# (keeps_uint8): the worker scales them on the device.

STREAM_CHUNK_BYTES = 8 * 1024 * 1024
SNIFF_HEAD_BYTES = 64 * 1024
HASH_CHUNK_BYTES = 1024 * 1024
FLOAT32_ITEMSIZE = 4
INT64_ITEMSIZE = 8
UINT8_ITEMSIZE = 1
# C x H x W plus the sample axis: what counts as images (uint8 flat features are converted to float32).
STORED_IMAGE_NDIM = 4
# N x H x W x C images with C in these (and a non-channel-like second axis) are stored channels-first, as
# ArrayDataset.from_arrays does for them.
IMAGE_CHANNEL_COUNTS = (1, 3, 4)
_PICKLE_MEMBER_SUFFIX = ".pkl"


def _file_size(source: BinaryIO) -> int:
    source.seek(0, io.SEEK_END)
    size = source.tell()
    source.seek(0)
    return size


def _sniff_bytes(source: BinaryIO, size: int) -> bytes:
    """The first bytes and the last byte: what pickle sniffing looks at outside zip archives."""
    source.seek(0)
    head = source.read(SNIFF_HEAD_BYTES)
    if size > len(head):
        source.seek(size - 1)
        head += source.read(1)
    source.seek(0)
    return head


def _file_sha256(source: BinaryIO) -> str:
    digest = hashlib.sha256()
    source.seek(0)
    while chunk := source.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    source.seek(0)
    return digest.hexdigest()


def stored_feature_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The stored (channels-first) shape of a feature array of ``shape``."""
    if len(shape) == IMAGE_WITHOUT_CHANNEL_NDIM:
        return (shape[0], 1, *shape[1:])
    if len(shape) == 4 and shape[3] in IMAGE_CHANNEL_COUNTS and shape[1] not in IMAGE_CHANNEL_COUNTS:
        return (shape[0], shape[3], shape[1], shape[2])
    return shape


def keeps_uint8(headers: Mapping[str, _NpyHeader]) -> bool:
    """uint8 images stay uint8 in storage (scaled by 1/255 on the worker's device, a quarter of float32's
    bytes). Only when both splits are uint8 images: a split of each kind would need two input transforms,
    and flat uint8 features (N x F) are not pixels, so both keep the float32 conversion at intake."""
    return all(
        headers[name].dtype == np.uint8
        and len(stored_feature_shape(headers[name].shape)) >= STORED_IMAGE_NDIM
        for name in FEATURE_ARRAYS
    )


def _normalise_feature_chunk(raw: np.ndarray, keep_uint8: bool) -> np.ndarray:
    """One chunk of rows as stored: uint8 pixels as they are (``keep_uint8``) or float32 (uint8 scaled to
    [0, 1]), channels-first, C-contiguous."""
    values = raw if keep_uint8 else _to_float32_features(raw)
    if values.ndim == IMAGE_WITHOUT_CHANNEL_NDIM:
        values = values[:, np.newaxis, :, :]
    elif stored_feature_shape(values.shape) != values.shape:
        values = values.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(values, dtype=np.uint8 if keep_uint8 else np.float32)


def feature_transforms(header: _NpyHeader, keep_uint8: bool) -> list[str]:
    """What intake did to a feature array, in words: recorded in the dataset's config and every result."""
    steps: list[str] = []
    shape = header.shape
    if len(shape) == IMAGE_WITHOUT_CHANNEL_NDIM:
        steps.append("N x H x W: a channel axis added (N x 1 x H x W)")
    elif stored_feature_shape(shape) != shape:
        steps.append("N x H x W x C: transposed to channels-first (N x C x H x W)")
    if keep_uint8:
        steps.append("uint8 pixels stored as uint8; scaled by 1/255 on the device")
    elif header.dtype == np.uint8:
        steps.append("uint8 features scaled by 1/255 at intake and stored as float32")
    elif header.dtype != np.float32:
        steps.append(f"{header.dtype} cast to float32 at intake")
    return steps


def decoded_bytes(headers: Mapping[str, _NpyHeader], *, regression: bool) -> int:
    """The bytes the arrays take once decoded as Lethe stores them (features uint8 or float32, labels int64,
    float32 targets), from the .npy headers alone: what decoding would allocate and write."""
    feature_itemsize = UINT8_ITEMSIZE if keeps_uint8(headers) else FLOAT32_ITEMSIZE
    features = sum(math.prod(headers[name].shape) * feature_itemsize for name in FEATURE_ARRAYS)
    label_itemsize = FLOAT32_ITEMSIZE if regression else INT64_ITEMSIZE
    labels = sum(math.prod(headers[name].shape) * label_itemsize for name in LABEL_ARRAYS)
    return features + labels


def _check_decoded_size(headers: Mapping[str, _NpyHeader], *, regression: bool, limit: int) -> None:
    """The declared uncompressed sizes are capped by _check_members, but decoding widens arrays (uint8
    labels become int64: x8; float16 features float32: x2), so the decoded size is capped too, from the
    headers, before any member is decompressed."""
    total = decoded_bytes(headers, regression=regression)
    if total > limit:
        counts = ", ".join(f"{name} {math.prod(headers[name].shape)}" for name in REQUIRED_ARRAYS)
        raise IntakeError(
            IntakeErrorCode.ZIP_BOMB,
            f"The arrays would decode to {total} bytes (elements: {counts}; labels as int64, features as "
            f"stored), over the limit of {limit} bytes. Upload a smaller dataset.",
        )


@dataclass(eq=False)
class NpzPlan:
    """An uploaded .npz that passed every check short of its feature values: what it will store and how
    big that is, before anything is decompressed beyond the labels. ``feature_chunks`` then streams each
    feature array, checking its values as it goes."""

    source: BinaryIO
    members: dict[str, zipfile.ZipInfo]
    headers: dict[str, _NpyHeader]
    y_train: np.ndarray
    y_test: np.ndarray
    num_classes: int
    regression: bool
    sha256: str  # of the uploaded bytes
    upload_bytes: int

    def feature_shape(self, name: str) -> tuple[int, ...]:
        return stored_feature_shape(self.headers[name].shape)

    @property
    def keeps_uint8(self) -> bool:
        return keeps_uint8(self.headers)

    @property
    def feature_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.uint8 if self.keeps_uint8 else np.float32)

    @property
    def transforms(self) -> list[str]:
        return feature_transforms(self.headers["x_train"], self.keeps_uint8)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.feature_shape("x_train")[1:]

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    @property
    def stored_bytes(self) -> int:
        """The bytes of the stored arrays (uint8 images or float32 features, int64 or float32 labels): the
        stored archive's size less its few hundred bytes of npy headers and zip records, known before
        anything is written."""
        return decoded_bytes(self.headers, regression=self.regression)

    def feature_chunks(self, name: str) -> Iterator[np.ndarray]:
        """The feature array ``name`` as stored, in chunks of rows of about STREAM_CHUNK_BYTES; raises
        IntakeError (non-finite-values) after the last chunk when any value is NaN or infinite, and
        npz-structure when the compressed data is corrupt."""
        header = self.headers[name]
        nan = inf = 0
        try:
            with zipfile.ZipFile(self.source) as archive, archive.open(self.members[name]) as stream:
                version = np.lib.format.read_magic(stream)
                _NPY_HEADER_READERS[version](stream, max_header_size=MAX_NPY_HEADER_BYTES)
                keep_uint8 = self.keeps_uint8
                for raw in _raw_row_chunks(stream, header):
                    chunk = _normalise_feature_chunk(raw, keep_uint8)
                    if keep_uint8:  # pixels are finite by construction
                        yield chunk
                        continue
                    counts = count_non_finite(chunk)
                    nan, inf = nan + counts.nan, inf + counts.inf
                    yield chunk
                # Reading past the last byte (zipfile stops at the member's declared size, which the header
                # check matched to the data) is what makes zipfile compare the member's CRC.
                stream.read(1)
        except ZIP_PARSE_ERRORS:
            raise _structure_error(
                f"Array {name!r} could not be read: its compressed data is corrupt or fails its checksum."
            ) from None
        if nan or inf:
            overflow_note = (
                " (float64 values beyond float32's ±3.4e38 range count as infinite)"
                if header.dtype == np.float64
                else ""
            )
            raise_findings(
                [
                    finding(
                        IntakeErrorCode.NON_FINITE_VALUES,
                        f"Array {name!r} contains {nan} NaN and {inf} infinite value(s){overflow_note}.",
                        array=name,
                        nan_count=nan,
                        inf_count=inf,
                    )
                ],
                mixed_code=IntakeErrorCode.NON_FINITE_VALUES,
                summary="Features must be finite; impute or drop the affected samples.",
            )


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("truncated array data")
    return data


def _raw_row_chunks(stream: IO[bytes], header: _NpyHeader) -> Iterator[np.ndarray]:
    """The array's rows as read from the member, a chunk at a time (C order); a Fortran-ordered array is
    read whole (numpy stores it column by column, so rows cannot be streamed), which np.savez only writes
    for arrays that were Fortran-contiguous in memory."""
    rows, row_shape = header.shape[0], header.shape[1:]
    # Sized by the float32 rows the caller makes of them (larger than the raw rows for uint8 and float16).
    itemsize = max(FLOAT32_ITEMSIZE, header.dtype.itemsize)
    step = max(1, STREAM_CHUNK_BYTES // max(1, math.prod(row_shape) * itemsize))
    if header.fortran_order:
        whole = np.frombuffer(
            _read_exact(stream, math.prod(header.shape) * header.dtype.itemsize), header.dtype
        )
        array = whole.reshape(header.shape, order="F")
        for start in range(0, rows, step):
            yield array[start : start + step]
        return
    row_bytes = math.prod(row_shape) * header.dtype.itemsize
    for start in range(0, rows, step):
        count = min(step, rows - start)
        yield np.frombuffer(_read_exact(stream, count * row_bytes), header.dtype).reshape(count, *row_shape)


def _load_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, header: _NpyHeader) -> np.ndarray:
    name = member.filename.removesuffix(NPY_SUFFIX)
    try:
        with archive.open(member) as stream:
            loaded = np.lib.format.read_array(
                stream, allow_pickle=False, max_header_size=MAX_NPY_HEADER_BYTES
            )
    except ZIP_PARSE_ERRORS:
        raise _structure_error(
            f"Array {name!r} could not be read: its compressed data is corrupt or fails its checksum."
        ) from None
    if loaded.shape != header.shape or loaded.dtype != header.dtype:
        raise _structure_error(f"Array {name!r} does not match its own .npy header.")
    return loaded


def inspect_npz(
    source: BinaryIO,
    *,
    max_bytes: int,
    max_uncompressed_bytes: int,
    max_entries: int = 16,
    task: str = "classification",
) -> NpzPlan:
    """The checks of validate_npz on an upload in a seekable file, without decompressing the features.

    Everything but the feature values is checked here (format, pickles, zip bombs, names, dtypes, shapes,
    labels and classes); the feature values are checked by ``NpzPlan.feature_chunks`` as they are read.
    """
    size = _file_size(source)
    if size > max_bytes:
        raise IntakeError(
            IntakeErrorCode.UPLOAD_TOO_LARGE,
            f"The dataset is {size} bytes, over the upload limit of {max_bytes} bytes. "
            "Upload a smaller file or ask the operator to raise the limit.",
        )
    if size == 0:
        raise IntakeError(IntakeErrorCode.EMPTY_UPLOAD, "The uploaded dataset is empty (0 bytes).")
    head = _sniff_bytes(source, size)
    if not starts_like_zip(head):
        reject_pickle(head, "dataset", hint=NPZ_FORMAT_HINT)
    members = _read_members(source)
    if any(member.filename.endswith(_PICKLE_MEMBER_SUFFIX) for member in members):
        raise IntakeError(
            IntakeErrorCode.PICKLE_REJECTED,
            "The uploaded dataset is a zip archive with pickled members (the format torch.save, TorchScript "
            "and torch.package write). Lethe never loads pickles, because unpickling can run arbitrary code "
            f"on the server. {NPZ_FORMAT_HINT}",
        )
    headers = _checked_headers(
        source, members, max_entries=max_entries, max_uncompressed_bytes=max_uncompressed_bytes
    )
    regression = task == REGRESSION_TASK
    _check_decoded_size(headers, regression=regression, limit=max_uncompressed_bytes)
    by_name = {member.filename.removesuffix(NPY_SUFFIX): member for member in members}
    try:
        archive = zipfile.ZipFile(source)
    except ZIP_PARSE_ERRORS:
        raise _structure_error("The .npz archive is corrupt: it cannot be opened.") from None
    with archive:
        small = {
            name: _load_member(archive, by_name[name], headers[name])
            for name in (*LABEL_ARRAYS, *OPTIONAL_ARRAYS)
            if name in by_name
        }
    raw_labels = {name: small[name] for name in LABEL_ARRAYS}
    if regression:
        labels = _regression_targets(raw_labels, NUM_CLASSES_ARRAY in small)
        num_classes = REGRESSION_OUTPUTS
    else:
        _check_labels_integral(raw_labels)
        num_classes = _resolve_num_classes(raw_labels, small.get(NUM_CLASSES_ARRAY))
        labels = {name: values.astype(np.int64) for name, values in raw_labels.items()}
    return NpzPlan(
        source=source,
        members=by_name,
        headers=headers,
        y_train=np.ascontiguousarray(labels["y_train"]),
        y_test=np.ascontiguousarray(labels["y_test"]),
        num_classes=num_classes,
        regression=regression,
        sha256=_file_sha256(source),
        upload_bytes=size,
    )
