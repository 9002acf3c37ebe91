"""Datasets: built-ins materialised from the engine's numpy registry, or validated .npz uploads.

Content-addressed by a hash of the normalised arrays, so the same data is stored once per tenant. The
sources that use these (and how a worker loads what they stored) are app.services.data.dataset_sources.
"""

from __future__ import annotations

import hashlib
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.problems import DomainError, NotFound, Unprocessable, validation_errors
from app.models import Dataset
from app.services.ops import quotas
from app.storage import ArtifactStore
from app.storage.base import content_key
from workers.engine.datasets import DATASETS, ArrayDataset
from workers.engine.datasets.arrays import UINT8_MAX, Normalization
from workers.engine.errors import InvalidInputError, UnknownEntryError
from workers.engine.task_types import TaskType

if TYPE_CHECKING:
    from app.intake.npz_check import NpzPlan

# An upload's normalisation: given (per-channel mean/std), computed at intake from the train split, or none.
COMPUTED: Literal["computed"] = "computed"
NormalizationRequest = Normalization | Literal["computed"] | None
# The smallest computed standard deviation: one pixel level on the [0, 1] scale.
MIN_COMPUTED_STD = 1.0 / UINT8_MAX


def _digest_header(digest: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    digest.update(f"{dtype.str}{tuple(int(size) for size in shape)}".encode())


def _digest_bytes(digest: Any, array: np.ndarray) -> None:
    # A view of the array's memory, not a copy (tobytes() would double the peak for a big array).
    digest.update(np.ascontiguousarray(array).data.cast("B"))


def _digest_normalization(digest: Any, normalization: Normalization | None) -> None:
    # Only when set, so the digests of datasets without one are those of the stores made before it existed.
    if normalization is not None:
        digest.update(f"normalization={list(normalization.mean)}/{list(normalization.std)}".encode())


def array_digest(dataset: ArrayDataset) -> str:
    """The dataset's content address: dtype, shape and bytes of each array, then the class count and the
    normalisation (the upload path computes the same digest while it streams the arrays, see
    store_uploaded_dataset)."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        _digest_header(digest, array.dtype, array.shape)
        _digest_bytes(digest, array)
    digest.update(f"classes={dataset.num_classes}".encode())
    _digest_normalization(digest, dataset.normalization)
    return digest.hexdigest()


def build_builtin(name: str, config: dict[str, Any]) -> tuple[ArrayDataset, dict[str, Any]]:
    try:
        spec = DATASETS.get(name)
    except UnknownEntryError as exc:
        raise Unprocessable(str(exc).strip("'\""), code="unknown-dataset") from exc
    try:
        parsed = spec.config_model.model_validate(config)
    except ValidationError as exc:
        raise Unprocessable(
            f"invalid config for dataset '{name}'",
            code="invalid-dataset-config",
            errors=validation_errors(exc.errors()),
        ) from exc
    try:
        return spec.build(parsed), parsed.model_dump(mode="json")
    except InvalidInputError as exc:
        raise Unprocessable(str(exc), code="invalid-dataset-config") from exc


def store_dataset(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    dataset: ArrayDataset,
    name: str,
    source: str,
    builtin: str | None,
    config: dict[str, Any],
) -> tuple[Dataset, bool]:
    """Persist (or find) a dataset. Returns (row, created)."""
    digest = array_digest(dataset)
    existing = session.scalar(select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.sha256 == digest))
    if existing is not None:
        return existing, False
    blob = dataset.to_npz_bytes()
    quotas.check_storage(session, tenant_id, len(blob), settings, what="this dataset (stored)")
    key = content_key("datasets", str(tenant_id), digest, ".npz")
    store.put(key, blob)
    counts = (
        []  # regression: continuous targets, no classes
        if dataset.task is TaskType.regression
        else np.bincount(dataset.y_train, minlength=dataset.num_classes).tolist()
    )
    row = Dataset(
        tenant_id=tenant_id,
        name=name,
        source=source,
        builtin=builtin,
        config=config,
        task=dataset.task.value,
        num_classes=dataset.num_classes,
        n_train=dataset.n_train,
        n_test=dataset.n_test,
        input_shape=list(dataset.input_shape),
        class_counts=[int(c) for c in counts],
        sha256=digest,
        storage_key=key,
        size_bytes=len(blob),
    )
    session.add(row)
    session.flush()
    return row, True


def _write_member(
    archive: zipfile.ZipFile,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    chunks: Iterable[np.ndarray],
    digest: Any | None,
) -> None:
    """One .npy member of an uncompressed archive, as np.savez writes it, from chunks of rows."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    if digest is not None:
        _digest_header(digest, dtype, shape)
    with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
        np.lib.format.write_array_header_1_0(out, header)
        for chunk in chunks:
            if digest is not None:
                _digest_bytes(digest, chunk)
            out.write(np.ascontiguousarray(chunk, dtype=dtype).data.cast("B"))


class ChannelStats:
    """Per-channel mean and standard deviation of image rows on the [0, 1] scale, accumulated chunk by chunk
    in float64 (sums of x and x², so one pass over the training split while it is written)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> np.ndarray:
        values = chunk.astype(np.float64)
        if chunk.dtype == np.uint8:
            values /= UINT8_MAX
        axes = (0, *range(2, values.ndim))  # every axis but the channel
        total, squares = values.sum(axis=axes), np.square(values).sum(axis=axes)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += values.size // values.shape[1]
        return chunk

    def normalization(self) -> Normalization:
        if self.total is None or self.squares is None or not self.count:
            raise ValueError("no rows were added")
        mean = self.total / self.count
        variance = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        # A constant channel has no spread to divide by: one pixel level (1/255) keeps its inputs bounded.
        std = np.maximum(np.sqrt(variance), MIN_COMPUTED_STD)
        return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _write_stored_npz(
    plan: NpzPlan, path: Path, normalization: Normalization | None, compute_normalization: bool
) -> tuple[str, Normalization | None]:
    """Write the dataset to ``path`` as ArrayDataset.to_npz_bytes would (same members, dtypes and digest),
    one chunk of feature rows at a time; returns the content digest (array_digest's) and the normalisation
    (``compute_normalization``: computed from the training split while it is written)."""
    digest = hashlib.sha256()
    label_dtype = np.dtype(np.float32 if plan.regression else np.int64)
    task = TaskType.regression if plan.regression else TaskType.classification
    stats = ChannelStats() if compute_normalization else None
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for x_name, y_name, labels in (
            ("x_train", "y_train", plan.y_train),
            ("x_test", "y_test", plan.y_test),
        ):
            shape = plan.feature_shape(x_name)
            chunks = plan.feature_chunks(x_name)
            if stats is not None and x_name == "x_train":
                chunks = (stats.add(chunk) for chunk in chunks)
            _write_member(archive, x_name, shape, plan.feature_dtype, chunks, digest)
            _write_member(archive, y_name, labels.shape, label_dtype, [labels.astype(label_dtype)], digest)
        if stats is not None:
            normalization = stats.normalization()
        members: list[tuple[str, np.ndarray]] = [
            ("num_classes", np.asarray(plan.num_classes, dtype=np.int64)),
            ("task", np.asarray(task.value)),
        ]
        if normalization is not None:
            members += [
                ("norm_mean", np.asarray(normalization.mean, dtype=np.float64)),
                ("norm_std", np.asarray(normalization.std, dtype=np.float64)),
            ]
        for name, value in members:
            _write_member(archive, name, value.shape, value.dtype, [value], None)
    digest.update(f"classes={plan.num_classes}".encode())
    _digest_normalization(digest, normalization)
    return digest.hexdigest(), normalization


def _check_normalization(plan: NpzPlan, request: NormalizationRequest) -> None:
    """A normalisation needs images (C x H x W) and, when given, one mean and std per channel."""
    if request is None:
        return
    shape = plan.input_shape
    if len(shape) < 2:  # C x H at least
        raise Unprocessable(
            f"normalization applies to images (C x H x W); this dataset's samples have shape {list(shape)}",
            code="invalid-dataset-config",
        )
    if isinstance(request, Normalization):
        try:
            request.check(shape[0])
        except InvalidInputError as exc:
            raise Unprocessable(str(exc), code="invalid-dataset-config") from exc


def store_uploaded_dataset(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    source: BinaryIO,
    name: str,
    task: TaskType,
    normalization: NormalizationRequest = None,
    max_bytes: int | None = None,
) -> tuple[Dataset, bool, NpzPlan]:
    """Validate an uploaded .npz (in a seekable file) and persist (or find) it. Returns (row, created, plan).

    Memory: the labels plus one chunk of feature rows (app.intake.npz_check.NpzPlan), never the dataset.
    uint8 images are stored as uint8 (the worker scales them on the device), other features as float32.
    ``normalization``: the uploader's per-channel mean/std, ``"computed"`` (from the training split at
    intake, once) or None; stored with the arrays and in the row's config, applied on the device.
    The stored size (as workers read it) is checked against the tenant's storage quota before anything is
    written (the arrays' bytes, from their headers), and again with the stored file's exact size, under the
    tenant lock, before the file is put in place and the row inserted; a refused upload leaves nothing
    behind.
    """
    from app.intake.errors import IntakeError
    from app.intake.npz_check import inspect_npz

    try:
        plan = inspect_npz(
            source,
            max_bytes=settings.max_upload_bytes if max_bytes is None else max_bytes,
            max_uncompressed_bytes=settings.max_dataset_uncompressed_bytes,
            task=task.value,
        )
        _check_normalization(plan, normalization)
        quotas.check_storage(session, tenant_id, plan.stored_bytes, settings, what="this dataset (stored)")
        # Release the tenant lock (and SQLite's write lock) while the arrays are converted: the final check
        # below takes it again.
        session.rollback()
        staging = store.staging_path(f"{tenant_id}/datasets")
        try:
            given = normalization if isinstance(normalization, Normalization) else None
            digest, resolved = _write_stored_npz(plan, staging, given, normalization == COMPUTED)
            existing = session.scalar(
                select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.sha256 == digest)
            )
            if existing is not None:
                staging.unlink(missing_ok=True)
                return existing, False, plan
            size = staging.stat().st_size
            quotas.check_storage(session, tenant_id, size, settings, what="this dataset (stored)")
            key = content_key("datasets", str(tenant_id), digest, ".npz")
            store.put_file(key, staging)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
    except IntakeError as exc:
        raise DomainError(exc.detail, code=exc.code, status=exc.status, errors=exc.errors or None) from exc
    counts = [] if plan.regression else np.bincount(plan.y_train, minlength=plan.num_classes).tolist()
    row = Dataset(
        tenant_id=tenant_id,
        name=name,
        source="upload",
        builtin=None,
        config=upload_config(plan, resolved, computed=normalization == COMPUTED),
        task=task.value,
        num_classes=plan.num_classes,
        n_train=plan.n_train,
        n_test=plan.n_test,
        input_shape=list(plan.input_shape),
        class_counts=[int(c) for c in counts],
        sha256=digest,
        storage_key=key,
        size_bytes=size,
    )
    session.add(row)
    session.flush()
    return row, True, plan


def upload_config(plan: NpzPlan, normalization: Normalization | None, *, computed: bool) -> dict[str, Any]:
    """An upload's config: how its stored arrays were made and become the model's inputs (recorded with the
    row and, through the dataset's load, in every job result)."""
    return {
        "upload_sha256": plan.sha256,
        "stored_dtype": str(plan.feature_dtype),
        "transforms": plan.transforms,
        "normalization": (
            None
            if normalization is None
            else {
                "mean": list(normalization.mean),
                "std": list(normalization.std),
                "source": "computed" if computed else "uploader",
            }
        ),
    }


def parse_normalization(text: str | None) -> NormalizationRequest:
    """An upload's ``normalization`` form field: absent, ``"computed"``, or JSON ``{"mean", "std"}``."""
    from workers.engine.datasets.data_root.formats import NormalizationConfig

    if text is None or not text.strip():
        return None
    if text.strip() == COMPUTED:
        return COMPUTED
    try:
        parsed = NormalizationConfig.model_validate_json(text)
    except ValidationError as exc:
        raise Unprocessable(
            'normalization must be "computed" or JSON {"mean": [...], "std": [...]}',
            code="invalid-dataset-config",
            errors=validation_errors(exc.errors()),
        ) from exc
    return Normalization(tuple(parsed.mean), tuple(parsed.std))


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"dataset {dataset_id} not found", code="dataset-not-found")
    return row
