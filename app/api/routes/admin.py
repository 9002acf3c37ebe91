"""Keys and the audit trail (admin scope)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import or_, select

from app.api.deps import Admin, SessionDep, SettingsDep, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.core.problems import Unprocessable
from app.core.security import KeyCache, Scope
from app.models import ApiKey, AuditEvent, Tenant
from app.models.base import utcnow
from app.schemas.admin import (
    AuditVerification,
    CheckpointTaken,
    KeyOut,
    KeyPage,
    KeyRotate,
    KeyRotated,
    KeyStatus,
)
from app.schemas.resources import INT64_MAX, NAME_MAX, NAME_PATTERN
from app.services.compliance import audit
from app.services.ops.keys import create_key, revoke_key, rotate_key

router = APIRouter(tags=["admin"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    scopes: list[Scope] = Field(min_length=1)
    expires_at: AwareDatetime | None = Field(
        None,
        description="When the key stops working (with a UTC offset; must be in the future). Null: never.",
    )


class KeyCreated(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    token: str = Field(description="Shown once; only a hash is stored.")


def _future(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at <= utcnow():
        raise Unprocessable("expires_at is not in the future", code="expiry-in-past")
    return expires_at


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: str
    actor: str
    action: str
    resource_type: str
    resource_id: str
    request_id: str | None
    details: dict
    hash: str


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_api_key(
    body: KeyCreate, principal: Admin, session: SessionDep, settings: SettingsDep, request: Request
) -> KeyCreated:
    """Create another key of the caller's tenant."""
    tenant = session.get(Tenant, principal.tenant_id)
    assert tenant is not None
    row, new = create_key(
        session,
        tenant=tenant,
        name=body.name,
        scopes=body.scopes,
        pepper=settings.key_pepper,
        actor=principal.actor,
        expires_at=_future(body.expires_at),
        request_id=request_id(request),
    )
    session.commit()
    return KeyCreated(
        key_id=row.key_id, name=row.name, scopes=row.scopes, expires_at=row.expires_at, token=new.token
    )


@router.get("/audit-events", response_model=list[AuditEventOut])
def list_audit_events(
    principal: Admin,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditEventOut]:
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == principal.tenant_id, AuditEvent.id > after)
        .order_by(AuditEvent.id)
        .limit(limit)
    )
    return [
        AuditEventOut(
            id=r.id,
            ts=r.ts.isoformat(),
            actor=r.actor,
            action=r.action,
            resource_type=r.resource_type,
            resource_id=r.resource_id,
            request_id=r.request_id,
            details=r.details,
            hash=r.hash,
        )
        for r in rows
    ]


# Key lifecycle: an admin key manages its own tenant's keys only (another tenant's key id is 404).
KeyIdPath = Annotated[str, Path(min_length=1, max_length=32, pattern="^[0-9a-f]+$")]


def _forget_key(request: Request, key_id: str) -> None:
    """Drop a revoked key from this process's cache at once; other processes wait out its TTL (1 s)."""
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if cache is not None:
        cache.invalidate(key_id)


@router.get("/admin/keys", response_model=KeyPage)
def list_api_keys(
    principal: Admin,
    session: SessionDep,
    status: KeyStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> KeyPage:
    """The tenant's keys, newest first: ids, prefixes, scopes, use and lifecycle times, never secrets."""
    now = utcnow()
    query = select(ApiKey).where(ApiKey.tenant_id == principal.tenant_id)
    if status is KeyStatus.revoked:
        query = query.where(ApiKey.revoked_at.is_not(None))
    elif status is KeyStatus.expired:
        query = query.where(ApiKey.revoked_at.is_(None), ApiKey.expires_at <= now)
    elif status is KeyStatus.active:
        query = query.where(
            ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
        )
    rows, next_cursor = paginate(session, query, ApiKey, cursor, limit)
    return KeyPage(
        data=[KeyOut.of(row, now) for row in rows], next_cursor=next_cursor, has_more=next_cursor is not None
    )


@router.post("/admin/keys/{key_id}/revoke", response_model=KeyOut)
def revoke_api_key(key_id: KeyIdPath, principal: Admin, session: SessionDep, request: Request) -> KeyOut:
    """Revoke a key: refused at once by this API process, by every other within a second."""
    row = revoke_key(
        session,
        tenant_id=principal.tenant_id,
        key_id=key_id,
        actor=principal.actor,
        request_id=request_id(request),
    )
    session.commit()
    _forget_key(request, key_id)
    return KeyOut.of(row, utcnow())


@router.post("/admin/keys/{key_id}/rotate", response_model=KeyRotated, status_code=201)
def rotate_api_key(
    key_id: KeyIdPath,
    principal: Admin,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    body: KeyRotate | None = None,
) -> KeyRotated:
    """A new key with the same name and scopes (its token shown once); the rotated key is revoked."""
    row, new = rotate_key(
        session,
        tenant_id=principal.tenant_id,
        key_id=key_id,
        pepper=settings.key_pepper,
        actor=principal.actor,
        expires_at=_future(body.expires_at if body is not None else None),
        request_id=request_id(request),
    )
    session.commit()
    _forget_key(request, key_id)
    return KeyRotated(**KeyOut.of(row, utcnow()).model_dump(), token=new.token)


@router.get("/admin/audit/verify", response_model=AuditVerification)
def verify_audit_chain(principal: Admin, session: SessionDep, settings: SettingsDep) -> AuditVerification:
    """Check the tenant's audit chain: its links, its signed checkpoints and the anchor file outside the
    database. 200 either way; ``ok`` and ``problems`` carry the verdict."""
    return AuditVerification.of(audit.verify(session, principal.tenant_id, settings))


@router.post("/admin/audit/checkpoints", response_model=CheckpointTaken, status_code=201)
def take_audit_checkpoint(
    principal: Admin, session: SessionDep, settings: SettingsDep, request: Request
) -> CheckpointTaken:
    """Sign the tenant's chain head now (the maintenance worker also does every few minutes). The audit row
    of this request is part of the chain it signs."""
    checkpoint_id = uuid.uuid4()
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="audit.checkpoint",
        resource_type="audit_checkpoint",
        resource_id=str(checkpoint_id),
        request_id=request_id(request),
    )
    session.flush()
    row = audit.take_checkpoint(
        session, principal.tenant_id, settings, only_if_changed=False, checkpoint_id=checkpoint_id
    )
    assert row is not None  # the chain holds at least the row just written
    session.commit()
    return CheckpointTaken(
        id=row.id,
        event_count=row.event_count,
        head_id=row.head_id,
        head_hash=row.head_hash,
        created_at=row.created_at,
        key_id=row.key_id,
        signature=row.signature,
    )
