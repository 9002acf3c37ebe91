"""The Celery application. It only delivers job ids; state lives in the app DB (see
app.services.jobs.lifecycle).

Torch-free: the API process imports this module to publish jobs.
"""

from __future__ import annotations

import uuid

from celery import Celery
from kombu import Queue

from app.core.config import Settings, get_settings
from workers import embedded

GPU_QUEUE = "gpu"
DEFAULT_QUEUE = "default"
RUN_JOB_TASK = "lethe.run_job"
REAP_TASK = "lethe.reap"
PURGE_BROKER_TASK = "lethe.purge_broker"
SWEEP_ORPHANS_TASK = "lethe.sweep_orphans"
RETENTION_TASK = "lethe.retention"
AUDIT_CHECKPOINT_TASK = "lethe.audit_checkpoint"
WORKER_POOL = "workers.pool:TaskPool"


def make_celery(settings: Settings) -> Celery:
    embedded.register()
    embedded.prepare_broker_file(settings.broker)
    app = Celery("lethe", broker=settings.broker, include=["workers.tasks"])
    transport_options: dict[str, object] = {}
    if settings.broker.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacked message after visibility_timeout: it must exceed the hard time
        # limit, or a running job is delivered again while it still runs.
        transport_options["visibility_timeout"] = settings.redis_visibility_timeout
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        # Prefork that replaces a finished one-task child at once rather than on its 5 s timer (see
        # workers/pool.py). Celery prefers this setting to the command line's default `-P prefork`.
        worker_pool=WORKER_POOL,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # Publishing happens after the job row is committed; if the broker is down, give up fast:
        # the reaper's sweep publishes every queued job that was never sent.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=(Queue(GPU_QUEUE), Queue(DEFAULT_QUEUE)),
        task_routes={RUN_JOB_TASK: {"queue": GPU_QUEUE}, "lethe.*": {"queue": DEFAULT_QUEUE}},
        beat_schedule={
            "reap-expired-leases": {"task": REAP_TASK, "schedule": settings.reaper_interval_seconds},
            "purge-consumed-broker-messages": {"task": PURGE_BROKER_TASK, "schedule": 3600.0},
            "sweep-orphan-artifacts": {
                "task": SWEEP_ORPHANS_TASK,
                "schedule": settings.orphan_sweep_interval_seconds,
            },
            "retention-intermediates": {
                "task": RETENTION_TASK,
                "schedule": settings.retention_interval_seconds,
            },
            "audit-checkpoints": {
                "task": AUDIT_CHECKPOINT_TASK,
                "schedule": settings.audit_checkpoint_interval_seconds,
            },
        },
        timezone="UTC",
    )
    return app


celery_app = make_celery(get_settings())
app = celery_app  # `celery -A workers.celery_app` finds `app`


class CeleryPublisher:
    """Publishes 'run job X' after the job row is committed."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, job_id: uuid.UUID) -> None:
        self.app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=GPU_QUEUE)
