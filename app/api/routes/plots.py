"""Plots as PNG or SVG: ROC (log-log), UA-RA trade-off, per-class accuracy, training curves, difficulty
scores. A plot whose data does not exist answers 404 problem+json ``plot-data-not-found``."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from matplotlib.figure import Figure
from sqlalchemy import select

from app.api.deps import Reader, SessionDep, StoreDep
from app.api.routes.jobs import get_job
from app.core.problems import NotFound
from app.models import Job, JobStatus
from app.services.data.forget_sets import get_forget_set
from app.services.jobs import plots
from app.services.jobs.results import compare
from workers.engine.job_kinds import comparison_role, kinds_where

router = APIRouter(tags=["plots"])
FormatParam = Annotated[plots.Format, Path(description="png or svg")]
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The plot."},
    404: {"description": "plot-data-not-found: the job or forget set has nothing to plot"},
}


def _missing(detail: str) -> NotFound:
    return NotFound(detail, code="plot-data-not-found")


def _image(figure: Figure, fmt: plots.Format) -> Response:
    body = plots.render(figure, fmt)
    return Response(body, media_type=plots.MEDIA_TYPES[fmt], headers={"Cache-Control": "private, max-age=60"})


def _label(job: Job) -> str:
    return f"{job.method or job.kind} ({str(job.id)[:8]})"


@router.get("/jobs/{job_id}/plots/roc.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def job_roc(job_id: uuid.UUID, fmt: FormatParam, principal: Reader, session: SessionDep) -> Response:
    """Log-log ROC curves of the job's membership attacks: an audit's attacks (U-LiRA, LiRA, RMIA) or the
    population attacks an evaluation ran on the forget set."""
    job = get_job(session, principal.tenant_id, job_id)
    curves = list(plots.roc_curves(job.result))
    if not curves:
        raise _missing(f"job {job_id} has no attack ROC curves")
    return _image(plots.roc_figure(f"ROC — {_label(job)}", curves), fmt)


def _row_name(kind: str) -> str:
    """A comparison row without a method: the original model's evaluation, or a kind's name."""
    return "original" if comparison_role(kind) == "original" else kind


def _original_evaluation(session: SessionDep, job: Job) -> Job | None:
    # The original model's own evaluation (the "original" row of the comparison) on the same forget set.
    if comparison_role(job.kind) == "original" or job.model_id is None or job.forget_set_id is None:
        return None
    return session.scalar(
        select(Job)
        .where(
            Job.tenant_id == job.tenant_id,
            Job.kind.in_(kinds_where(comparison_role="original")),
            Job.status == JobStatus.succeeded,
            Job.model_id == job.model_id,
            Job.forget_set_id == job.forget_set_id,
        )
        .order_by(Job.created_at.desc())
        .limit(1)
    )


@router.get(
    "/jobs/{job_id}/plots/per-class-accuracy.{fmt}", response_class=Response, responses=IMAGE_RESPONSES
)
def job_per_class(job_id: uuid.UUID, fmt: FormatParam, principal: Reader, session: SessionDep) -> Response:
    """Per-class accuracy after the job, next to the original model's (its evaluation on the same forget
    set, when there is one) per split: forget, retain, test."""
    job = get_job(session, principal.tenant_id, job_id)
    after = (job.result or {}).get("per_class_accuracy")
    if not isinstance(after, dict) or not any(isinstance(v, list) for v in after.values()):
        raise _missing(f"job {job_id} has no per-class accuracy")
    original = _original_evaluation(session, job)
    before = (original.result or {}).get("per_class_accuracy") if original is not None else None
    title = f"Per-class accuracy — {_label(job)}" + (" vs original" if before else "")
    return _image(plots.per_class_figure(title, before if isinstance(before, dict) else None, after), fmt)


@router.get("/jobs/{job_id}/plots/history.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def job_history(job_id: uuid.UUID, fmt: FormatParam, principal: Reader, session: SessionDep) -> Response:
    """The training or unlearning curves: every numeric series of the method's per-epoch history."""
    job = get_job(session, principal.tenant_id, job_id)
    history = (job.result or {}).get("history")
    records = [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []
    if not any(isinstance(v, int | float) and k != "epoch" for r in records for k, v in r.items()):
        raise _missing(f"job {job_id} has no per-epoch history")
    return _image(plots.history_figure(f"History — {_label(job)}", records), fmt)


@router.get(
    "/forget-sets/{forget_set_id}/plots/tradeoff.{fmt}", response_class=Response, responses=IMAGE_RESPONSES
)
def forget_set_tradeoff(
    forget_set_id: uuid.UUID,
    fmt: FormatParam,
    principal: Reader,
    session: SessionDep,
    model_id: Annotated[uuid.UUID | None, Query(description="Only jobs on this original model.")] = None,
) -> Response:
    """UA against RA for every row of the forget set's comparison (retrain, original, each method); for
    generative rows, ua (1 - forget-class generation rate) against the retained classes' accuracy."""
    forget_set = get_forget_set(session, principal.tenant_id, forget_set_id)
    comparison = compare(session, principal.tenant_id, forget_set_id, model_id)
    generative = comparison.task == "generative"
    x_key, y_key = ("ua", "retain_accuracy") if generative else ("UA", "RA")
    points = [
        {
            "kind": row.kind,
            "label": f"{row.method or _row_name(row.kind)} s{row.seed}",
            "group": row.method or _row_name(row.kind),  # one marker and colour per method
            "UA": row.metrics[x_key],
            "RA": row.metrics[y_key],
        }
        for row in comparison.rows
        if x_key in row.metrics and y_key in row.metrics
    ]
    if not points:
        raise _missing(f"forget set {forget_set_id} has no finished jobs with {x_key} and {y_key}")
    if generative:
        figure = plots.tradeoff_figure(
            f"Forgetting vs retained accuracy — {forget_set.name}",
            points,
            x_label="ua (1 - forget-class generation rate)",
            y_label="retained-class conditional accuracy",
        )
        return _image(figure, fmt)
    return _image(plots.tradeoff_figure(f"UA-RA trade-off — {forget_set.name}", points), fmt)


@router.get(
    "/forget-sets/{forget_set_id}/plots/scores.{fmt}", response_class=Response, responses=IMAGE_RESPONSES
)
def forget_set_scores(
    forget_set_id: uuid.UUID, fmt: FormatParam, principal: Reader, session: SessionDep, store: StoreDep
) -> Response:
    """Histogram of a searched forget set's per-item difficulty scores, with the selection threshold."""
    forget_set = get_forget_set(session, principal.tenant_id, forget_set_id)
    if forget_set.scores_key is None:
        raise _missing(f"forget set {forget_set_id} has no difficulty scores (not searched, or purged)")
    data = json.loads(store.get(forget_set.scores_key))
    scores = [float(s) for s in data.get("scores") or [] if s is not None]
    if not scores:
        raise _missing(f"forget set {forget_set_id} has no difficulty scores")
    selected = (
        forget_set.size if data.get("granularity") != "class" else len(forget_set.spec.get("classes") or [])
    )
    figure = plots.scores_figure(f"Difficulty scores — {forget_set.name}", scores, selected or None)
    return _image(figure, fmt)


@router.get("/jobs/{job_id}/plots/recovery.{fmt}", response_class=Response, responses=IMAGE_RESPONSES)
def job_recovery(job_id: uuid.UUID, fmt: FormatParam, principal: Reader, session: SessionDep) -> Response:
    """A recovery audit's relearning curves: the audited model and its retrain control per source."""
    job = get_job(session, principal.tenant_id, job_id)
    recovery = (job.result or {}).get("recovery")
    if not isinstance(recovery, dict) or not recovery.get("relearning"):
        raise _missing(f"job {job_id} has no recovery curves")
    return _image(plots.recovery_figure(f"Recovery under relearning — {_label(job)}", recovery), fmt)
