"""Tenants and API keys."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.db import READ_ONLY_OPTION, SQLITE_BUSY_TIMEOUT_MS
from app.core.problems import Conflict, NotFound
from app.core.security import (
    LAST_USED_RESOLUTION_SECONDS,
    NewKey,
    Principal,
    Scope,
    effective_scopes,
    generate_key,
    hash_secret,
    last_used_due,
    parse_token,
    verify_secret,
)
from app.models import ApiKey, Tenant
from app.models.base import utcnow
from app.services.compliance import audit

log = logging.getLogger(__name__)
# How long recording a key's last use may wait for SQLite's write lock before it gives up (this time).
LAST_USED_LOCK_WAIT_MS = 250


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
    rotated_from: str | None = None,
    request_id: str | None = None,
) -> tuple[ApiKey, NewKey]:
    new = generate_key()
    row = ApiKey(
        tenant_id=tenant.id,
        key_id=new.key_id,
        secret_hash=hash_secret(new.secret, pepper),
        name=name,
        scopes=sorted(s.value for s in scopes),
        expires_at=expires_at,
        rotated_from=rotated_from,
    )
    session.add(row)
    session.flush()
    details: dict[str, Any] = {"name": name, "scopes": row.scopes}
    if expires_at is not None:
        details["expires_at"] = expires_at.isoformat()
    if rotated_from is not None:
        details["rotated_from"] = rotated_from
    audit.record(
        session,
        tenant_id=tenant.id,
        actor=actor,
        action="key.rotate" if rotated_from is not None else "key.create",
        resource_type="api_key",
        resource_id=new.key_id,
        details=details,
        request_id=request_id,
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
    if last_used_due(row.last_used_at, now):
        _record_use(session, row.id, now)
    return Principal(tenant_id=row.tenant_id, key_id=row.key_id, scopes=effective_scopes(row.scopes))


def _record_use(session: Session, key_pk: uuid.UUID, now: datetime) -> None:
    """Set last_used_at in a short transaction of its own, best effort.

    The lookup runs on a read-only session the caller owns (and never commits), so the write gets its own
    connection. The UPDATE is conditional: of several API processes that find the same stale value, one
    writes, the others match nothing. A failure (a lock wait that timed out) only loses bookkeeping, never
    the request: authentication has already succeeded.
    """
    writer = session.get_bind().engine.execution_options(**{READ_ONLY_OPTION: False})
    stale = now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS)
    statement = (
        update(ApiKey)
        .where(ApiKey.id == key_pk, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale))
        .values(last_used_at=now)
    )
    try:
        with writer.connect() as connection:
            # SQLite has one writer: behind a long write transaction, the default busy timeout (30 s) would
            # hold this request for bookkeeping. Wait briefly instead (set before BEGIN IMMEDIATE, on the raw
            # connection, which is in autocommit mode), then give the pooled connection its timeout back.
            raw = connection.connection.driver_connection if writer.dialect.name == "sqlite" else None
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={LAST_USED_LOCK_WAIT_MS}")
            try:
                with connection.begin():
                    if writer.dialect.name == "postgresql":
                        # The same on Postgres, where the wait is for the key's row lock (a revoke or rotate
                        # in flight): bounded for this transaction only.
                        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LAST_USED_LOCK_WAIT_MS}")
                    connection.execute(statement)
            finally:
                if raw is not None:
                    raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    except (SQLAlchemyError, sqlite3.Error):
        log.warning("could not record the last use of API key %s", key_pk, exc_info=True)


def key_status(row: ApiKey, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def tenant_key(session: Session, tenant_id: uuid.UUID, key_id: str) -> ApiKey:
    """The tenant's key; another tenant's key is 404 like a missing one (its existence is not confirmed)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id, ApiKey.tenant_id == tenant_id))
    if row is None:
        raise NotFound(f"API key {key_id} not found", code="key-not-found")
    return row


def revoke_key(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    key_id: str,
    actor: str,
    request_id: str | None = None,
    replaced_by: str | None = None,
) -> ApiKey:
    """Revoke one of the tenant's keys (the caller commits, then drops it from its process's key cache;
    other API processes stop accepting it within KEY_CACHE_TTL_SECONDS)."""
    # FOR UPDATE: of two concurrent revocations (or a revoke racing a rotate) of one key, one wins; and
    # populate_existing, so a row already loaded in this session is re-read after the lock.
    row = session.scalar(
        select(ApiKey)
        .where(ApiKey.key_id == key_id, ApiKey.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"API key {key_id} not found", code="key-not-found")
    if row.revoked_at is not None:
        raise Conflict(
            f"API key {key_id} was already revoked at {row.revoked_at.isoformat()}", code="key-revoked"
        )
    row.revoked_at = utcnow()
    details: dict[str, Any] = {"name": row.name, "scopes": row.scopes}
    if replaced_by is not None:
        details["replaced_by"] = replaced_by
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="key.revoke",
        resource_type="api_key",
        resource_id=key_id,
        details=details,
        request_id=request_id,
    )
    session.flush()
    return row


def rotate_key(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    key_id: str,
    pepper: str,
    actor: str,
    expires_at: datetime | None = None,
    request_id: str | None = None,
) -> tuple[ApiKey, NewKey]:
    """A new secret with the old key's name and scopes, and the old key revoked, in one transaction."""
    old = tenant_key(session, tenant_id, key_id)
    if old.revoked_at is not None:
        raise Conflict(f"API key {key_id} is revoked: create a new key instead", code="key-revoked")
    tenant = session.get(Tenant, tenant_id)
    assert tenant is not None
    row, new = create_key(
        session,
        tenant=tenant,
        name=old.name,
        scopes=[Scope(s) for s in old.scopes],
        pepper=pepper,
        actor=actor,
        expires_at=expires_at,
        rotated_from=key_id,
        request_id=request_id,
    )
    revoke_key(
        session,
        tenant_id=tenant_id,
        key_id=key_id,
        actor=actor,
        request_id=request_id,
        replaced_by=row.key_id,
    )
    return row, new


def tenant_by_id(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)
