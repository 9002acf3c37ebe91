"""The job lifecycle in the database: lease, heartbeat, cancellation, completion, reaping.

The jobs table is the source of truth; a broker message only says "look at job X". Every state
change is one conditional UPDATE, so duplicate deliveries, redeliveries and dead workers cannot run a
job twice or record two results.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import session_scope
from app.models import ForgetSet, Job, JobEvent, JobStatus, Metric, Model
from app.models.base import utcnow
from app.models.job import TERMINAL_STATUSES


class LeaseLost(RuntimeError):
    """This worker no longer owns the job (its lease expired and someone else took it, or it ended)."""


@dataclass(frozen=True)
class Claim:
    job_id: uuid.UUID
    worker: str
    attempt: int


@dataclass(frozen=True)
class HeartbeatReply:
    cancel_requested: bool


def _execute_update(session: Session, statement: Update) -> int:
    """Run a conditional UPDATE and return how many rows it changed (0 means the condition failed)."""
    result = cast(CursorResult[Any], session.execute(statement.execution_options(synchronize_session=False)))
    return result.rowcount


def add_event(
    session: Session, job_id: uuid.UUID, type_: str, attempt: int, data: dict[str, Any] | None = None
) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, attempt=attempt, data=data or {}))


def _claimable(now: datetime) -> Any:
    """Jobs a worker may take: queued, or running under an expired lease (its worker died), not cancelled
    and with attempts left. Both branches are ranges of ix_jobs_status_lease."""
    return and_(
        Job.cancel_requested.is_(False),
        Job.attempt < Job.max_attempts,
        or_(
            Job.status == JobStatus.queued,
            and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
        ),
    )


def claimable_exists(factory: sessionmaker[Session], now: datetime | None = None) -> bool:
    """Whether any job is waiting for a worker: one indexed probe, cheap enough for every broker message."""
    with factory() as session:
        return session.scalar(select(Job.id).where(_claimable(now or utcnow())).limit(1)) is not None


# The oldest possible start, so that tenants that never started a job sort first.
_NEVER = datetime.min.replace(tzinfo=UTC)


def next_fair_job(session: Session, now: datetime | None = None) -> uuid.UUID | None:
    """The job a free worker should take next: round robin over the tenants with waiting work.

    The tenant whose latest job start is oldest goes first (a tenant that never started one before all
    others; ties by the tenant's oldest waiting job), and within it the oldest waiting job. So a tenant with a
    thousand queued jobs takes every other turn at most, and a tenant with one waits for at most one turn per
    other tenant with waiting work, whatever the order of the broker's messages.
    """
    now = now or utcnow()
    waiting = session.execute(
        select(Job.tenant_id, func.min(Job.created_at)).where(_claimable(now)).group_by(Job.tenant_id)
    ).all()
    if not waiting:
        return None
    tenants = [tenant_id for tenant_id, _ in waiting]
    last_start: dict[uuid.UUID, datetime | None] = {
        tenant_id: started
        for tenant_id, started in session.execute(
            select(Job.tenant_id, func.max(Job.started_at))
            .where(Job.tenant_id.in_(tenants))
            .group_by(Job.tenant_id)
        ).all()
    }

    def turn(row: Any) -> tuple[datetime, datetime, str]:
        tenant_id, oldest_waiting = row
        return (last_start.get(tenant_id) or _NEVER, oldest_waiting, str(tenant_id))

    for tenant_id, _ in sorted(waiting, key=turn):
        job_id = session.scalar(
            select(Job.id)
            .where(Job.tenant_id == tenant_id, _claimable(now))
            .order_by(Job.created_at, Job.id)
            .limit(1)
            # Postgres: concurrent pickers skip a row another one is claiming instead of queueing behind it
            # (and go on to the next tenant when that was the tenant's only waiting job)
            .with_for_update(skip_locked=True)
        )
        if job_id is not None:
            return job_id
    return None


# How often claim_next picks again after another worker took its pick first.
CLAIM_NEXT_TRIES = 5


def claim_next(factory: sessionmaker[Session], worker: str, lease_seconds: float) -> Claim | None:
    """Claim the next job by the fair pick (next_fair_job). None: nothing is waiting.

    A broker message is only a wake-up call: whichever job it was published for, the worker runs the one
    whose turn it is. Every queued job has a message of its own (or the reaper's sweep sends one), a message
    spent on another job is handed on (hand_on), and each message claims at most one job, so every job still
    runs, and once (the claim is the same conditional UPDATE as ``claim``)."""
    for _ in range(CLAIM_NEXT_TRIES):
        with session_scope(factory) as session:
            now = _now_in_transaction(session)
            job_id = next_fair_job(session, now)
            if job_id is None:
                return None
            claimed = _claim_in(session, job_id, worker, lease_seconds, now)
            if claimed is not None:
                return claimed
    return None


def hand_on(factory: sessionmaker[Session], publisher: Publisher, job_id: uuid.UUID) -> bool:
    """Send a new message for ``job_id`` if it still waits: its message was spent on another job (claim_next).

    Without it, a job queued without a message of its own (its publish failed, the broker lost it) would take
    another job's message, and that job would wait for the reaper's sweep (minutes). Each claim hands on at
    most one message, so this cannot loop; a duplicate is dropped in the worker's parent at no cost."""
    with factory() as session:
        waiting = session.scalar(select(Job.id).where(Job.id == job_id, _claimable(utcnow())))
    if waiting is None:
        return False
    return bool(publish_all(factory, publisher, [job_id]))


def claim(
    factory: sessionmaker[Session], job_id: uuid.UUID, worker: str, lease_seconds: float
) -> Claim | None:
    """Take the job if it is queued, or running under an expired lease. None: someone else owns it."""
    with session_scope(factory) as session:
        return _claim_in(session, job_id, worker, lease_seconds, _now_in_transaction(session))


def _now_in_transaction(session: Session) -> datetime:
    """The clock, read once the transaction has begun: on SQLite beginning waits for the write lock, and a
    time read before that wait would date the start (and the lease) before the commit that queued the job."""
    session.connection()
    return utcnow()


def _claim_in(
    session: Session, job_id: uuid.UUID, worker: str, lease_seconds: float, now: datetime
) -> Claim | None:
    changed = _execute_update(
        session,
        update(Job)
        .where(Job.id == job_id, _claimable(now))
        .values(
            status=JobStatus.running,
            worker=worker,
            attempt=Job.attempt + 1,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            version=Job.version + 1,
        ),
    )
    if changed != 1:
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    assert attempt is not None
    add_event(session, job_id, "started", attempt, {"worker": worker})
    return Claim(job_id=job_id, worker=worker, attempt=attempt)


def _owned(claim_: Claim) -> Any:
    return and_(
        Job.id == claim_.job_id,
        Job.status == JobStatus.running,
        Job.worker == claim_.worker,
        Job.attempt == claim_.attempt,
    )


def heartbeat(
    factory: sessionmaker[Session],
    claim_: Claim,
    lease_seconds: float,
    progress: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
) -> HeartbeatReply:
    """Extend the lease and record progress; tells the worker whether cancellation was requested."""
    now = utcnow()
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
        "version": Job.version + 1,
    }
    if progress is not None:
        values["progress"] = progress
    with session_scope(factory) as session:
        changed = _execute_update(session, update(Job).where(_owned(claim_)).values(**values))
        if changed != 1:
            raise LeaseLost(
                f"job {claim_.job_id} attempt {claim_.attempt} is no longer owned by {claim_.worker}"
            )
        if event is not None:
            add_event(session, claim_.job_id, "progress", claim_.attempt, event)
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == claim_.job_id))
    return HeartbeatReply(cancel_requested=bool(cancel))


