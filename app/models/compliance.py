"""Compliance: versioned policies, deletion requests and the signed reports they yield.

A policy version is immutable: publishing rules under an existing name adds the next version. A deletion
request runs the jobs its policy needs (the unlearning, the retrain oracle, an evaluation of the original,
the identity control and, when a rule names an audit metric, the audit and the identity control's audit) and
is advanced by the reaper until it issues a report.
A report row is written once and never updated; re-issuing adds another row.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, UUIDPrimaryKey


class DeletionRequestStatus(StrEnum):
    running = "running"  # its jobs are queued or running
    issued = "issued"  # every job finished and a report was issued (whatever its verdict)
    failed = "failed"  # a job it needs failed or was cancelled: no report
    cancelled = "cancelled"


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class Policy(UUIDPrimaryKey, CreatedAt, Base):
    """One immutable version of a named policy: a list of rules a deletion request's result must meet."""

    __tablename__ = "policies"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "version"),
        Index("ix_policies_tenant_created", "tenant_id", "created_at", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(2000))
    rules: Mapped[list[Any]]
    sha256: Mapped[str] = mapped_column(String(64))  # canonical JSON of (name, version, rules)


class DeletionRequest(UUIDPrimaryKey, CreatedAt, Base):
    """Model + forget set + method + params + policy version; its jobs by role in ``jobs``."""

    __tablename__ = "deletion_requests"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_deletion_requests_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_deletion_requests_status", "status"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"))
    forget_set_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("forget_sets.id", ondelete="RESTRICT"))
    policy_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policies.id", ondelete="RESTRICT"))
    method: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict[str, Any]]
    seed: Mapped[int]
    device_requested: Mapped[str] = mapped_column(String(20))
    audit_params: Mapped[dict[str, Any] | None]
    # The recovery audits' options (RecoveryParams but the model ids) when a rule names a recovery metric:
    # its jobs start only once the unlearned model exists, so the options wait here until then.
    recovery_params: Mapped[dict[str, Any] | None]
    # Who and what the deletion is for, as the requester's records name them; carried into the signed report.
    # Personal data: never logged, never copied into the audit trail.
    subject_reference: Mapped[str | None] = mapped_column(String(200))
    ticket_reference: Mapped[str | None] = mapped_column(String(200))
    requested_by: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[DeletionRequestStatus] = mapped_column(
        _enum(DeletionRequestStatus), default=DeletionRequestStatus.running
    )
    # {role: {"job_id", "reused"}}: unlearn, retrain, original, identity (+ audit, audit_identity, recovery,
    # recovery_identity if needed)
    jobs: Mapped[dict[str, Any]]
    error: Mapped[dict[str, Any] | None]
    finished_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)


class ComplianceReport(UUIDPrimaryKey, CreatedAt, Base):
    """A signed report, stored as the exact canonical JSON bytes that were signed (never updated)."""

    __tablename__ = "compliance_reports"
    __table_args__ = (Index("ix_compliance_reports_request_created", "deletion_request_id", "created_at"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    deletion_request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deletion_requests.id", ondelete="CASCADE")
    )
    issued_at: Mapped[datetime]
    verdict: Mapped[str] = mapped_column(String(20))  # pass | fail | inconclusive
    document: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of ``document``'s UTF-8 bytes
    key_id: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(20))
