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
from typing import TYPE_CHECKING, Any, BinaryIO

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
from workers.engine.errors import InvalidInputError, UnknownEntryError
from workers.engine.task_types import TaskType

if TYPE_CHECKING:
    from app.intake.npz_check import NpzPlan


def _digest_header(digest: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    digest.update(f"{dtype.str}{tuple(int(size) for size in shape)}".encode())


def _digest_bytes(digest: Any, array: np.ndarray) -> None:
    # A view of the array's memory, not a copy (tobytes() would double the peak for a big array).
    digest.update(np.ascontiguousarray(array).data.cast("B"))


def array_digest(dataset: ArrayDataset) -> str:
    """The dataset's content address: dtype, shape and bytes of each array, then the class count (the upload
    path computes the same digest while it streams the arrays, see store_uploaded_dataset)."""
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        _digest_header(digest, array.dtype, array.shape)
        _digest_bytes(digest, array)
    digest.update(f"classes={dataset.num_classes}".encode())
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


def _write_stored_npz(plan: NpzPlan, path: Path) -> str:
    """Write the dataset to ``path`` as ArrayDataset.to_npz_bytes would (same members, dtypes and digest),
    one chunk of feature rows at a time; returns the content digest (array_digest's)."""
    digest = hashlib.sha256()
    label_dtype = np.dtype(np.float32 if plan.regression else np.int64)
    task = TaskType.regression if plan.regression else TaskType.classification
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for x_name, y_name, labels in (
            ("x_train", "y_train", plan.y_train),
            ("x_test", "y_test", plan.y_test),
        ):
            shape = plan.feature_shape(x_name)
            _write_member(archive, x_name, shape, np.dtype(np.float32), plan.feature_chunks(x_name), digest)
            _write_member(archive, y_name, labels.shape, label_dtype, [labels.astype(label_dtype)], digest)
        for name, value in (
            ("num_classes", np.asarray(plan.num_classes, dtype=np.int64)),
            ("task", np.asarray(task.value)),
        ):
            _write_member(archive, name, value.shape, value.dtype, [value], None)
    digest.update(f"classes={plan.num_classes}".encode())
    return digest.hexdigest()


def store_uploaded_dataset(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    source: BinaryIO,
    name: str,
    task: TaskType,
) -> tuple[Dataset, bool, NpzPlan]:
    """Validate an uploaded .npz (in a seekable file) and persist (or find) it. Returns (row, created, plan).

    Memory: the labels plus one chunk of feature rows (app.intake.npz_check.NpzPlan), never the dataset.
    The stored size (float32 features, as workers read them) is checked against the tenant's storage quota
    before anything is written (the arrays' bytes, from their headers), and again with the stored file's
    exact size, under the tenant lock, before the file is put in place and the row inserted; a refused
    upload leaves nothing behind.
    """
    from app.intake.errors import IntakeError
    from app.intake.npz_check import inspect_npz

    try:
        plan = inspect_npz(
            source,
            max_bytes=settings.max_upload_bytes,
            max_uncompressed_bytes=settings.max_dataset_uncompressed_bytes,
            task=task.value,
        )
        quotas.check_storage(session, tenant_id, plan.stored_bytes, settings, what="this dataset (stored)")
        # Release the tenant lock (and SQLite's write lock) while the arrays are converted: the final check
        # below takes it again.
        session.rollback()
        staging = store.staging_path(f"{tenant_id}/datasets")
        try:
            digest = _write_stored_npz(plan, staging)
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
        config={"upload_sha256": plan.sha256},
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


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"dataset {dataset_id} not found", code="dataset-not-found")
    return row
