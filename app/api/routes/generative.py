"""Outputs of generative models: sample grids (PNG, one class per row) and a sample job's images (npz).

Every job that evaluates a generative model (evaluate, retrain, unlearn) and every sample job stores a grid;
``GET /v1/models/{id}/samples.png`` answers with the newest grid of that model (drawn by a job that produced
it or that evaluated / sampled it), so dashboards can show a model without knowing its jobs.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import or_, select

from app.api.deps import Reader, SessionDep, StoreDep
from app.api.routes.jobs import get_job
from app.core.problems import NotFound
from app.models import Job, JobStatus
from app.services.data.models import get_model
from workers.engine.job_kinds import JOB_KINDS, job_kind

router = APIRouter(tags=["generative"])
GRID_NAME = "samples"
PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A grid of generated images, one class per row."},
    404: {"description": "grid-not-found: no grid for this job or model"},
}
NPZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "npz: images uint8 (N, C, H, W) and labels int64 (N,), class by class.",
    },
    404: {"description": "samples-not-found: the job is not a finished sample job"},
}
# Grids are content-addressed and immutable: clients may cache them.
IMMUTABLE = "private, max-age=86400, immutable"


def grid_key(job: Job, name: str = GRID_NAME) -> str | None:
    grids = (job.result or {}).get("grids") or {}
    key = grids.get(name) if isinstance(grids, dict) else None
    return key if isinstance(key, str) else None


def grid_url(job: Job) -> str | None:
    """The job's grid route, when it has a grid."""
    return f"/v1/jobs/{job.id}/grid.png" if grid_key(job) else None


def _png(store: StoreDep, key: str) -> Response:
    return Response(store.get(key), media_type="image/png", headers={"Cache-Control": IMMUTABLE})


@router.get("/jobs/{job_id}/grid.png", response_class=Response, responses=PNG_RESPONSES)
def job_grid(
    job_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    store: StoreDep,
    name: str = Query(GRID_NAME, max_length=50, pattern="^[a-z_]+$", description="Which grid of the job."),
) -> Response:
    """The job's sample grid: a generative evaluation's (every class in order, the forgotten one included)
    or a sample job's."""
    job = get_job(session, principal.tenant_id, job_id)
    key = grid_key(job, name)
    if key is None or not store.exists(key):
        raise NotFound(f"job {job_id} has no '{name}' grid", code="grid-not-found")
    return _png(store, key)


@router.get("/jobs/{job_id}/samples.npz", response_class=Response, responses=NPZ_RESPONSES)
def job_samples(job_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep) -> Response:
    """A sample job's images and their class labels as an npz (no pickled objects)."""
    job = get_job(session, principal.tenant_id, job_id)
    key = (job.result or {}).get("samples_key")
    if "samples" not in job_kind(job.kind).produces or not isinstance(key, str) or not store.exists(key):
        raise NotFound(f"job {job_id} has no stored samples", code="samples-not-found")
    return Response(
        store.get(key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="samples-{job_id}.npz"',
            "Cache-Control": IMMUTABLE,
        },
    )


def _kinds_showing_samples() -> list[str]:
    """The kinds whose grids stand for a model: the rows of a comparison (retrain, unlearn: of their output
    model; evaluate: of the model evaluated) and the kinds that produce samples."""
    return [spec.name for spec in JOB_KINDS if spec.comparison_role is not None or "samples" in spec.produces]


@router.get("/models/{model_id}/samples.png", response_class=Response, responses=PNG_RESPONSES)
def model_grid(model_id: uuid.UUID, principal: Reader, session: SessionDep, store: StoreDep) -> Response:
    """The newest sample grid of a generative model: from the job that produced it (retrain, unlearn) or
    from an evaluate / sample job on it."""
    model = get_model(session, principal.tenant_id, model_id)
    candidates = session.scalars(
        select(Job)
        .where(
            Job.tenant_id == principal.tenant_id,
            Job.status == JobStatus.succeeded,
            or_(
                Job.output_model_id == model.id,
                Job.model_id == model.id,
            ),
            Job.kind.in_(_kinds_showing_samples()),
        )
        .order_by(Job.finished_at.desc(), Job.id.desc())
    )
    for job in candidates:
        # Jobs that start from this model but output another one show that other model's samples.
        if job.model_id == model.id and "model" in job_kind(job.kind).produces:
            continue
        key = grid_key(job)
        if key is not None and store.exists(key):
            return _png(store, key)
    raise NotFound(
        f"model {model_id} has no sample grid yet: run a sample or evaluate job on it", code="grid-not-found"
    )
