from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPrimaryKey, utcnow


class AuditEvent(Base):
    """Append-only audit trail, written in the same transaction as the change it records.

    ``hash`` chains each row to the tenant's previous one so that edits and deletions are evident.
    Forget-set contents are personal data: only hashes and counts go in ``details``.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    resource_type: Mapped[str] = mapped_column(String(50))
    resource_id: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(UUIDPrimaryKey, Base):
    """A signed statement "the tenant's audit chain had ``event_count`` rows ending in ``head_hash``".

    The hash chain alone proves nothing against someone who can write the database: they can edit a row and
    recompute every later hash, or delete the tail. A checkpoint is signed with the audit anchor key, which
    the database does not hold, so a rewritten chain no longer matches a signed head and a shortened one is
    shorter than a signed count (app/services/compliance/audit.py). ``head_id`` is deliberately not a foreign
    key: the checkpoint must outlive the rows it vouches for, or deleting them would delete the evidence.
    """

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_tenant_id_event_count", "tenant_id", "event_count"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_count: Mapped[int] = mapped_column(BigInteger)
    head_id: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))
