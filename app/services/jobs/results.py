"""Results: a job's metrics, and the per-forget-set comparison with the retrain row and Avg-Gap.

Regression forget sets (their dataset's task is ``regression``) get their own columns
(``workers.engine.metrics.regression.REGRESSION_COLUMNS``: forget/retain/test MAE, the forget-test and
retain-test MAE of a target range, MIA-Efficacy, W1 and AIN) and an Avg-Gap over
``REGRESSION_GAP_KEYS``. W1 and AIN compare two jobs, so they are computed here, at comparison time, from
what each evaluation stored: the forget-set predictions in the job's result and its ``relearn_steps`` metric,
against the row's retrain reference; they are added to the row's ``metrics``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Dataset, ForgetSet, Job, JobStatus, Metric, Model
from app.schemas.jobs import Comparison, ComparisonRow
from app.services.jobs.guardrails import Guardrails, guardrail_flags
from workers.engine.diffusion.job_params import GENERATIVE_ARCHITECTURES
from workers.engine.job_kinds import comparison_role, kinds_compared
from workers.engine.metrics import avg_gap
from workers.engine.metrics.regression import REGRESSION_COLUMNS, REGRESSION_GAP_KEYS, comparison_metrics

HEADLINE_COLUMNS = ["UA", "RA", "TA", "MIA-Efficacy", "test_accuracy"]
GAP_KEYS = ("UA", "MIA-Efficacy", "RA", "TA")
REGRESSION = "regression"
GENERATIVE = "generative"
# Generative rows (workers.engine.diffusion.metrics, fractions in [0, 1]): UA = 1 - forget-class generation
# rate, the override and entropy of the forgotten class's samples, retained-class conditional accuracy and
# Frechet distance, cost per sample. Avg-Gap to the gold reference (the DDPM retrained without the class)
# over UA and retained accuracy.
GENERATIVE_COLUMNS = [
    "ua",
    "override_rate",
    "forget_entropy",
    "retain_accuracy",
    "fd_retain",
    "nfe_per_sample",
    "seconds_per_sample",
]
GENERATIVE_GAP_KEYS = ("ua", "retain_accuracy")


class ReferenceKey(Protocol):
    """What picking a job's retrain reads of it: the original model it started from and its seed."""

    @property
    def model_id(self) -> uuid.UUID | None: ...

    @property
    def seed(self) -> int | None: ...


def forget_set_task(session: Session, forget_set_id: uuid.UUID) -> str:
    """The task type (``classification`` / ``regression``) of the dataset a forget set belongs to."""
    forget_set = session.get(ForgetSet, forget_set_id)
    dataset = session.get(Dataset, forget_set.dataset_id) if forget_set is not None else None
    return dataset.task if dataset is not None else "classification"


def gap_keys(task: str) -> tuple[str, ...]:
    if task == GENERATIVE:
        return GENERATIVE_GAP_KEYS
    return REGRESSION_GAP_KEYS if task == REGRESSION else GAP_KEYS


def headline_columns(task: str) -> list[str]:
    if task == GENERATIVE:
        return list(GENERATIVE_COLUMNS)
    return list(REGRESSION_COLUMNS) if task == REGRESSION else list(HEADLINE_COLUMNS)


def _generative_models(session: Session, model_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    if not model_ids:
        return set()
    rows = session.execute(select(Model.id, Model.architecture).where(Model.id.in_(model_ids)))
    return {model_id for model_id, name in rows if name in GENERATIVE_ARCHITECTURES}


def with_comparison_metrics(
    task: str,
    job: Job,
    job_metrics: dict[str, float],
    reference: Job | None,
    reference_metrics: dict[str, float] | None,
) -> dict[str, float]:
    """The job's stored metrics plus, for regression, W1 and AIN against ``reference`` (its retrain)."""
    if task == GENERATIVE:
        # Time per generated sample is a timing (not reproducible), shown beside the metrics.
        seconds = (job.timings or {}).get("seconds_per_sample")
        return {**job_metrics, **({"seconds_per_sample": seconds} if seconds is not None else {})}
    if task != REGRESSION or reference is None:
        return dict(job_metrics)
    extra = comparison_metrics(job_metrics, job.result, reference_metrics, reference.result)
    return {**job_metrics, **extra}


def metrics_for(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, float]]:
    out: dict[uuid.UUID, dict[str, float]] = defaultdict(dict)
    if not job_ids:
        return out
    for metric in session.scalars(select(Metric).where(Metric.job_id.in_(job_ids))):
        out[metric.job_id][metric.name] = metric.value
    return out


def pick_reference(job: ReferenceKey, retrains: list[Job]) -> Job | None:
    """The retrain of the same original model (same recipe) and the same seed; else the same model. Also
    how a recovery audit finds its control (``app.services.jobs.controls``)."""
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
    task = forget_set_task(session, forget_set_id)
    query = select(Job).where(
        Job.tenant_id == tenant_id,
        Job.forget_set_id == forget_set_id,
        Job.status == JobStatus.succeeded,
        Job.kind.in_(kinds_compared()),
    )
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    jobs = list(session.scalars(query.order_by(Job.created_at, Job.id)))
    # A class forget set of an image dataset serves classifiers and generative models alike: the rows of
    # the kind the comparison is about (the named model's, else the generative ones when there are only
    # those) set the columns; generative rows never mix with classifier rows.
    generative = _generative_models(session, {j.model_id for j in jobs if j.model_id is not None})
    if model_id is not None:
        wanted_generative = model_id in generative
    else:
        wanted_generative = bool(jobs) and all(j.model_id in generative for j in jobs)
    if wanted_generative:
        task = GENERATIVE
    jobs = [j for j in jobs if (j.model_id in generative) == wanted_generative]
    keys = gap_keys(task)
    metrics = metrics_for(session, [j.id for j in jobs])
    # The reference rows (retrain) are the yardstick, the original rows (evaluate) the starting point of the
    # guardrails; the method rows (unlearn) are the ones judged.
    retrains = [j for j in jobs if comparison_role(j.kind) == "reference"]
    originals = {j.model_id: metrics[j.id] for j in jobs if comparison_role(j.kind) == "original"}
    rows = []
    for job in jobs:
        reference = pick_reference(job, retrains)
        gap = None
        if reference is not None and all(k in metrics[job.id] and k in metrics[reference.id] for k in keys):
            gap = avg_gap(metrics[job.id], metrics[reference.id], keys=keys)
        flags: list[str] = []
        if comparison_role(job.kind) == "method":
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
                metrics=with_comparison_metrics(
                    task, job, metrics[job.id], reference, metrics[reference.id] if reference else None
                ),
                rte_seconds=(job.timings or {}).get("method_s"),
                avg_gap=gap,
                reference_job_id=reference.id if reference else None,
                grid_url=f"/v1/jobs/{job.id}/grid.png" if (job.result or {}).get("grids") else None,
            )
        )
    # Retrain rows first: they are the yardstick.
    rows.sort(key=lambda r: (comparison_role(r.kind) != "reference", comparison_role(r.kind) != "original"))
    return Comparison(
        forget_set_id=forget_set_id,
        task=task,
        columns=[*headline_columns(task), "avg_gap", "rte_seconds"],
        rows=rows,
    )
