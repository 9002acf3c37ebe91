"""Versioned policies: publishing a name again adds its next version; versions never change."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.problems import NotFound
from app.core.security import Principal
from app.models import Policy, Tenant
from app.schemas.compliance import PolicyCreate
from app.services import audit
from app.services.signing import canonical_json


def policy_digest(name: str, version: int, rules: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical_json({"name": name, "version": version, "rules": rules})).hexdigest()


def create_policy(
    session: Session, principal: Principal, body: PolicyCreate, request_id: str | None
) -> Policy:
    # Number versions under the tenant row lock (the one the audit chain takes; SQLite's writers are
    # serialised by BEGIN IMMEDIATE anyway), so two publishers of one name cannot both take version n.
    session.execute(select(Tenant.id).where(Tenant.id == principal.tenant_id).with_for_update(key_share=True))
    latest = session.scalar(
        select(func.max(Policy.version)).where(
            Policy.tenant_id == principal.tenant_id, Policy.name == body.name
        )
    )
    version = (latest or 0) + 1
    rules = [rule.model_dump(mode="json", exclude_none=True) for rule in body.rules]
    policy = Policy(
        tenant_id=principal.tenant_id,
        name=body.name,
        version=version,
        description=body.description,
        rules=rules,
        sha256=policy_digest(body.name, version, rules),
    )
    session.add(policy)
    session.flush()
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="policy.create",
        resource_type="policy",
        resource_id=str(policy.id),
        request_id=request_id,
        details={"name": policy.name, "version": version, "sha256": policy.sha256},
    )
    return policy


def get_policy(session: Session, tenant_id: uuid.UUID, policy_id: uuid.UUID) -> Policy:
    policy = session.get(Policy, policy_id)
    if policy is None or policy.tenant_id != tenant_id:
        raise NotFound(f"policy {policy_id} not found", code="policy-not-found")
    return policy


def find_policy(session: Session, tenant_id: uuid.UUID, name: str, version: int | None) -> Policy:
    query = select(Policy).where(Policy.tenant_id == tenant_id, Policy.name == name)
    if version is not None:
        query = query.where(Policy.version == version)
    policy = session.scalar(query.order_by(Policy.version.desc()).limit(1))
    if policy is None:
        suffix = f" version {version}" if version is not None else ""
        raise NotFound(f"policy '{name}'{suffix} not found", code="policy-not-found")
    return policy
