"""Run a submitted job in the test process with the worker's own job runner (no broker, no Celery)."""

from __future__ import annotations

import uuid
from typing import Any

from app.models import Job
from app.services.jobs import lifecycle as job_service
from app.storage import LocalArtifactStore
from workers import jobrunner
from workers.runtime import WorkerRuntime


def run_job_in_process(sessions: Any, settings: Any, job_id: uuid.UUID) -> None:
    """Claim ``job_id`` and run it as a worker child would (its outcome is written to the job row)."""
    runtime = WorkerRuntime(
        settings=settings, sessions=sessions, store=LocalArtifactStore(settings.artifacts)
    )
    claim = job_service.claim(sessions, job_id, runtime.worker_name, settings.lease_seconds)
    assert claim is not None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
    jobrunner._run(runtime, claim, job)
