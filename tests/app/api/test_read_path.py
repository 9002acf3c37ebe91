"""The job read path (GET /v1/jobs/{id}) after its speed-ups: Core queries on a bare connection, the 304
decided from (tenant, version, status), metrics only for ended jobs, the pre-serialised body, the pure-ASGI
request-id middleware and the limiter/pool sizing (bench/load_api.py measures them)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from anyio import to_thread
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.config import Settings
from app.models import Job, JobStatus, Metric
from app.schemas.jobs import JobOut
from tests.app.api.test_jobs_api import train_body
from tests.app.api.test_resources import assert_problem, create_digits


@pytest.fixture
def job(api: TestClient, tenant) -> dict:
    dataset = create_digits(api, tenant)
    response = api.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    return response.json()


def conditional(tenant, tag: str, scope: str = "read") -> dict[str, str]:
    return {**tenant.headers(scope), "If-None-Match": tag}


def test_full_get_is_the_job_schema_with_poll_headers(api: TestClient, tenant, job) -> None:
    response = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] == f'"{job["id"]}:{job["version"]}"'
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["retry-after"] == "2"  # still queued: poll again
    body = response.json()
    assert JobOut.model_validate(body).id == uuid.UUID(job["id"])
    assert body == {**job, "metrics": {}}  # the same document the submission answered


def test_304_only_while_the_version_is_unchanged(api: TestClient, tenant, job) -> None:
    tag = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")).headers["etag"]
    cached = api.get(f"/v1/jobs/{job['id']}", headers=conditional(tenant, f'"other", {tag}'))
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == tag and cached.headers["retry-after"] == "2"
    # The status changes (cancelled): the old tag no longer matches, the new one does, and an ended job
    # carries no Retry-After.
    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit")).status_code == 202
    changed = api.get(f"/v1/jobs/{job['id']}", headers=conditional(tenant, tag))
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    new_tag = changed.headers["etag"]
    assert new_tag != tag and "retry-after" not in changed.headers
    again = api.get(f"/v1/jobs/{job['id']}", headers=conditional(tenant, new_tag))
    assert again.status_code == 304 and "retry-after" not in again.headers


def test_a_worker_side_change_invalidates_the_tag(api: TestClient, tenant, job, sessions) -> None:
    tag = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")).headers["etag"]
    with sessions() as session:  # what a claim does: status, attempt and the version bump in one UPDATE
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job["id"]))
            .values(status=JobStatus.running, attempt=1, version=Job.version + 1)
        )
        session.commit()
    response = api.get(f"/v1/jobs/{job['id']}", headers=conditional(tenant, tag))
    assert response.status_code == 200
    assert response.json()["status"] == "running" and response.json()["attempt"] == 1


def test_an_ended_job_carries_its_metrics(api: TestClient, tenant, job, sessions) -> None:
    with sessions() as session:  # what finish_succeeded writes, in one transaction
        job_id = uuid.UUID(job["id"])
        session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.succeeded, version=Job.version + 1)
        )
        for name, value in (("test_accuracy", 91.5), ("UA", 3.25)):
            session.add(Metric(job_id=job_id, tenant_id=tenant.id, name=name, value=value, attempt=1))
        session.commit()
    response = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read"))
    assert response.status_code == 200
    assert response.json()["metrics"] == {"test_accuracy": 91.5, "UA": 3.25}
    assert "retry-after" not in response.headers


def test_another_tenant_gets_404_even_with_the_right_tag(api: TestClient, tenant, other_tenant, job) -> None:
    tag = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")).headers["etag"]
    # The 304 is decided from a three-column query: it must check the tenant before comparing tags.
    assert_problem(
        api.get(f"/v1/jobs/{job['id']}", headers=conditional(other_tenant, tag)), 404, "job-not-found"
    )
    assert_problem(
        api.get(f"/v1/jobs/{job['id']}", headers=other_tenant.headers("read")), 404, "job-not-found"
    )
    missing = uuid.uuid4()
    assert_problem(
        api.get(f"/v1/jobs/{missing}", headers=conditional(tenant, f'"{missing}:1"')), 404, "job-not-found"
    )


def test_request_id_on_every_response(api: TestClient, tenant, job) -> None:
    own = api.get(f"/v1/jobs/{job['id']}", headers={**tenant.headers("read"), "X-Request-ID": "poll-1"})
    assert own.headers["x-request-id"] == "poll-1"
    generated = api.get(
        f"/v1/jobs/{job['id']}", headers={**tenant.headers("read"), "X-Request-ID": "bad id!"}
    )
    assert len(generated.headers["x-request-id"]) == 32  # a fresh uuid4 hex, not the unusable one
    not_modified = api.get(
        f"/v1/jobs/{job['id']}", headers=conditional(tenant, own.headers["etag"]) | {"X-Request-ID": "poll-2"}
    )
    assert not_modified.status_code == 304 and not_modified.headers["x-request-id"] == "poll-2"
    problem = api.get(
        f"/v1/jobs/{uuid.uuid4()}", headers={**tenant.headers("read"), "X-Request-ID": "poll-3"}
    )
    assert problem.headers["x-request-id"] == "poll-3" and problem.json()["request_id"] == "poll-3"
    # Refused by the middleware itself before the app reads the body: problem+json, request id included.
    big = api.post(
        "/v1/jobs",
        content=b"{}",
        headers={**tenant.headers("submit"), "Content-Length": str(10**12), "X-Request-ID": "big-1"},
    )
    assert_problem(big, 413, "payload-too-large")
    assert big.headers["x-request-id"] == "big-1" and big.json()["request_id"] == "big-1"
    assert api.get("/healthz").headers["x-request-id"]


def test_limiter_and_pool_are_sized_by_api_concurrency(api: TestClient, migrated: Settings) -> None:
    tokens = api.portal.call(lambda: to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == migrated.api_concurrency
    if not migrated.is_sqlite:
        pool = api.app.state.engine.pool
        assert pool.size() == migrated.api_concurrency


def test_many_pollers_on_a_small_pool_all_get_answers(
    migrated: Settings, recording_publisher, tenant, sessions
) -> None:
    """64 concurrent pollers against 2 threads and (on Postgres) 2 + 2 connections: every request is
    answered promptly. A read that held its connection while waiting for a thread (or the reverse) would
    stall here until the pool's 30 s checkout timeout."""
    from app.main import create_app

    small = migrated.model_copy(update={"api_concurrency": 2})
    with TestClient(create_app(small, publisher=recording_publisher)) as client:
        dataset = create_digits(client, tenant)
        created = client.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit"))
        path = f"/v1/jobs/{created.json()['id']}"
        tag = created.headers["etag"]
        statuses: list[int] = []
        lock = threading.Lock()

        def poll(i: int) -> None:
            for _ in range(5):
                headers = conditional(tenant, tag) if i % 2 else tenant.headers("read")
                status = client.get(path, headers=headers).status_code
                with lock:
                    statuses.append(status)

        started = time.monotonic()
        threads = [threading.Thread(target=poll, args=(i,)) for i in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started
    assert sorted(set(statuses)) == [200, 304] and len(statuses) == 64 * 5
    assert elapsed < 20, elapsed
