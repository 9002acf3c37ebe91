"""The DB lease protocol on its own: claim, heartbeat, cancel, finish once, reap."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import Job, JobKind, JobStatus, Metric
from app.models.base import utcnow
from app.services.jobs import lifecycle as job_service
from app.services.jobs.lifecycle import JobOutcome, LeaseLost

LEASE = 30.0


@pytest.fixture
def job_id(sessions: sessionmaker[Session], tenant) -> uuid.UUID:
    with sessions() as session:
        job = Job(
            tenant_id=tenant.id,
            kind=JobKind.evaluate,
            method=None,
            params={},
            seed=0,
            device_requested="cpu",
            progress={},
            attempt=0,
            max_attempts=2,
            code_version="test",
            version=1,
        )
        session.add(job)
        session.commit()
        return job.id


def load(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def outcome() -> JobOutcome:
    return JobOutcome(metrics={"UA": 1.0, "RA": 2.0}, result={}, environment={}, timings={})


def test_only_one_of_many_concurrent_claims_wins(sessions, job_id) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(lambda i: job_service.claim(sessions, job_id, f"w{i}", LEASE), range(8)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].attempt == 1
    job = load(sessions, job_id)
    assert job.status is JobStatus.running and job.worker == winners[0].worker


def test_heartbeat_extends_lease_and_reports_cancel(sessions, job_id) -> None:
    claim = job_service.claim(sessions, job_id, "w", LEASE)
    assert claim is not None
    before = load(sessions, job_id)
    reply = job_service.heartbeat(sessions, claim, LEASE, progress={"phase": "train", "fraction": 0.5})
    after = load(sessions, job_id)
    assert not reply.cancel_requested
    assert after.lease_expires_at > before.lease_expires_at and after.version > before.version
    assert after.progress["fraction"] == 0.5
    with sessions() as session:
        job = session.get(Job, job_id)
        job_service.request_cancel(session, job)
        session.commit()
    assert job_service.heartbeat(sessions, claim, LEASE).cancel_requested


def test_a_stale_worker_cannot_heartbeat_or_finish(sessions, job_id) -> None:
    first = job_service.claim(sessions, job_id, "old", LEASE)
    assert first is not None
    report = job_service.reap(sessions, stale_enqueue_seconds=60, now=utcnow() + timedelta(seconds=LEASE + 1))
    assert job_id in report.requeued and job_id in report.republish
    second = job_service.claim(sessions, job_id, "new", LEASE)
    assert second is not None and second.attempt == 2
    with pytest.raises(LeaseLost):
        job_service.heartbeat(sessions, first, LEASE)
    job = load(sessions, job_id)
    assert not job_service.finish_succeeded(sessions, first, job, outcome())
    assert job_service.finish_succeeded(sessions, second, job, outcome())
    assert not job_service.finish_succeeded(sessions, second, job, outcome())  # a redelivery writes nothing
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)) == 2
    assert load(sessions, job_id).status is JobStatus.succeeded


def test_reaper_fails_a_job_after_max_attempts(sessions, job_id) -> None:
    for _ in range(2):
        assert job_service.claim(sessions, job_id, "w", LEASE) is not None
        job_service.reap(sessions, stale_enqueue_seconds=60, now=utcnow() + timedelta(seconds=LEASE + 1))
    job = load(sessions, job_id)
    assert job.status is JobStatus.failed and job.error["code"] == "attempts-exhausted"
    assert job_service.claim(sessions, job_id, "w", LEASE) is None


def test_cancelled_job_is_not_claimed(sessions, job_id) -> None:
    with sessions() as session:
        job_service.request_cancel(session, session.get(Job, job_id))
        session.commit()
    assert load(sessions, job_id).status is JobStatus.cancelled
    assert job_service.claim(sessions, job_id, "w", LEASE) is None


def test_unpublished_jobs_are_swept_until_the_broker_answers(sessions, job_id) -> None:
    def broken(_: uuid.UUID) -> None:
        raise ConnectionError("broker down")

    assert job_service.publish_all(sessions, broken, [job_id]) == []
    assert load(sessions, job_id).enqueued_at is None
    report = job_service.reap(sessions, stale_enqueue_seconds=60)
    assert job_id in report.republish
    published: list[uuid.UUID] = []
    assert job_service.publish_all(sessions, published.append, report.republish) == report.republish
    assert load(sessions, job_id).enqueued_at is not None
    assert job_id not in job_service.reap(sessions, stale_enqueue_seconds=60).republish


def test_republishing_a_waiting_job_backs_off_with_its_age(sessions, job_id) -> None:
    """A job still queued behind others is not sent again every stale period: the wait after a publish is
    the job's age at that publish, within [stale, 12 x stale]."""
    stale = 60.0
    with sessions() as session:
        job = session.get(Job, job_id)
        created = job.created_at
        job.enqueued_at = created + timedelta(seconds=600)  # published when 10 minutes old
        session.commit()
    published = created + timedelta(seconds=600)
    assert job_service.republish_wait(created, published, stale) == timedelta(seconds=600)
    assert job_service.republish_wait(created, created, stale) == timedelta(seconds=stale)
    assert job_service.republish_wait(created, created + timedelta(days=1), stale) == timedelta(
        seconds=12 * stale
    )

    def republished(after_s: float) -> bool:
        now = published + timedelta(seconds=after_s)
        return job_id in job_service.reap(sessions, stale_enqueue_seconds=stale, now=now).republish

    assert not republished(stale + 1)  # the old rule would re-send it here
    assert not republished(599)
    assert republished(600)
