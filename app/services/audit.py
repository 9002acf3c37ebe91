"""The append-only audit trail, hash-chained per tenant, written inside the caller's transaction."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEvent, Tenant
from app.models.base import utcnow


def _digest(prev_hash: str | None, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(((prev_hash or "") + body).encode()).hexdigest()


def record(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    # Lock the tenant row so concurrent writers of one tenant chain their hashes in order. NO KEY UPDATE
    # (Postgres): every insert of a tenant's row holds KEY SHARE on the tenant (its foreign key), which a
    # plain FOR UPDATE waits for, so two writers that had both inserted would deadlock.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))
    prev_hash = session.scalar(
        select(AuditEvent.hash)
        .where(AuditEvent.tenant_id == tenant_id)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    )
    ts = utcnow()
    payload = {
        "ts": ts.isoformat(),
        "tenant_id": str(tenant_id),
        "actor": actor,
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "details": details or {},
    }
    event = AuditEvent(
        ts=ts,
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id,
        details=details or {},
        prev_hash=prev_hash,
        hash=_digest(prev_hash, payload),
    )
    session.add(event)
    return event


def verify_chain(session: Session, tenant_id: uuid.UUID) -> bool:
    """Recompute the tenant's chain; False when any row was altered, inserted or removed."""
    prev: str | None = None
    for event in session.scalars(
        select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.id)
    ):
        payload = {
            "ts": event.ts.isoformat(),
            "tenant_id": str(event.tenant_id),
            "actor": event.actor,
            "action": event.action,
            "resource_type": event.resource_type,
            "resource_id": event.resource_id,
            "details": event.details,
        }
        if event.prev_hash != prev or event.hash != _digest(prev, payload):
            return False
        prev = event.hash
    return True
