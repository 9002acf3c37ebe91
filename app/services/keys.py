"""Tenants and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.security import (
    NewKey,
    Principal,
    Scope,
    effective_scopes,
    generate_key,
    hash_secret,
    parse_token,
    verify_secret,
)
from app.models import ApiKey, Tenant
from app.models.base import utcnow
from app.services import audit


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session,
    *,
    tenant: Tenant,
    name: str,
    scopes: list[Scope],
    pepper: str,
    actor: str = "system",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, NewKey]:
    new = generate_key()
    row = ApiKey(
        tenant_id=tenant.id,
        key_id=new.key_id,
        secret_hash=hash_secret(new.secret, pepper),
        name=name,
        scopes=sorted(s.value for s in scopes),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        tenant_id=tenant.id,
        actor=actor,
        action="key.create",
        resource_type="api_key",
        resource_id=new.key_id,
        details={"name": name, "scopes": row.scopes},
    )
    return row, new


def authenticate(session: Session, token: str, pepper: str) -> Principal | None:
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or not verify_secret(secret, row.secret_hash, pepper):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return Principal(tenant_id=row.tenant_id, key_id=row.key_id, scopes=effective_scopes(row.scopes))


def tenant_by_id(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)
