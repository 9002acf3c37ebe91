"""Resumable chunked uploads: one row per upload in progress, its parts stored as artifacts until it is
completed (validated and registered as a dataset or model, exactly as a single-request upload) or expires."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, CreatedAt, UUIDPrimaryKey, utcnow


class UploadPurpose(StrEnum):
    dataset = "dataset"
    model = "model"


class UploadStatus(StrEnum):
    open = "open"  # receiving parts
    completed = "completed"  # validated and registered; its parts are deleted


class Upload(UUIDPrimaryKey, CreatedAt, Base):
    __tablename__ = "uploads"
    # The per-tenant sums of incomplete bytes (quotas) and the expiry sweep read by (tenant, status) and
    # (status, expiry).
    __table_args__ = (
        Index("ix_uploads_tenant_status", "tenant_id", "status"),
        Index("ix_uploads_status_expires", "status", "expires_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=UploadStatus.open.value)
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # declared at creation: the whole file
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes 0 .. received-1 are stored
    sha256: Mapped[str | None] = mapped_column(String(64))  # optional digest of the whole file, checked
    parts: Mapped[list[Any]] = mapped_column(default=list)  # [{offset, size, sha256, key}] in offset order
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]  # an open upload untouched until then is deleted by the retention sweep
    result_type: Mapped[str | None] = mapped_column(String(20))  # dataset | model, once completed
    result_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
