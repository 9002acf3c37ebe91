from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.orm import Session

from app.api.deps import PublisherDep, Reader, SessionDep, SettingsDep, StoreDep, Submitter, request_id
from app.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, paginate
from app.core.problems import DomainError, NotFound
from app.models import Job, JobEvent, JobStatus, Metric
from app.models.job import TERMINAL_STATUSES
from app.schemas.common import Page
from app.schemas.jobs import JobCreate, JobEventOut, JobOut
from app.schemas.resources import INT64_MAX
from app.services.compliance import audit
from app.services.data.deletion import CASCADE_DESCRIPTION, DELETE_RESPONSES, DeletionReport, delete_resource
from app.services.jobs import lifecycle as job_service
from app.services.jobs.results import metrics_for
from app.services.jobs.submission import submit

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_HINT_SECONDS = 2
SSE_POLL_SECONDS = 0.5
MAX_IDEMPOTENCY_KEY = 255


def get_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found", code="job-not-found")
    return job


def job_out(session: Session, job: Job) -> JobOut:
    out = JobOut.model_validate(job)
    out.metrics = metrics_for(session, [job.id]).get(job.id, {})
    return out


def etag_of(job_id: uuid.UUID, version: int) -> str:
    return f'"{job_id}:{version}"'


def etag(job: Job) -> str:
    return etag_of(job.id, job.version)


@router.post(
    "",
    response_model=JobOut,
    status_code=202,
    responses={
        200: {"description": "Idempotent replay"},
        429: {"description": "too-many-active-jobs: the tenant's queued + running jobs are at the limit"},
    },
)
def create_job(
    body: JobCreate,
    principal: Submitter,
    session: SessionDep,
    settings: SettingsDep,
    publisher: PublisherDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=MAX_IDEMPOTENCY_KEY, description="Retries with the same key return the same job."),
    ] = None,
) -> JobOut:
    job, created = submit(
        session, principal, body, settings, idempotency_key=idempotency_key, request_id=request_id(request)
    )
    session.commit()
    if created:
        # Publish only after commit: the worker must never see an id whose row is not visible yet.
        job_service.publish_all(request.app.state.sessions, publisher, [job.id])
        session.refresh(job)
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.headers["Retry-After"] = str(POLL_HINT_SECONDS)
    response.headers["ETag"] = etag(job)
    return job_out(session, job)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    principal: Reader,
    session: SessionDep,
    status: JobStatus | None = None,
    kind: Annotated[str | None, Query(max_length=40, description="A job kind (GET /v1/job-kinds).")] = None,
    method: str | None = None,
    model_id: uuid.UUID | None = None,
    forget_set_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[JobOut]:
    query = select(Job).where(Job.tenant_id == principal.tenant_id)
    for column, value in (
        (Job.status, status),
        (Job.kind, kind),
        (Job.method, method),
        (Job.model_id, model_id),
        (Job.forget_set_id, forget_set_id),
    ):
        if value is not None:
            query = query.where(column == value)
    rows, next_cursor = paginate(session, query, Job, cursor, limit)
    metrics = metrics_for(session, [r.id for r in rows])
    data = []
    for row in rows:
        out = JobOut.model_validate(row)
        out.metrics = metrics.get(row.id, {})
        data.append(out)
    return Page[JobOut](data=data, next_cursor=next_cursor, has_more=next_cursor is not None)


@dataclass(frozen=True)
class _JobRead:
    etag: str
    status: JobStatus
    body: bytes | None  # None: not modified


# The read path uses Core statements on a bare connection: an ORM Session, its identity map and instance
# loading cost more CPU than the query itself. The statements are built once (and compiled once, by
# SQLAlchemy's cache).
_JOBS = Job.__table__
_METRICS = Metric.__table__
_HEAD_QUERY = select(_JOBS.c.tenant_id, _JOBS.c.version, _JOBS.c.status).where(
    _JOBS.c.id == bindparam("job_id")
)
_ROW_QUERY = select(_JOBS).where(_JOBS.c.id == bindparam("job_id"))
_METRICS_QUERY = select(_METRICS.c.name, _METRICS.c.value).where(_METRICS.c.job_id == bindparam("job_id"))


def _read_job(engine: Engine, tenant_id: uuid.UUID, job_id: uuid.UUID, if_none_match: list[str]) -> _JobRead:
    with engine.connect() as conn:
        if if_none_match:
            # A poller's answer is mostly 304: decide it from three small columns before loading the row's
            # JSON (params, progress, result, environment, timings) and its metrics.
            head = conn.execute(_HEAD_QUERY, {"job_id": job_id}).one_or_none()
            if head is None or head.tenant_id != tenant_id:
                raise NotFound(f"job {job_id} not found", code="job-not-found")
            tag = etag_of(job_id, head.version)
            if tag in if_none_match:
                return _JobRead(tag, head.status, None)
        row = conn.execute(_ROW_QUERY, {"job_id": job_id}).one_or_none()
        if row is None or row.tenant_id != tenant_id:
            raise NotFound(f"job {job_id} not found", code="job-not-found")
        # Metrics are written with the final status (finish-once), so a queued or running job, the one
        # pollers read, has none: skip the second query for it.
        metrics: dict[str, float] = {}
        if row.status in TERMINAL_STATUSES:
            metrics = {name: value for name, value in conn.execute(_METRICS_QUERY, {"job_id": job_id})}
    # The connection is back in the pool before the body is built: under many pollers a connection held
    # through serialisation starves the threads waiting for one.
    out = JobOut.model_validate(row)
    out.metrics = metrics
    return _JobRead(etag_of(job_id, row.version), row.status, out.model_dump_json().encode())


