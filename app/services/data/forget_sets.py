"""Forget sets: explicit indices, a whole class, a seeded random fraction or (regression) a target range,
stored sorted with a hash."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
from sqlalchemy.orm import Session

from app.core.problems import NotFound, Unprocessable
from app.models import Dataset, ForgetSet
from app.schemas.resources import ClassSpec, ForgetSetCreate, IndicesSpec, RandomSpec, TargetRangeSpec
from app.services.data.dataset_sources import load_train_labels
from app.storage import ArtifactStore

REGRESSION = "regression"


def indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def resolve_indices(
    request: ForgetSetCreate, dataset: Dataset, store: ArtifactStore
) -> tuple[np.ndarray, int | None]:
    """The sorted indices the spec selects, and the class for class-wise forgetting."""
    spec = request.spec
    n = dataset.n_train
    forget_class: int | None = None
    if isinstance(spec, IndicesSpec):
        indices = np.asarray(spec.indices, dtype=np.int64)
        if indices.size == 0:
            raise Unprocessable("the forget set is empty: give at least one index", code="empty-forget-set")
        bad = indices[(indices < 0) | (indices >= n)]
        if bad.size:
            raise Unprocessable(
                f"{bad.size} index(es) out of range [0, {n}) of the train split, e.g. {bad[:5].tolist()}",
                code="index-out-of-range",
            )
        unique, counts = np.unique(indices, return_counts=True)
        duplicates = unique[counts > 1]
        if duplicates.size:
            raise Unprocessable(
                f"{duplicates.size} duplicated index(es), e.g. {duplicates[:5].tolist()}:"
                " list each sample once",
                code="duplicate-indices",
            )
        indices = unique
    elif isinstance(spec, ClassSpec):
        if dataset.task == REGRESSION:
            raise Unprocessable(
                "a regression dataset has no classes: forget a target range instead"
                ' ({"kind": "target_range", "low": ..., "high": ...})',
                code="task-mismatch",
            )
        forget_class = spec.class_
        if forget_class >= dataset.num_classes or dataset.class_counts[forget_class] == 0:
            raise Unprocessable(
                f"class {forget_class} does not occur in the train split"
                f" (classes 0..{dataset.num_classes - 1}"
                f" with samples: {[c for c, k in enumerate(dataset.class_counts) if k]})",
                code="unknown-class",
            )
        labels = load_train_labels(store, dataset)
        indices = np.flatnonzero(labels == forget_class).astype(np.int64)
    elif isinstance(spec, RandomSpec):
        size = round(spec.fraction * n)
        if size == 0:
            raise Unprocessable(
                f"fraction {spec.fraction} of {n} train samples selects nothing", code="empty-forget-set"
            )
        rng = np.random.default_rng(spec.seed)
        indices = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
    elif isinstance(spec, TargetRangeSpec):
        indices = _target_range_indices(spec, dataset, store)
    else:  # pragma: no cover - the discriminated union admits nothing else
        raise Unprocessable("unknown forget-set kind")
    if indices.size >= n:
        raise Unprocessable(
            "the forget set covers the whole train split: nothing would remain to retain",
            code="whole-dataset",
        )
    return indices, forget_class


def _target_range_indices(spec: TargetRangeSpec, dataset: Dataset, store: ArtifactStore) -> np.ndarray:
    """Train samples whose target lies in [low, high] (a missing bound is open)."""
    if dataset.task != REGRESSION:
        raise Unprocessable(
            f"target_range forget sets need a regression dataset; this one is {dataset.task}",
            code="task-mismatch",
        )
    targets = load_train_labels(store, dataset).astype(np.float64)
    inside = np.ones(targets.shape[0], dtype=bool)
    if spec.low is not None:
        inside &= targets >= spec.low
    if spec.high is not None:
        inside &= targets <= spec.high
    indices = np.flatnonzero(inside).astype(np.int64)
    if indices.size == 0:
        raise Unprocessable(
            f"no train target lies in [{spec.low}, {spec.high}] (targets span"
            f" {float(targets.min()):g}..{float(targets.max()):g})",
            code="empty-forget-set",
        )
    return indices


def create_forget_set(
    session: Session, store: ArtifactStore, tenant_id: uuid.UUID, request: ForgetSetCreate, dataset: Dataset
) -> ForgetSet:
    indices, forget_class = resolve_indices(request, dataset, store)
    spec = request.spec.model_dump(mode="json", by_alias=True)
    if isinstance(request.spec, IndicesSpec):
        spec = {
            "kind": "indices",
            "count": int(indices.size),
        }  # the indices themselves are stored once, below
    row = ForgetSet(
        tenant_id=tenant_id,
        dataset_id=dataset.id,
        name=request.name or f"{request.spec.kind}-{indices.size}",
        kind=request.spec.kind,
        spec=spec,
        forget_class=forget_class,
        size=int(indices.size),
        indices=indices.tolist(),
        sha256=indices_digest(indices),
    )
    session.add(row)
    session.flush()
    return row


def get_forget_set(session: Session, tenant_id: uuid.UUID, forget_set_id: uuid.UUID) -> ForgetSet:
    row = session.get(ForgetSet, forget_set_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"forget set {forget_set_id} not found", code="forget-set-not-found")
    return row
