"""The per-process API-key cache: a verified key skips the DB lookup for KEY_CACHE_TTL_SECONDS, never longer
than the key's own expiry; a revoked key stops working within the TTL in every process."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.security import KEY_CACHE_TTL_SECONDS, KeyCache, Principal, Scope
from app.models import ApiKey
from app.models.base import utcnow
from app.services.ops.keys import create_key, get_or_create_tenant
from tests.app.api.test_resources import assert_problem

PRINCIPAL = Principal(tenant_id=uuid.uuid4(), key_id="abc", scopes=frozenset({Scope.read}))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_live_for_the_ttl() -> None:
    clock = Clock()
    cache = KeyCache(ttl=1.0, clock=clock)
    assert cache.get("lk_abc_secret") is None
    cache.put("lk_abc_secret", PRINCIPAL)
    assert cache.get("lk_abc_secret") == PRINCIPAL
    assert cache.get("lk_abc_other") is None  # keyed by the whole token: a wrong secret is not a hit
    clock.now += 0.99
    assert cache.get("lk_abc_secret") == PRINCIPAL
    clock.now += 0.02
    assert cache.get("lk_abc_secret") is None


def test_an_entry_never_outlives_the_key() -> None:
    clock = Clock()
    cache = KeyCache(ttl=1.0, clock=clock)
    cache.put("lk_abc_secret", PRINCIPAL, expires_in=0.25)
    clock.now += 0.26
    assert cache.get("lk_abc_secret") is None
    cache.put("lk_abc_secret", PRINCIPAL, expires_in=-5)  # already expired: not cached at all
    assert cache.get("lk_abc_secret") is None


def test_invalidate_clear_bound_and_disabled() -> None:
    clock = Clock()
    cache = KeyCache(ttl=1.0, max_entries=3, clock=clock)
    other = Principal(tenant_id=PRINCIPAL.tenant_id, key_id="def", scopes=PRINCIPAL.scopes)
    cache.put("lk_abc_1", PRINCIPAL)
    cache.put("lk_def_1", other)
    cache.invalidate("abc")
    assert cache.get("lk_abc_1") is None and cache.get("lk_def_1") == other
    for i in range(10):  # stays bounded
        cache.put(f"lk_x_{i}", other)
        assert len(cache._entries) <= 3
    cache.clear()
    assert cache.get("lk_x_9") is None
    disabled = KeyCache(ttl=0, clock=clock)
    disabled.put("lk_abc_1", PRINCIPAL)
    assert disabled.get("lk_abc_1") is None


def _new_key(sessions, settings, expires_in: float | None = None) -> tuple[str, str]:
    with sessions() as session:
        tenant = get_or_create_tenant(session, f"cache-{uuid.uuid4().hex[:8]}")
        expires_at = None if expires_in is None else utcnow() + timedelta(seconds=expires_in)
        row, new = create_key(
            session,
            tenant=tenant,
            name="k",
            scopes=[Scope.read],
            pepper=settings.key_pepper,
            expires_at=expires_at,
        )
        session.commit()
        return row.key_id, new.token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_revoked_key_is_refused_within_the_ttl(api: TestClient, sessions, migrated) -> None:
    key_id, token = _new_key(sessions, migrated)
    assert api.get("/v1/jobs", headers=_bearer(token)).status_code == 200  # verified and cached
    with sessions() as session:  # revoked out of band (another process, SQL)
        session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(revoked_at=utcnow()))
        session.commit()
    time.sleep(KEY_CACHE_TTL_SECONDS + 0.1)
    assert_problem(api.get("/v1/jobs", headers=_bearer(token)), 401, "invalid-api-key")


def test_a_revocation_made_in_this_process_applies_at_once(api: TestClient, sessions, migrated) -> None:
    key_id, token = _new_key(sessions, migrated)
    assert api.get("/v1/jobs", headers=_bearer(token)).status_code == 200
    with sessions() as session:
        session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(revoked_at=utcnow()))
        session.commit()
    api.app.state.key_cache.invalidate(key_id)
    assert_problem(api.get("/v1/jobs", headers=_bearer(token)), 401, "invalid-api-key")


def test_an_expiring_key_is_refused_at_its_expiry_not_the_ttl(api: TestClient, sessions, migrated) -> None:
    _, token = _new_key(sessions, migrated, expires_in=0.5)
    assert api.get("/v1/jobs", headers=_bearer(token)).status_code == 200
    time.sleep(0.6)  # less than the TTL after caching
    assert_problem(api.get("/v1/jobs", headers=_bearer(token)), 401, "invalid-api-key")


def test_a_cached_key_with_a_wrong_secret_is_refused(api: TestClient, sessions, migrated) -> None:
    key_id, token = _new_key(sessions, migrated)
    assert api.get("/v1/jobs", headers=_bearer(token)).status_code == 200
    assert_problem(
        api.get("/v1/jobs", headers=_bearer(f"lk_{key_id}_not-the-secret")), 401, "invalid-api-key"
    )
    assert api.get("/v1/jobs", headers={"X-API-Key": token}).status_code == 200
