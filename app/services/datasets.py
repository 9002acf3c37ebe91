"""Datasets: built-ins materialised from the engine's numpy registry, or validated .npz uploads.

Content-addressed by a hash of the normalised arrays, so the same data is stored once per tenant.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.problems import NotFound, Unprocessable, validation_errors
from app.models import Dataset
from app.storage import ArtifactStore
from app.storage.local import content_key
from workers.engine.datasets import DATASETS, ArrayDataset
from workers.engine.errors import InvalidInputError, UnknownEntryError
from workers.engine.tasks import TaskType


def array_digest(dataset: ArrayDataset) -> str:
    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
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


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"dataset {dataset_id} not found", code="dataset-not-found")
    return row


def load_train_labels(store: ArtifactStore, row: Dataset) -> np.ndarray:
    return ArrayDataset.from_npz_bytes(store.get(row.storage_key)).y_train
