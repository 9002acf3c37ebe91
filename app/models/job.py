"""Jobs live here; Celery only delivers their ids. Status, lease, progress and results are rows."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, UUIDPrimaryKey, utcnow


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


# = workers.engine.job_kinds.spec.KIND_NAME_MAX_LENGTH (models import nothing of the engine; a test checks).
KIND_COLUMN_LENGTH = 20


class JobKind(StrEnum):
    """Names of the built-in job kinds, for code that submits or selects them. The kinds a job can be are
    the job-kind registry's entries (``workers.engine.job_kinds``): ``jobs.kind`` stores the entry's name as
    a string, so a kind registered elsewhere (a plugin's, a test's) is stored and served without a member
    here or a migration."""

    train = "train"
    retrain = "retrain"
    unlearn = "unlearn"
    evaluate = "evaluate"
    prune = "prune"
    worst_case_search = "worst_case_search"
    audit = "audit"
    sample = "sample"  # images + a PNG grid from a generative model
    recovery = "recovery"  # quantization / pruning / relearning audit of an unlearned model


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class Job(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_tenant_started", "tenant_id", "started_at"),  # the fair pick's latest start per tenant
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(KIND_COLUMN_LENGTH))
    method: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued)
    params: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)
    device_requested: Mapped[str] = mapped_column(String(20))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    forget_set_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("forget_sets.id", ondelete="RESTRICT"))
    output_model_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    architecture: Mapped[str | None] = mapped_column(String(100))
    arch_config: Mapped[dict[str, Any] | None]

    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    environment: Mapped[dict[str, Any] | None]
    timings: Mapped[dict[str, Any] | None]
    code_version: Mapped[str] = mapped_column(String(100))
    checkpoint_key: Mapped[str | None] = mapped_column(String(300))
    checkpoint_epoch: Mapped[int | None]
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL"), index=True
    )
    # Content hash of everything that determines a reusable result (retrain oracle, evaluation of the
    # original): a later job of the tenant with the same key reuses this one instead of running again.
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # X-Request-ID of the POST that created the job: the workers log it with the job's lines (correlation).
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Bumped on every change: the ETag of the job resource.
    version: Mapped[int] = mapped_column(Integer, default=1)


class CampaignStatus(StrEnum):
    running = "running"
    finished = "finished"
    cancelled = "cancelled"


class Campaign(UUIDPrimaryKey, CreatedAt, Base):
    """A grid of methods x forget sets x seeds on one original model, with the retrain oracle per cell."""

    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_tenant_created", "tenant_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus), default=CampaignStatus.running)
    stage: Mapped[str] = mapped_column(String(20))  # tuning | main | done
    spec: Mapped[dict[str, Any]]
    chosen_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The grid: one entry per cell {job_id, stage, role, label, candidate, forget_set_id, seed}. Kept here
    # rather than on jobs because a cached retrain serves the cells of several campaigns.
    cells: Mapped[list[Any]] = mapped_column(default=list)
    finished_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)


class JobEvent(Base):
    """Append-only history of a job (the SSE stream replays it; ``id`` is the event id)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(50))
    attempt: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]]


class Metric(Base):
    """One scalar result of a job; unique per (job, name) so a redelivered job cannot write twice."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float]
    attempt: Mapped[int] = mapped_column(Integer)
