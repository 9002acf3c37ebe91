"""API-key lifecycle (issue 17): list, revoke, rotate, expiry, last use; and the audit anchor endpoints.

Through the HTTP API (tenant-scoped admin routes under /v1/admin) and the `lethe keys` / `lethe audit` CLI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Settings, reset_settings_cache
from app.core.security import KEY_CACHE_TTL_SECONDS, LAST_USED_RESOLUTION_SECONDS, KeyCache
from app.models import ApiKey, AuditEvent
from app.models.base import utcnow
from app.services.compliance import audit
from tests.app.api.test_resources import assert_problem
from tests.conftest import Tenant


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key_id_of(token: str) -> str:
    return token.split("_", 2)[1]


def new_key(api: TestClient, tenant: Tenant, **body: Any) -> dict[str, Any]:
    response = api.post("/v1/keys", json={"name": "k", "scopes": ["read"], **body}, headers=tenant.headers())
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def listed(api: TestClient, tenant: Tenant, **params: str) -> dict[str, dict[str, Any]]:
    response = api.get("/v1/admin/keys", params={"limit": "200", **params}, headers=tenant.headers())
    assert response.status_code == 200, response.text
    return {k["key_id"]: k for k in response.json()["data"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(api: TestClient) -> Iterator[Clock]:
    """This API process's key cache on a clock the test moves. (Not monkeypatch: starlette's State keeps its
    attributes in a dict, and monkeypatch's undo deletes the attribute instead of restoring it.)"""
    fake = Clock()
    original = api.app.state.key_cache
    api.app.state.key_cache = KeyCache(clock=fake)
    try:
        yield fake
    finally:
        api.app.state.key_cache = original


# ---------------------------------------------------------------------------------------------- listing
def test_listing_shows_the_tenants_keys_without_secrets(
    api: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    created = new_key(api, tenant, name="ci-reader")
    response = api.get("/v1/admin/keys", headers=tenant.headers())
    assert response.status_code == 200
    keys = {k["key_id"]: k for k in response.json()["data"]}
    assert set(keys) == {created["key_id"]} | {
        key_id_of(getattr(tenant, s)) for s in ("admin", "submit", "read")
    }
    entry = keys[created["key_id"]]
    assert entry["prefix"] == f"lk_{created['key_id']}_" and created["token"].startswith(entry["prefix"])
    assert entry["name"] == "ci-reader" and entry["scopes"] == ["read"] and entry["status"] == "active"
    assert entry["revoked_at"] is None and entry["expires_at"] is None and entry["rotated_from"] is None
    assert set(entry) == {
        "key_id",
        "prefix",
        "name",
        "scopes",
        "status",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "rotated_from",
    }
    # No secret anywhere, and nothing of the other tenant.
    for token in (created["token"], tenant.admin, tenant.read):
        assert token.split("_", 2)[2] not in response.text
    assert key_id_of(other_tenant.admin) not in response.text
    assert_problem(api.get("/v1/admin/keys", headers=tenant.headers("submit")), 403, "insufficient-scope")


def test_listing_pages_and_filters_by_status(api: TestClient, tenant: Tenant) -> None:
    revoked = new_key(api, tenant)["key_id"]
    api.post(f"/v1/admin/keys/{revoked}/revoke", headers=tenant.headers())
    first = api.get("/v1/admin/keys", params={"limit": 2}, headers=tenant.headers()).json()
    assert len(first["data"]) == 2 and first["has_more"]
    rest = api.get("/v1/admin/keys", params={"cursor": first["next_cursor"]}, headers=tenant.headers()).json()
    assert len(first["data"]) + len(rest["data"]) == 4 and not rest["has_more"]
    assert set(listed(api, tenant, status="revoked")) == {revoked}
    assert (
        revoked not in listed(api, tenant, status="active") and len(listed(api, tenant, status="active")) == 3
    )
    assert_problem(api.get("/v1/admin/keys", params={"status": "lost"}, headers=tenant.headers()), 422)


# ------------------------------------------------------------------------------------------- revocation
def test_a_revocation_through_the_api_applies_at_once_in_this_process(
    api: TestClient, tenant: Tenant, other_tenant: Tenant, sessions: sessionmaker[Session]
) -> None:
    created = new_key(api, tenant)
    token, key_id = created["token"], created["key_id"]
    assert api.get("/v1/jobs", headers=bearer(token)).status_code == 200  # verified and cached
    # Another tenant's admin cannot see or touch it: 404, as for a key that does not exist.
    assert_problem(
        api.post(f"/v1/admin/keys/{key_id}/revoke", headers=other_tenant.headers()), 404, "key-not-found"
    )
    assert api.get("/v1/jobs", headers=bearer(token)).status_code == 200
    response = api.post(f"/v1/admin/keys/{key_id}/revoke", headers=tenant.headers())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked" and response.json()["revoked_at"]
    assert_problem(api.get("/v1/jobs", headers=bearer(token)), 401, "invalid-api-key")
    assert_problem(api.post(f"/v1/admin/keys/{key_id}/revoke", headers=tenant.headers()), 409, "key-revoked")
    assert_problem(api.post("/v1/admin/keys/not-hex/revoke", headers=tenant.headers()), 422)
    with sessions() as session:
        row = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant.id, AuditEvent.action == "key.revoke")
        ).one()
        assert row.resource_id == key_id and row.actor == f"key:{key_id_of(tenant.admin)}"


