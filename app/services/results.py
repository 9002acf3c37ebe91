"""Results: a job's metrics, and the per-forget-set comparison with the retrain row and Avg-Gap."""

from __future__ import annotations

import uuid
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Job, JobKind, JobStatus, Metric
from app.schemas.jobs import Comparison, ComparisonRow
from app.services.guardrails import Guardrails, guardrail_flags
from workers.engine.metrics import avg_gap

HEADLINE_COLUMNS = ["UA", "RA", "TA", "MIA-Efficacy", "test_accuracy"]
GAP_KEYS = ("UA", "MIA-Efficacy", "RA", "TA")


def metrics_for(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, float]]:
    out: dict[uuid.UUID, dict[str, float]] = defaultdict(dict)
    if not job_ids:
        return out
    for metric in session.scalars(select(Metric).where(Metric.job_id.in_(job_ids))):
        out[metric.job_id][metric.name] = metric.value
    return out


def _pick_reference(job: Job, retrains: list[Job]) -> Job | None:
    """The retrain of the same original model (same recipe) and the same seed; else the same model."""
    same_model = [r for r in retrains if r.model_id == job.model_id]
    same_seed = [r for r in same_model if r.seed == job.seed]
    candidates = same_seed or same_model
    return max(candidates, key=lambda r: r.created_at) if candidates else None


def compare(
    session: Session,
    tenant_id: uuid.UUID,
    forget_set_id: uuid.UUID,
    model_id: uuid.UUID | None,
    rails: Guardrails | None = None,
) -> Comparison:
    rails = rails or Guardrails()
    query = select(Job).where(
        Job.tenant_id == tenant_id,
        Job.forget_set_id == forget_set_id,
        Job.status == JobStatus.succeeded,
        Job.kind.in_([JobKind.retrain, JobKind.unlearn, JobKind.evaluate]),
    )
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    jobs = list(session.scalars(query.order_by(Job.created_at, Job.id)))
    metrics = metrics_for(session, [j.id for j in jobs])
    retrains = [j for j in jobs if j.kind is JobKind.retrain]
    originals = {j.model_id: metrics[j.id] for j in jobs if j.kind is JobKind.evaluate}
    rows = []
    for job in jobs:
        reference = _pick_reference(job, retrains)
        gap = None
        if reference is not None and all(
            k in metrics[job.id] and k in metrics[reference.id] for k in GAP_KEYS
        ):
            gap = avg_gap(metrics[job.id], metrics[reference.id], keys=GAP_KEYS)
        flags: list[str] = []
        if job.kind is JobKind.unlearn:
            reference_metrics = metrics[reference.id] if reference else None
            flags = guardrail_flags(metrics[job.id], originals.get(job.model_id), reference_metrics, rails)
        rows.append(
            ComparisonRow(
                flags=flags,
                job_id=job.id,
                kind=job.kind,
                method=job.method,
                model_id=job.model_id,
                output_model_id=job.output_model_id,
                seed=job.seed,
                device=(job.environment or {}).get("device"),
                metrics=metrics[job.id],
                rte_seconds=(job.timings or {}).get("method_s"),
                avg_gap=gap,
                reference_job_id=reference.id if reference else None,
            )
        )
    # Retrain rows first: they are the yardstick.
    rows.sort(key=lambda r: (r.kind is not JobKind.retrain, r.kind is not JobKind.evaluate))
    return Comparison(
        forget_set_id=forget_set_id, columns=[*HEADLINE_COLUMNS, "avg_gap", "rte_seconds"], rows=rows
    )