def save_checkpoint_pointer(factory: sessionmaker[Session], claim_: Claim, key: str, epoch: int) -> None:
    with session_scope(factory) as session:
        changed = _execute_update(
            session,
            update(Job)
            .where(_owned(claim_))
            .values(checkpoint_key=key, checkpoint_epoch=epoch, version=Job.version + 1),
        )
        if changed != 1:
            raise LeaseLost(f"job {claim_.job_id} lost while checkpointing")


def drop_cache_key(factory: sessionmaker[Session], claim_: Claim) -> None:
    """Keep this job's result out of the result cache (it ran other than asked: an out-of-memory retry with
    half the batch); identical submissions then run again."""
    with session_scope(factory) as session:
        changed = _execute_update(session, update(Job).where(_owned(claim_)).values(cache_key=None))
        if changed != 1:
            raise LeaseLost(f"job {claim_.job_id} lost while leaving the result cache")


@dataclass
class JobOutcome:
    metrics: dict[str, float]
    result: dict[str, Any]
    environment: dict[str, Any]
    timings: dict[str, Any]
    output_model: Model | None = None
    output_forget_set: ForgetSet | None = None


def finish_succeeded(factory: sessionmaker[Session], claim_: Claim, job: Job, outcome: JobOutcome) -> bool:
    """Record results and mark the job succeeded, in one transaction, only if this attempt still owns it."""
    now = utcnow()
    with session_scope(factory) as session:
        output_model_id = None
        if outcome.output_model is not None:
            session.add(outcome.output_model)
            session.flush()
            output_model_id = outcome.output_model.id
        result = dict(outcome.result)
        if outcome.output_forget_set is not None:
            session.add(outcome.output_forget_set)
            session.flush()
            result["forget_set_id"] = str(outcome.output_forget_set.id)
        changed = _execute_update(
            session,
            update(Job)
            .where(_owned(claim_))
            .values(
                status=JobStatus.succeeded,
                finished_at=now,
                lease_expires_at=None,
                output_model_id=output_model_id,
                result=result,
                environment=outcome.environment,
                timings=outcome.timings,
                progress={**(job.progress or {}), "phase": "done", "fraction": 1.0},
                version=Job.version + 1,
            ),
        )
        if changed != 1:
            session.rollback()
            return False
        for name, value in sorted(outcome.metrics.items()):
            session.add(
                Metric(
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    name=name,
                    value=float(value),
                    attempt=claim_.attempt,
                )
            )
        add_event(session, job.id, "succeeded", claim_.attempt, {"metrics": outcome.metrics})
    return True