def test_a_revocation_from_another_process_applies_within_the_cache_ttl(
    api: TestClient, tenant: Tenant, migrated: Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lethe keys revoke` (another process) cannot reach the API's cache: the key works at most
    KEY_CACHE_TTL_SECONDS more, then 401."""
    token = new_key(api, tenant)["token"]
    assert api.get("/v1/jobs", headers=bearer(token)).status_code == 200  # cached at t0
    with cli_env(monkeypatch, migrated):
        result = CliRunner().invoke(cli, ["keys", "revoke", key_id_of(token), "--tenant", tenant.name])
    assert result.exit_code == 0, result.output
    clock.now += KEY_CACHE_TTL_SECONDS * 0.9
    assert api.get("/v1/jobs", headers=bearer(token)).status_code == 200  # still within the TTL
    clock.now += KEY_CACHE_TTL_SECONDS * 0.2
    assert_problem(api.get("/v1/jobs", headers=bearer(token)), 401, "invalid-api-key")


# ------------------------------------------------------------------------------------------------ rotation
def test_rotation_returns_a_new_secret_once_and_revokes_the_old_key(
    api: TestClient, tenant: Tenant, other_tenant: Tenant, sessions: sessionmaker[Session]
) -> None:
    old = new_key(api, tenant, name="deploy", scopes=["submit"])
    assert api.get("/v1/jobs", headers=bearer(old["token"])).status_code == 200
    assert_problem(
        api.post(f"/v1/admin/keys/{old['key_id']}/rotate", headers=other_tenant.headers()),
        404,
        "key-not-found",
    )
    expires = (utcnow() + timedelta(days=30)).isoformat()
    response = api.post(
        f"/v1/admin/keys/{old['key_id']}/rotate", json={"expires_at": expires}, headers=tenant.headers()
    )
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["token"].startswith(new["prefix"]) and new["key_id"] != old["key_id"]
    assert new["name"] == "deploy" and new["scopes"] == ["submit"] and new["rotated_from"] == old["key_id"]
    assert new["expires_at"] is not None and new["status"] == "active"
    assert api.get("/v1/jobs", headers=bearer(new["token"])).status_code == 200
    assert_problem(api.get("/v1/jobs", headers=bearer(old["token"])), 401, "invalid-api-key")
    keys = listed(api, tenant)
    assert keys[old["key_id"]]["status"] == "revoked" and keys[new["key_id"]]["rotated_from"] == old["key_id"]
    assert "token" not in keys[new["key_id"]]
    assert_problem(
        api.post(f"/v1/admin/keys/{old['key_id']}/rotate", headers=tenant.headers()), 409, "key-revoked"
    )
    with sessions() as session:
        actions = {
            (row.action, row.resource_id)
            for row in session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant.id))
        }
    assert ("key.rotate", new["key_id"]) in actions and ("key.revoke", old["key_id"]) in actions
    with sessions() as session:  # both rows of the one transaction chain in order
        assert audit.verify_chain(session, tenant.id)


def test_rotation_refuses_a_past_expiry(api: TestClient, tenant: Tenant) -> None:
    key_id = new_key(api, tenant)["key_id"]
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    response = api.post(
        f"/v1/admin/keys/{key_id}/rotate", json={"expires_at": past}, headers=tenant.headers()
    )
    assert_problem(response, 422, "expiry-in-past")
    assert listed(api, tenant)[key_id]["status"] == "active"  # nothing happened


# -------------------------------------------------------------------------------------------------- expiry
def test_expiry_at_creation_and_expired_keys_get_401(
    api: TestClient, tenant: Tenant, sessions: sessionmaker[Session]
) -> None:
    assert_problem(
        api.post(
            "/v1/keys",
            json={
                "name": "k",
                "scopes": ["read"],
                "expires_at": (utcnow() - timedelta(seconds=1)).isoformat(),
            },
            headers=tenant.headers(),
        ),
        422,
        "expiry-in-past",
    )
    naive = api.post(
        "/v1/keys",
        json={"name": "k", "scopes": ["read"], "expires_at": "2099-01-01T00:00:00"},
        headers=tenant.headers(),
    )
    assert_problem(naive, 422)  # without an offset the instant is ambiguous
    created = new_key(api, tenant, expires_at=(utcnow() + timedelta(hours=1)).isoformat())
    assert created["expires_at"] is not None
    assert api.get("/v1/jobs", headers=bearer(created["token"])).status_code == 200
    with sessions() as session:  # an hour later
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == created["key_id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    api.app.state.key_cache.clear()
    assert_problem(api.get("/v1/jobs", headers=bearer(created["token"])), 401, "invalid-api-key")
    assert listed(api, tenant)[created["key_id"]]["status"] == "expired"
    assert created["key_id"] in listed(api, tenant, status="expired")


# ------------------------------------------------------------------------------------------------ last use
def test_last_used_at_is_written_at_most_once_a_minute(
    api: TestClient, tenant: Tenant, sessions: sessionmaker[Session]
) -> None:
    key_id = key_id_of(tenant.read)

    def last_used() -> Any:
        with sessions() as session:
            return session.scalar(select(ApiKey.last_used_at).where(ApiKey.key_id == key_id))

    assert last_used() is None
    api.app.state.key_cache.clear()
    assert api.get("/v1/jobs", headers=tenant.headers("read")).status_code == 200
    first = last_used()
    assert first is not None and (utcnow() - first).total_seconds() < 30
    for _ in range(3):  # past the cache every time: a lookup, but no write within the minute
        api.app.state.key_cache.clear()
        assert api.get("/v1/jobs", headers=tenant.headers("read")).status_code == 200
    assert last_used() == first
    stale = utcnow() - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS + 1)
    with sessions() as session:
        session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used_at=stale))
        session.commit()
    api.app.state.key_cache.clear()
    assert api.get("/v1/jobs", headers=tenant.headers("read")).status_code == 200
    assert last_used() > stale + timedelta(seconds=30)
    assert listed(api, tenant)[key_id]["last_used_at"] is not None


def test_recording_the_last_use_never_holds_a_request_behind_a_write_lock(
    api: TestClient, tenant: Tenant, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    key_id = key_id_of(tenant.read)
    with sessions() as blocker:
        # A long write transaction elsewhere: on SQLite BEGIN IMMEDIATE holds the single writer lock; on
        # Postgres the key's own row is locked (as a revoke or rotate in flight would).
        locked = select(ApiKey.id).where(ApiKey.key_id == key_id)
        blocker.execute(locked if migrated.is_sqlite else locked.with_for_update())
        api.app.state.key_cache.clear()
        started = time.monotonic()
        assert api.get("/v1/jobs", headers=tenant.headers("read")).status_code == 200
        assert time.monotonic() - started < 5  # not the 30 s busy timeout
        blocker.rollback()
    with sessions() as session:
        assert session.scalar(select(ApiKey.last_used_at).where(ApiKey.key_id == key_id)) is None  # skipped
    api.app.state.key_cache.clear()
    assert api.get("/v1/jobs", headers=tenant.headers("read")).status_code == 200
    with sessions() as session:  # recorded at the next lookup
        assert session.scalar(select(ApiKey.last_used_at).where(ApiKey.key_id == key_id)) is not None


# ------------------------------------------------------------------------------------------- audit anchors
def test_checkpoint_and_verify_endpoints(
    api: TestClient, tenant: Tenant, other_tenant: Tenant, sessions: sessionmaker[Session]
) -> None:
    new_key(api, tenant)  # a few rows in the chain
    before = api.get("/v1/admin/audit/verify", headers=tenant.headers())
    assert before.status_code == 200 and before.json()["ok"] and before.json()["unsigned_tail"] >= 4
    taken = api.post("/v1/admin/audit/checkpoints", headers=tenant.headers())
    assert taken.status_code == 201, taken.text
    checkpoint = taken.json()
    report = api.get("/v1/admin/audit/verify", headers=tenant.headers()).json()
    # The checkpoint covers the audit row of its own request.
    assert report["ok"] and report["unsigned_tail"] == 0 and report["events"] == checkpoint["event_count"]
    assert report["last_checkpoint"]["id"] == checkpoint["id"]
    with sessions() as session:
        last = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.id.desc())
        ).first()
        assert last is not None and last.action == "audit.checkpoint" and last.resource_id == checkpoint["id"]
        assert last.id == checkpoint["head_id"]
        # Someone with database access deletes the newest two rows.
        for row in session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant.id)
            .order_by(AuditEvent.id.desc())
            .limit(2)
        ).all():
            session.delete(row)
        session.commit()
    broken = api.get("/v1/admin/audit/verify", headers=tenant.headers()).json()
    assert not broken["ok"] and broken["problems"] == ["truncated"]
    assert broken["truncation"]["events"] == checkpoint["event_count"] - 2
    assert broken["truncation"]["checkpoint"]["event_count"] == checkpoint["event_count"]
    # Signing over it is refused; the other tenant's chain is untouched and its own.
    assert_problem(
        api.post("/v1/admin/audit/checkpoints", headers=tenant.headers()), 409, "audit-chain-inconsistent"
    )
    theirs = api.get("/v1/admin/audit/verify", headers=other_tenant.headers()).json()
    assert theirs["ok"] and theirs["tenant_id"] == str(other_tenant.id)
    assert_problem(
        api.get("/v1/admin/audit/verify", headers=tenant.headers("submit")), 403, "insufficient-scope"
    )


# ---------------------------------------------------------------------------------------------------- CLI
class cli_env:
    """Point the `lethe` CLI at the test installation (home and database) for the duration."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
        self.monkeypatch, self.settings = monkeypatch, settings

    def __enter__(self) -> None:
        self.monkeypatch.setenv("LETHE_HOME", str(self.settings.home))
        self.monkeypatch.setenv("LETHE_DATABASE_URL", self.settings.db_url)
        reset_settings_cache()

    def __exit__(self, *_: object) -> None:
        self.monkeypatch.delenv("LETHE_HOME")
        self.monkeypatch.delenv("LETHE_DATABASE_URL")
        reset_settings_cache()


@pytest.fixture
def lethe(monkeypatch: pytest.MonkeyPatch, migrated: Settings) -> Iterator[CliRunner]:
    with cli_env(monkeypatch, migrated):
        yield CliRunner()


def test_cli_keys_list_revoke_rotate(api: TestClient, tenant: Tenant, lethe: CliRunner) -> None:
    listing = lethe.invoke(cli, ["keys", "list", "--tenant", tenant.name])
    assert listing.exit_code == 0, listing.output
    lines = [line.split("\t") for line in listing.output.splitlines()]
    assert lines[0][:5] == ["key_id", "prefix", "name", "scopes", "status"]
    assert {(line[0], line[3], line[4]) for line in lines[1:]} == {
        (key_id_of(getattr(tenant, scope)), scope, "active") for scope in ("admin", "submit", "read")
    }
    assert not any(token.split("_", 2)[2] in listing.output for token in (tenant.admin, tenant.read))
    rotated = lethe.invoke(cli, ["keys", "rotate", key_id_of(tenant.read), "--tenant", tenant.name])
    assert rotated.exit_code == 0, rotated.output
    token = rotated.output.strip()
    assert token.startswith("lk_") and api.get("/v1/jobs", headers=bearer(token)).status_code == 200
    api.app.state.key_cache.clear()  # the CLI is another process: skip the 1 s wait
    assert_problem(api.get("/v1/jobs", headers=tenant.headers("read")), 401, "invalid-api-key")
    again = lethe.invoke(cli, ["keys", "revoke", key_id_of(tenant.read), "--tenant", tenant.name])
    assert again.exit_code == 1 and "already revoked" in again.output
    as_json = json.loads(lethe.invoke(cli, ["keys", "list", "--tenant", tenant.name, "--json"]).output)
    by_id = {key["key_id"]: key for key in as_json}
    assert by_id[key_id_of(tenant.read)]["status"] == "revoked"
    assert by_id[key_id_of(token)]["rotated_from"] == key_id_of(tenant.read)
    missing = lethe.invoke(cli, ["keys", "revoke", "abcdef", "--tenant", tenant.name])
    assert missing.exit_code == 1 and "not found" in missing.output
    unknown = lethe.invoke(cli, ["keys", "list", "--tenant", f"nobody-{uuid.uuid4().hex}"])
    assert unknown.exit_code == 2
    bad = lethe.invoke(
        cli,
        ["keys", "rotate", key_id_of(token), "--tenant", tenant.name, "--expires-at", "2099-01-01T00:00:00"],
    )
    assert bad.exit_code == 2  # no UTC offset


def test_cli_audit_checkpoint_and_verify(
    tenant: Tenant, lethe: CliRunner, sessions: sessionmaker[Session]
) -> None:
    signed = lethe.invoke(cli, ["audit", "checkpoint", "--tenant", tenant.name])
    assert signed.exit_code == 0 and "1 checkpoint(s) signed" in signed.output, signed.output
    ok = lethe.invoke(cli, ["audit", "verify", "--tenant", tenant.name], terminal_width=200)
    assert ok.exit_code == 0 and "ok" in ok.output and "0 unsigned" in ok.output, ok.output
    with sessions() as session:
        first = session.scalars(
            select(AuditEvent).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.id)
        ).first()
        assert first is not None
        first.details = {"forged": True}
        session.commit()
        edited = first.id
    tampered = lethe.invoke(cli, ["audit", "verify", "--tenant", tenant.name, "--json"])
    assert tampered.exit_code == 1
    assert f'"id": {edited}' in tampered.output and '"position": 1' in tampered.output
    text = lethe.invoke(cli, ["audit", "verify", "--tenant", tenant.name], terminal_width=200).output
    assert "broken-link" in text and f"row {edited} at position 1" in text
