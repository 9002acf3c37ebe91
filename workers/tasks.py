"""Celery tasks: thin wrappers that hand a job id to the job runner, plus maintenance."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celery.signals import worker_init
from sqlalchemy import text

from app.models.base import utcnow
from app.services.compliance import audit as audit_service
from app.services.compliance import deletion_requests as deletion_request_service
from app.services.data import artifacts as artifact_service
from app.services.data import retention
from app.services.jobs import campaigns as campaign_service
from app.services.jobs import lifecycle as job_service
from app.services.ops import quotas
from workers import (
    embedded,
    observability,  # noqa: F401  (connects the logging and metrics signals)
)
from workers.celery_app import (
    AUDIT_CHECKPOINT_TASK,
    PURGE_BROKER_TASK,
    REAP_TASK,
    RETENTION_TASK,
    RUN_JOB_TASK,
    SWEEP_ORPHANS_TASK,
    CeleryPublisher,
    celery_app,
)
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
CONSUMED_MESSAGE_RETENTION = timedelta(days=1)


@worker_init.connect
def _preload_engine(**_: object) -> None:
    """Import torch and the engine once in the worker's parent process, before it forks job children.

    Children then start a job in milliseconds instead of spending seconds importing torch while holding a
    lease. CUDA is not touched here: each child initialises it itself (CUDA does not survive fork), and the
    guard installed first refuses any attempt in this process (workers/cuda_guard.py).
    """
    try:
        import torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        # The service image (maintenance worker) has no torch, and its tasks need none.
        log.info("torch is not installed: this worker runs maintenance tasks only")
        return
    from workers import cuda_guard

    cuda_guard.install()
    # torch.use_deterministic_algorithms (entered by every CPU job) lazily imports torch._inductor.config,
    # which pulls in dynamo: 3-6 s of imports that every job child (one task per child) would repeat.
    import torch._inductor.config  # noqa: F401

    import workers.engine.diffusion.jobs
    import workers.engine.execute
    import workers.jobrunner  # noqa: F401

    # Celery logs, and does not raise, a signal handler's error: the pool's start checks again and stops.
    cuda_guard.assert_untouched("after the preload")


# The request class checks in the worker's parent whether any job waits before a child is spent on the
# message (workers/dispatch.py); the child then runs whichever job's turn it is (jobrunner.run_claimed_job).
@celery_app.task(
    name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, Request="workers.dispatch:RunJobRequest"
)
def run_job(job_id: str) -> None:
    from workers.jobrunner import run_claimed_job

    run_claimed_job(get_runtime(), uuid.UUID(job_id))


@celery_app.task(name=REAP_TASK)
def reap() -> dict[str, int]:
    runtime = get_runtime()
    over_budget = quotas.enforce_time_budget(runtime.sessions, runtime.settings)
    report = job_service.reap(runtime.sessions, stale_enqueue_seconds=runtime.settings.lease_seconds * 5)
    publisher = CeleryPublisher(celery_app)
    sent = job_service.publish_all(runtime.sessions, publisher, report.republish)
    for campaign_id in campaign_service.running_campaigns(runtime.sessions):
        sent += job_service.publish_all(
            runtime.sessions,
            publisher,
            campaign_service.advance(runtime.sessions, campaign_id, runtime.settings),
        )
    for request_id in deletion_request_service.running_requests(runtime.sessions):
        # Issues the signed report (or marks the request failed) once all of its jobs have ended.
        try:
            deletion_request_service.advance(
                runtime.sessions,
                request_id,
                runtime.settings,
                publish=lambda ids: sent.extend(job_service.publish_all(runtime.sessions, publisher, ids)),
            )
        except Exception:  # one broken request must not stop the reaper's other work
            log.exception("reaper: could not advance deletion request %s", request_id)
    if report.requeued or report.failed or sent or over_budget:
        log.info(
            "reaper: requeued=%d failed=%d over_budget=%d published=%d",
            len(report.requeued),
            len(report.failed),
            len(over_budget),
            len(sent),
        )
    return {
        "requeued": len(report.requeued),
        "failed": len(report.failed),
        "over_budget": len(over_budget),
        "published": len(sent),
    }


@celery_app.task(name=SWEEP_ORPHANS_TASK)
def sweep_orphans() -> dict[str, int]:
    """Artifact files no row references (a deletion interrupted between its commit and its file deletion,
    a job attempt that wrote its output and lost its lease), once older than the grace period."""
    runtime = get_runtime()
    report = artifact_service.sweep_orphans(
        runtime.sessions, runtime.store, grace_seconds=runtime.settings.orphan_grace_seconds
    )
    return {
        "deleted": len(report.deleted),
        "temporary": len(report.temp_deleted),
        "bytes": report.bytes_freed,
    }


@celery_app.task(name=RETENTION_TASK)
def purge_intermediates() -> dict[str, int]:
    """Retention of regenerable intermediates (off unless LETHE_RETENTION_DAYS_INTERMEDIATE is set)."""
    runtime = get_runtime()
    report = retention.purge_intermediates(runtime.sessions, runtime.store, runtime.settings)
    if report.purged:
        log.info("retention: purged %d intermediates, %d files", report.purged, len(report.files.deleted))
    return {"purged": report.purged, "files": len(report.files.deleted), "bytes": report.files.bytes_freed}


@celery_app.task(name=AUDIT_CHECKPOINT_TASK)
def audit_checkpoint() -> int:
    """Sign the head of every audit chain that changed since its last checkpoint
    (app/services/compliance/audit.py)."""
    runtime = get_runtime()
    taken = audit_service.checkpoint_all(runtime.sessions, runtime.settings)
    if taken:
        log.info("audit: signed %d checkpoints", taken)
    return taken


@celery_app.task(name=PURGE_BROKER_TASK)
def purge_broker() -> int:
    return purge_consumed_messages(get_runtime().settings.broker, CONSUMED_MESSAGE_RETENTION)


def purge_consumed_messages(broker_url: str, older_than: timedelta) -> int:
    """kombu's SQLAlchemy transport never deletes consumed messages; drop old ones (embedded broker only)."""
    if not broker_url.startswith(f"{embedded.SCHEME}+"):
        return 0
    from sqlalchemy import create_engine

    engine = create_engine(broker_url.split("+", 1)[1])
    cutoff = (utcnow() - older_than).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            result = conn.execute(
                text("DELETE FROM kombu_message WHERE visible = 0 AND timestamp < :cutoff"),
                {"cutoff": cutoff},
            )
            return int(result.rowcount or 0)
    finally:
        engine.dispose()