def finish_unsuccessful(
    factory: sessionmaker[Session],
    claim_: Claim,
    status: JobStatus,
    error: dict[str, Any] | None,
    environment: dict[str, Any] | None = None,
) -> bool:
    assert status in (JobStatus.failed, JobStatus.cancelled)
    with session_scope(factory) as session:
        changed = _execute_update(
            session,
            update(Job)
            .where(_owned(claim_))
            .values(
                status=status,
                finished_at=utcnow(),
                lease_expires_at=None,
                error=error,
                environment=environment,
                version=Job.version + 1,
            ),
        )
        if changed != 1:
            return False
        add_event(session, claim_.job_id, status.value, claim_.attempt, {"error": error} if error else {})
    return True


def request_cancel(session: Session, job: Job) -> None:
    """Queued jobs are cancelled at once; running ones see the flag at their next heartbeat."""
    if job.status in TERMINAL_STATUSES:
        return
    job.cancel_requested = True
    job.version += 1
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = utcnow()
        add_event(session, job.id, "cancelled", job.attempt, {"reason": "cancelled before it started"})
    else:
        add_event(session, job.id, "cancel_requested", job.attempt, {})


@dataclass(frozen=True)
class ReapReport:
    requeued: list[uuid.UUID]
    failed: list[uuid.UUID]
    republish: list[uuid.UUID]