@router.get(
    "/{job_id}", response_model=JobOut, responses={304: {"description": "Not modified since the ETag"}}
)
async def read_job(
    job_id: uuid.UUID,
    principal: Reader,
    request: Request,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    # async, with one thread hop for the DB work (a sync route costs a hop for itself, one for its session
    # dependency's set-up, one for its tear-down and one for response validation).
    tags = [t.strip() for t in if_none_match.split(",")] if if_none_match else []
    read = await run_in_threadpool(
        _read_job, request.app.state.read_engine, principal.tenant_id, job_id, tags
    )
    headers = {"ETag": read.etag, "Cache-Control": "no-cache"}
    if read.status not in TERMINAL_STATUSES:
        headers["Retry-After"] = str(POLL_HINT_SECONDS)
    if read.body is None:
        return Response(status_code=304, headers=headers)
    # Already JobOut's JSON: returned as is rather than validated and serialised a second time by FastAPI.
    return Response(read.body, media_type="application/json", headers=headers)


@router.post("/{job_id}/cancel", response_model=JobOut, status_code=202)
def cancel_job(job_id: uuid.UUID, principal: Submitter, session: SessionDep, request: Request) -> JobOut:
    """Idempotent. A queued job is cancelled at once; a running one stops at its next heartbeat."""
    job = get_job(session, principal.tenant_id, job_id)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise DomainError(f"job {job_id} already {job.status.value}", code="job-not-cancellable", status=409)
    if not job.cancel_requested and job.status is not JobStatus.cancelled:
        job_service.request_cancel(session, job)
        audit.record(
            session,
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            action="job.cancel",
            resource_type="job",
            resource_id=str(job.id),
            request_id=request_id(request),
            details={"status": job.status.value},
        )
        session.commit()
    return job_out(session, job)


@router.get("/{job_id}/metrics", response_model=dict[str, float], tags=["results"])
def read_metrics(job_id: uuid.UUID, principal: Reader, session: SessionDep) -> dict[str, float]:
    job = get_job(session, principal.tenant_id, job_id)
    return metrics_for(session, [job.id]).get(job.id, {})


@router.get(
    "/{job_id}/arrays",
    response_model=dict[str, list[float]],
    tags=["results"],
    responses={410: {"description": "arrays-purged: removed by the retention policy"}},
)
def read_arrays(
    job_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep
) -> dict[str, list[float]]:
    """Per-example outputs of an audit (attack scores per trial, Kaggle ε per forget example, the forget
    sets drawn), by name. Other kinds of job have none."""
    job = get_job(session, principal.tenant_id, job_id)
    key = (job.result or {}).get("arrays_key")
    if (job.result or {}).get("arrays_purged_at"):
        raise DomainError(
            f"the per-example arrays of job {job_id} were purged by the retention policy"
            " (LETHE_RETENTION_DAYS_INTERMEDIATE); its metrics remain",
            code="arrays-purged",
            status=410,
        )
    if job.status is not JobStatus.succeeded or not key:
        raise NotFound(f"job {job_id} has no per-example arrays", code="arrays-not-found")
    with np.load(io.BytesIO(store.get(key)), allow_pickle=False) as arrays:
        return {name: [float(v) for v in arrays[name].ravel()] for name in arrays.files}


@router.get("/{job_id}/events", response_model=list[JobEventOut])
def list_events(
    job_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=INT64_MAX, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[JobEventOut]:
    get_job(session, principal.tenant_id, job_id)
    events = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return [JobEventOut.model_validate(e) for e in events]


def _visible_job(job_id: uuid.UUID, principal: Reader, session: SessionDep) -> uuid.UUID:
    get_job(session, principal.tenant_id, job_id)
    session.rollback()  # the stream outlives this dependency's session: do not hold a snapshot open
    return job_id


@router.get("/{job_id}/events/stream", response_class=EventSourceResponse)
async def stream_events(
    job_id: Annotated[uuid.UUID, Depends(_visible_job)],
    principal: Reader,
    request: Request,
    last_event_id: Annotated[int | None, Header(ge=0, le=INT64_MAX)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: replays from ``Last-Event-ID``, then follows until the job ends."""
    sessions = request.app.state.read_sessions

    def _poll(after: int) -> tuple[list[JobEventOut], bool, bool]:
        with sessions() as session:
            job = session.get(Job, job_id)
            if job is None or job.tenant_id != principal.tenant_id:
                return [], True, False
            events = session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
            )
            return [JobEventOut.model_validate(e) for e in events], job.status in TERMINAL_STATUSES, True

    events, done, _ = await run_in_threadpool(_poll, last_event_id or 0)
    after = last_event_id or 0
    while True:
        for event in events:
            after = event.id
            yield ServerSentEvent(data=event.model_dump(mode="json"), event=event.type, id=str(event.id))
        if done or await request.is_disconnected():
            return
        await asyncio.sleep(SSE_POLL_SECONDS)
        events, done, _ = await run_in_threadpool(_poll, after)


@router.delete("/{job_id}", response_model=DeletionReport, responses=DELETE_RESPONSES)
def delete_job(
    job_id: uuid.UUID,
    principal: Submitter,
    session: SessionDep,
    store: StoreDep,
    request: Request,
    cascade: Annotated[bool, Query(description=CASCADE_DESCRIPTION)] = False,
) -> DeletionReport:
    """Delete a finished job with its events, metrics, epoch checkpoint and per-example arrays.

    Refused (409) while it is queued or running (cancel it first), and, without ``cascade``, while its output
    model, its searched forget set (and what depends on them) or a campaign that has it as a cell exist."""
    return delete_resource(
        session,
        request.app.state.sessions,
        store,
        principal,
        "job",
        job_id,
        cascade=cascade,
        request_id=request_id(request),
    )
