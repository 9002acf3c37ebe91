"""Inputs of jobs: datasets, model checkpoints and forget sets (all tenant-scoped, content-hashed)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, UUIDPrimaryKey


class Dataset(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sha256"),
        Index("ix_datasets_tenant_created", "tenant_id", "created_at", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20))  # builtin | upload
    builtin: Mapped[str | None] = mapped_column(String(100))
    config: Mapped[dict[str, Any]]
    task: Mapped[str] = mapped_column(String(30))
    num_classes: Mapped[int]
    n_train: Mapped[int]
    n_test: Mapped[int]
    input_shape: Mapped[list[Any]]
    # Train labels are kept in the row: forget-set validation (class exists, class-wise sets) needs
    # them in the API process without loading the arrays.
    class_counts: Mapped[list[Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class Model(UUIDPrimaryKey, CreatedAt, Base):
    """A checkpoint: registry architecture + config + safetensors weights."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_tenant_created", "tenant_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    arch_config: Mapped[dict[str, Any]]
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    source: Mapped[str] = mapped_column(String(20))  # upload | job
    # The producing job (no FK: jobs.output_model_id already links the pair, and a cycle of foreign
    # keys would need deferred constraints on every dialect).
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    train_recipe: Mapped[dict[str, Any] | None]
    seed: Mapped[int | None]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_params: Mapped[int] = mapped_column(BigInteger)
    # A pruned model's sparsity masks (safetensors, uint8, keyed by parameter): every job on this model
    # keeps the pruned weights at zero, and its retrain reuses the mask.
    mask_key: Mapped[str | None] = mapped_column(String(300))
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    sparsity: Mapped[float | None]


class ForgetSet(UUIDPrimaryKey, CreatedAt, Base):
    """Sorted train-split indices to forget, with the spec that produced them and their hash."""

    __tablename__ = "forget_sets"
    __table_args__ = (Index("ix_forget_sets_tenant_created", "tenant_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # indices | class | random
    spec: Mapped[dict[str, Any]]
    forget_class: Mapped[int | None]
    size: Mapped[int]
    indices: Mapped[list[Any]]
    sha256: Mapped[str] = mapped_column(String(64))
    # Searched forget sets: the producing job and the per-item difficulty scores (the final continuous w).
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    scores_key: Mapped[str | None] = mapped_column(String(300))


class ShadowModel(UUIDPrimaryKey, CreatedAt, Base):
    """A model an audit trained or unlearned, stored once per tenant under the content hash of everything
    that determines it (workers.engine.audit.store) and reused by later audits with the same inputs."""

    __tablename__ = "shadow_models"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_shadow_models_tenant_created", "tenant_id", "created_at", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))  # base | retrain | unlearned | pool
    architecture: Mapped[str] = mapped_column(String(100))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]  # the key's material: recipe, subset digest, seed, method, ...
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The audit job that produced it (no FK: a deleted job must not take reusable models with it).
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    use_count: Mapped[int] = mapped_column(default=0)
    last_used_at: Mapped[datetime | None]