def reap(
    factory: sessionmaker[Session], *, stale_enqueue_seconds: float, now: datetime | None = None
) -> ReapReport:
    """Recover from dead workers and lost messages.

    Running jobs whose lease expired go back to the queue, or fail after ``max_attempts``; a
    cancelled-while-dead job becomes cancelled. Queued jobs never published, or published long ago
    and still not started (a broker that lost the message), are returned for re-publishing; a
    duplicate message is harmless because ``claim`` admits one owner. "Long ago" backs off: a job still
    waiting its turn behind a long queue would otherwise gain a duplicate message every
    ``stale_enqueue_seconds``, so the wait grows with the job's age when it was last published (at least
    ``stale_enqueue_seconds``, at most ``REPUBLISH_BACKOFF_CAP`` times that).
    """
    now = now or utcnow()
    requeued: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
    with session_scope(factory) as session:
        expired = session.scalars(
            select(Job)
            .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job in expired:
            job.version += 1
            job.lease_expires_at = None
            if job.cancel_requested:
                job.status = JobStatus.cancelled
                job.finished_at = now
                add_event(
                    session, job.id, "cancelled", job.attempt, {"reason": "worker lost after cancel request"}
                )
            elif job.attempt >= job.max_attempts:
                job.status = JobStatus.failed
                job.finished_at = now
                job.error = {
                    "code": "attempts-exhausted",
                    "detail": f"the worker running this job was lost {job.attempt} times (lease expired)",
                }
                add_event(session, job.id, "failed", job.attempt, job.error)
                failed.append(job.id)
            else:
                job.status = JobStatus.queued
                job.worker = None
                job.enqueued_at = None
                add_event(session, job.id, "requeued", job.attempt, {"reason": "lease expired"})
                requeued.append(job.id)
        session.flush()  # the requeued jobs must be visible to the sweep below
        stale_before = now - timedelta(seconds=stale_enqueue_seconds)
        candidates = session.execute(
            select(Job.id, Job.created_at, Job.enqueued_at).where(
                Job.status == JobStatus.queued,
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_before),
            )
        ).all()
        republish = [
            job_id
            for job_id, created_at, enqueued_at in candidates
            if enqueued_at is None
            or now - enqueued_at >= republish_wait(created_at, enqueued_at, stale_enqueue_seconds)
        ]
    return ReapReport(requeued=requeued, failed=failed, republish=republish)


# A queued job's message is re-sent after at most this many times ``stale_enqueue_seconds``.
REPUBLISH_BACKOFF_CAP = 12


def republish_wait(created_at: datetime, enqueued_at: datetime, stale_seconds: float) -> timedelta:
    """How long after its last publish a still-queued job is published again: its age at that publish,
    bounded to [stale, REPUBLISH_BACKOFF_CAP x stale] (so the waits roughly double while it stays queued)."""
    age = (enqueued_at - created_at).total_seconds()
    return timedelta(seconds=min(max(age, stale_seconds), REPUBLISH_BACKOFF_CAP * stale_seconds))


def mark_enqueued(factory: sessionmaker[Session], job_ids: Iterable[uuid.UUID]) -> None:
    ids = list(job_ids)
    if not ids:
        return
    with session_scope(factory) as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.status == JobStatus.queued)
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )


Publisher = Callable[[uuid.UUID], None]


# publish_all records what it sent every this many messages: until then the reaper's sweep sees the jobs as
# never published and sends them again (a thousand jobs take seconds to publish: one duplicate each).
MARK_ENQUEUED_EVERY = 50


def publish_all(
    factory: sessionmaker[Session], publisher: Publisher, job_ids: Iterable[uuid.UUID]
) -> list[uuid.UUID]:
    """Publish each job; a broker failure leaves enqueued_at empty so the reaper retries later."""
    sent: list[uuid.UUID] = []
    unmarked: list[uuid.UUID] = []
    for job_id in job_ids:
        try:
            publisher(job_id)
        except Exception:  # the broker is down: the sweep will publish it later
            continue
        sent.append(job_id)
        unmarked.append(job_id)
        if len(unmarked) >= MARK_ENQUEUED_EVERY:
            mark_enqueued(factory, unmarked)
            unmarked = []
    mark_enqueued(factory, unmarked)
    return sent
