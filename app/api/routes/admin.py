"""Keys and the audit trail (admin scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api.deps import Admin, SessionDep, SettingsDep
from app.core.security import Scope
from app.models import AuditEvent, Tenant
from app.schemas.resources import INT64_MAX, NAME_MAX, NAME_PATTERN
from app.services.keys import create_key

router = APIRouter(tags=["admin"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
    scopes: list[Scope] = Field(min_length=1)


class KeyCreated(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    token: str = Field(description="Shown once; only a hash is stored.")


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
    )
    session.commit()
    return KeyCreated(key_id=row.key_id, name=row.name, scopes=row.scopes, token=new.token)


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
