"""Celery tasks: thin wrappers that hand a job id to the job runner, plus maintenance."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celery.signals import worker_init
from sqlalchemy import text

from app.models.base import utcnow
from app.services import campaigns as campaign_service
from app.services import jobs as job_service
from workers import embedded
from workers.celery_app import PURGE_BROKER_TASK, REAP_TASK, RUN_JOB_TASK, CeleryPublisher, celery_app
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
CONSUMED_MESSAGE_RETENTION = timedelta(days=1)


@worker_init.connect
def _preload_engine(**_: object) -> None:
    """Import torch and the engine once in the worker's parent process, before it forks job children.

    Children then start a job in milliseconds instead of spending seconds importing torch while holding a
    lease. CUDA is not touched here: each child initialises it itself (CUDA does not survive fork).
    """
    import workers.engine.execute  # noqa: F401


@celery_app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> None:
    from workers.jobrunner import run_claimed_job

    run_claimed_job(get_runtime(), uuid.UUID(job_id))


@celery_app.task(name=REAP_TASK)
def reap() -> dict[str, int]:
    runtime = get_runtime()
    report = job_service.reap(runtime.sessions, stale_enqueue_seconds=runtime.settings.lease_seconds * 5)
    publisher = CeleryPublisher(celery_app)
    sent = job_service.publish_all(runtime.sessions, publisher, report.republish)
    for campaign_id in campaign_service.running_campaigns(runtime.sessions):
        sent += job_service.publish_all(
            runtime.sessions,
            publisher,
            campaign_service.advance(runtime.sessions, campaign_id, runtime.settings),
        )
    if report.requeued or report.failed or sent:
        log.info(
            "reaper: requeued=%d failed=%d published=%d", len(report.requeued), len(report.failed), len(sent)
        )
    return {"requeued": len(report.requeued), "failed": len(report.failed), "published": len(sent)}


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
