"""Campaigns: a grid of methods x forget sets x seeds on one original model, run as ordinary jobs.

Each forget set gets one evaluation of the original and, per seed, one retrain oracle; both are cached by
content hash (app.services.jobs.submission.result_cache_key), so a later campaign of the tenant on the same
inputs reuses them. Methods with a grid are first tuned on the sweep forget set; the setting with the
smallest mean Avg-Gap is then used on every forget set. ``advance`` moves a campaign through its stages
and is called by the reaper's periodic tick.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import statistics
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.core.problems import DomainError, NotFound, Unprocessable
from app.core.security import Principal, Scope
from app.models import Campaign, CampaignStatus, Dataset, ForgetSet, Job, JobKind, JobStatus, Model
from app.models.base import utcnow
from app.models.job import TERMINAL_STATUSES
from app.schemas.campaigns import (
    MAX_GRID_CANDIDATES,
    CampaignCreate,
    CampaignProgress,
    CampaignTable,
    ForgetSetRef,
    MethodEntry,
    Stat,
    TableRow,
)
from app.schemas.jobs import JobCreate
from app.schemas.resources import ForgetSetCreate, IndicesSpec
from app.services.compliance import audit
from app.services.data.datasets import get_dataset
from app.services.data.forget_sets import create_forget_set, get_forget_set
from app.services.data.models import get_architecture, get_model
from app.services.jobs import lifecycle as job_service
from app.services.jobs.guardrails import Guardrails, guardrail_flags
from app.services.jobs.results import (
    REGRESSION,
    forget_set_task,
    gap_keys,
    metrics_for,
    with_comparison_metrics,
)
from app.services.jobs.submission import build_job, find_reusable, method_spec, validate_params
from app.services.ops import quotas
from app.storage import ArtifactStore
from workers.engine.datasets.poisoned import PoisonedConfig, poison_indices
from workers.engine.metrics import avg_gap
from workers.engine.metrics.regression import REGRESSION_COLUMNS
from workers.engine.task_types import TaskType

CANARY_DATASET = "gaussian_poisoned"
STAGE_SEARCH = "search"
STAGE_TUNING = "tuning"
STAGE_MAIN = "main"
STAGE_DONE = "done"
ROLE_ORIGINAL = "original"
ROLE_RETRAIN = "retrain"
ROLE_METHOD = "method"
ROLE_SEARCH = "search"
TABLE_METRICS = ("UA", "RA", "TA", "MIA-Efficacy")
# Regression campaigns (the model's dataset is a regression dataset): Deep Regression Unlearning's metrics;
# W1 and AIN are computed per cell against the retrain of the same seed (the original row: against every
# seed's retrain), see app.services.jobs.results.with_comparison_metrics.
REGRESSION_TABLE_METRICS = REGRESSION_COLUMNS
_PER_REFERENCE = ("W1", "AIN")


def _campaign_task(session: Session, campaign: Campaign) -> str:
    forget_sets = campaign.spec.get("forget_set_ids") or []
    sweep = campaign.spec.get("sweep_forget_set_id")
    first = forget_sets[0] if forget_sets else sweep
    return forget_set_task(session, uuid.UUID(first)) if first else "classification"


def candidates(entry: MethodEntry) -> list[dict[str, Any]]:
    """The parameter settings a method entry stands for: its params, times its grid's product."""
    if not entry.grid:
        return [dict(entry.params)]
    keys = sorted(entry.grid)
    return [
        {**entry.params, **dict(zip(keys, values, strict=True))}
        for values in itertools.product(*(entry.grid[k] for k in keys))
    ]


def _resolve_forget_set(
    session: Session, store: ArtifactStore, principal: Principal, model: Model, ref: ForgetSetRef
) -> uuid.UUID:
    if ref.forget_set_id is not None:
        forget_set = get_forget_set(session, principal.tenant_id, ref.forget_set_id)
        if model.dataset_id is not None and forget_set.dataset_id != model.dataset_id:
            raise Unprocessable(
                f"forget set {forget_set.id} is on another dataset than the model", code="dataset-mismatch"
            )
        return forget_set.id
    if model.dataset_id is None:
        raise Unprocessable(
            "the model has no dataset: reference existing forget sets by id", code="missing-dataset"
        )
    dataset = get_dataset(session, principal.tenant_id, model.dataset_id)
    spec = _canary_spec(dataset) if ref.canary else ref.spec
    assert spec is not None
    name = ref.name or ("canary" if ref.canary else None)
    request = ForgetSetCreate(dataset_id=dataset.id, name=name, spec=spec)
    return create_forget_set(session, store, principal.tenant_id, request, dataset).id


def _canary_spec(dataset: Dataset) -> IndicesSpec:
    """The poisoned train indices of a ``gaussian_poisoned`` dataset, from its recorded config alone."""
    if dataset.builtin != CANARY_DATASET:
        raise Unprocessable(
            f"a canary forget set needs a model trained on the built-in '{CANARY_DATASET}' dataset; this"
            f" model's dataset is {dataset.builtin or 'uploaded'}",
            code="not-a-canary-dataset",
        )
    config = PoisonedConfig.model_validate(dataset.config or {})
    indices = poison_indices(dataset.n_train, config.fraction, config.seed)
    return IndicesSpec(kind="indices", indices=[int(i) for i in indices])


class _Submitter:
    """Builds (or reuses) the jobs of a campaign's cells inside the caller's transaction."""

    def __init__(
        self, session: Session, principal: Principal, settings: Settings, campaign: Campaign
    ) -> None:
        self.session = session
        self.principal = principal
        self.settings = settings
        self.campaign = campaign
        self.new_jobs: list[uuid.UUID] = []

    def job(self, body: JobCreate) -> Job:
        job = build_job(self.session, self.principal, body, self.settings)
        if job.cache_key is not None:
            cached = find_reusable(self.session, self.principal.tenant_id, job.cache_key)
            if cached is not None:
                return cached
        job.campaign_id = self.campaign.id
        self.session.add(job)
        self.session.flush()
        job_service.add_event(
            self.session, job.id, "queued", 0, {"kind": job.kind, "campaign": str(self.campaign.id)}
        )
        self.new_jobs.append(job.id)
        return job

    def cell(
        self,
        job: Job,
        stage: str,
        role: str,
        forget_set_id: uuid.UUID | None,
        seed: int | None,
        label: str | None = None,
        candidate: int | None = None,
    ) -> dict[str, Any]:
        return {
            "job_id": str(job.id),
            "stage": stage,
            "role": role,
            "label": label,
            "candidate": candidate,
            "forget_set_id": str(forget_set_id) if forget_set_id else None,
            "seed": seed,
        }

    def oracle_cells(self, stage: str, forget_set_id: uuid.UUID, seeds: list[int]) -> list[dict[str, Any]]:
        spec = self.campaign.spec
        common = {
            "model_id": self.campaign.model_id,
            "forget_set_id": forget_set_id,
            "device": spec["device"],
        }
        cells = [
            self.cell(
                self.job(JobCreate(kind=JobKind.evaluate, seed=0, **common)),
                stage,
                ROLE_ORIGINAL,
                forget_set_id,
                None,
            )
        ]
        for seed in seeds:
            retrain = self.job(
                JobCreate(kind=JobKind.retrain, params=spec["retrain_params"], seed=seed, **common)
            )
            cells.append(self.cell(retrain, stage, ROLE_RETRAIN, forget_set_id, seed))
        return cells

    def method_cell(
        self,
        stage: str,
        entry: MethodEntry,
        params: dict[str, Any],
        candidate: int | None,
        forget_set_id: uuid.UUID,
        seed: int,
    ) -> dict[str, Any]:
        body = JobCreate(
            kind=JobKind.unlearn,
            method=entry.method,
            params=params,
            seed=seed,
            model_id=self.campaign.model_id,
            forget_set_id=forget_set_id,
            device=self.campaign.spec["device"],
        )
        return self.cell(self.job(body), stage, ROLE_METHOD, forget_set_id, seed, entry.name, candidate)


def _entries(campaign: Campaign) -> list[MethodEntry]:
    return [MethodEntry.model_validate(m) for m in campaign.spec["methods"]]


def _submit_tuning(submitter: _Submitter) -> list[dict[str, Any]]:
    campaign = submitter.campaign
    sweep_set = uuid.UUID(campaign.spec["sweep_forget_set_id"])
    seeds = campaign.spec["seeds"][:1]  # tune on the first seed, as the protocol tunes once
    cells = submitter.oracle_cells(STAGE_TUNING, sweep_set, seeds)
    for entry in _entries(campaign):
        if not entry.grid:
            continue
        for index, params in enumerate(candidates(entry)):
            for seed in seeds:
                cells.append(submitter.method_cell(STAGE_TUNING, entry, params, index, sweep_set, seed))
    return cells


def _submit_main(submitter: _Submitter) -> list[dict[str, Any]]:
    campaign = submitter.campaign
    seeds = campaign.spec["seeds"]
    cells: list[dict[str, Any]] = []
    for forget_set_id in (uuid.UUID(f) for f in campaign.spec["forget_set_ids"]):
        cells += submitter.oracle_cells(STAGE_MAIN, forget_set_id, seeds)
        for entry in _entries(campaign):
            params = campaign.chosen_params.get(entry.name, {}).get("params", entry.params)
            for seed in seeds:
                cells.append(submitter.method_cell(STAGE_MAIN, entry, params, None, forget_set_id, seed))
    return cells


# Campaign cells count toward the tenant's active-jobs quota (LETHE_MAX_ACTIVE_JOBS_PER_TENANT) like any job:
# creation is refused when its first stage would not fit (or a later stage could never fit), and a later
# stage that would not fit when its turn comes stops the campaign with the reason in spec["failure"].
QUOTA_CODE = "too-many-active-jobs"


def _quota_problem(
    session: Session, tenant_id: uuid.UUID, settings: Settings, requested: int, stage: str, *, flushed: bool
) -> DomainError:
    """429 naming the tenant's active jobs (before this stage), the limit and the stage's new jobs."""
    limit = settings.max_active_jobs_per_tenant
    assert limit is not None
    active = quotas.active_jobs(session, tenant_id) - (requested if flushed else 0)
    if requested > limit:
        advice = (
            "it can never run at once: split the campaign (fewer methods, forget sets, seeds or grid"
            " candidates)"
        )
        headers = {}
    else:
        advice = "wait for some jobs to finish or cancel them, then retry"
        headers = {"Retry-After": str(quotas.RETRY_AFTER_SECONDS)}
    needs = str(requested) if flushed else f"up to {requested}"  # later stages: before cache reuse
    return quotas.TooManyRequests(
        f"this campaign's {stage} stage needs {needs} new jobs; the tenant has {active} queued or running"
        f" jobs and the limit is {limit} (LETHE_MAX_ACTIVE_JOBS_PER_TENANT): {advice}",
        code=QUOTA_CODE,
        headers=headers,
        errors=[{"active": active, "limit": limit, "requested": requested, "stage": stage}],
    )


def _admit(session: Session, tenant_id: uuid.UUID, settings: Settings, requested: int, stage: str) -> None:
    """Count a stage's new jobs, already flushed, toward the quotas (app.services.ops.quotas, under the tenant
    lock it takes). A stage that only reuses cached jobs creates nothing and is never refused."""
    if not requested:
        return
    try:
        quotas.check_active_jobs(session, tenant_id, settings)
    except quotas.TooManyRequests as exc:
        raise _quota_problem(session, tenant_id, settings, requested, stage, flushed=True) from exc


def _later_stages(body: CampaignCreate, first_stage: str) -> dict[str, int]:
    """Upper bounds of the new jobs of the stages after the first (cached retrains and evaluations can make
    them smaller, never larger)."""
    seeds, methods = len(body.seeds), len(body.methods)
    forget_sets = len(body.forget_sets)  # the fixed ones plus one searched set per search
    sizes = {STAGE_MAIN: forget_sets * (1 + seeds * (1 + methods))}
    if first_stage == STAGE_SEARCH and any(entry.grid for entry in body.methods):
        # the sweep set's original and first-seed retrain, and each grid candidate on the first seed
        sizes[STAGE_TUNING] = 2 + sum(len(candidates(entry)) for entry in body.methods if entry.grid)
    return sizes


def create(
    session: Session,
    store: ArtifactStore,
    principal: Principal,
    body: CampaignCreate,
    settings: Settings,
    request_id: str | None,
) -> tuple[Campaign, list[uuid.UUID]]:
    """Validate the whole grid, create the campaign and its first stage's jobs (not committed)."""
    model = get_model(session, principal.tenant_id, body.model_id)
    task = get_architecture(model.architecture).task
    if task is TaskType.generative:
        raise Unprocessable(
            "campaigns support classification and regression models; compare generative unlearning with"
            " retrain / unlearn / evaluate jobs on a class forget set (GET /v1/forget-sets/{id}/comparison)",
            code="task-mismatch",
        )
    for entry in body.methods:
        options = candidates(entry)
        if len(options) > MAX_GRID_CANDIDATES:
            raise Unprocessable(
                f"method '{entry.name}' has {len(options)} grid candidates;"
                f" the limit is {MAX_GRID_CANDIDATES}",
                code="grid-too-large",
            )
    fixed_refs = [ref for ref in body.forget_sets if ref.worst_case is None]
    searches = [ref for ref in body.forget_sets if ref.worst_case is not None]
    forget_set_ids = [_resolve_forget_set(session, store, principal, model, ref) for ref in fixed_refs]
    if len(set(forget_set_ids)) != len(forget_set_ids):
        raise Unprocessable("the same forget set is listed twice", code="duplicate-forget-sets")
    sweep_id = (
        _resolve_forget_set(session, store, principal, model, body.sweep_forget_set)
        if body.sweep_forget_set
        else None
    )
    spec = body.model_dump(mode="json", exclude={"forget_sets", "sweep_forget_set"})
    spec["forget_set_ids"] = [str(f) for f in forget_set_ids]
    spec["sweep_forget_set_id"] = str(sweep_id) if sweep_id else None
    tuning = any(entry.grid for entry in body.methods)
    first_stage = STAGE_SEARCH if searches else (STAGE_TUNING if tuning else STAGE_MAIN)
    limit = settings.max_active_jobs_per_tenant
    if limit is not None and first_stage != STAGE_MAIN:
        for stage, size in _later_stages(body, first_stage).items():
            if size > limit:
                raise _quota_problem(session, principal.tenant_id, settings, size, stage, flushed=False)
    campaign = Campaign(
        tenant_id=principal.tenant_id,
        name=body.name,
        model_id=model.id,
        status=CampaignStatus.running,
        stage=first_stage,
        spec=spec,
        chosen_params={},
        cells=[],
        version=1,
    )
    session.add(campaign)
    session.flush()
    submitter = _Submitter(session, principal, settings, campaign)
    # Validate every candidate of every method up front: a bad setting fails the request, not a cell.
    for entry in body.methods:
        method = method_spec(JobKind.unlearn, entry.method, task)
        for params in candidates(entry):
            validate_params(method, params, JobKind.unlearn, task)
    if searches:
        campaign.cells = [
            submitter.cell(
                submitter.job(
                    JobCreate(
                        kind=JobKind.worst_case_search,
                        model_id=model.id,
                        params=ref.worst_case or {},
                        seed=body.seeds[0],
                        device=body.device,
                    )
                ),
                STAGE_SEARCH,
                ROLE_SEARCH,
                None,
                body.seeds[0],
                label=ref.name,
            )
            for ref in searches
        ]
    else:
        campaign.cells = _submit_tuning(submitter) if tuning else _submit_main(submitter)
    _admit(session, principal.tenant_id, settings, len(submitter.new_jobs), first_stage)
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="campaign.create",
        resource_type="campaign",
        resource_id=str(campaign.id),
        request_id=request_id,
        details={
            "methods": [m.name for m in body.methods],
            "forget_sets": spec["forget_set_ids"],
            "seeds": body.seeds,
            "jobs_created": len(submitter.new_jobs),
            "cells": len(campaign.cells),
        },
    )
    return campaign, submitter.new_jobs


def get_campaign(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.tenant_id != tenant_id:
        raise NotFound(f"campaign {campaign_id} not found", code="campaign-not-found")
    return campaign


def _cell_jobs(session: Session, cells: list[dict[str, Any]]) -> dict[str, Job]:
    ids = [uuid.UUID(c["job_id"]) for c in cells]
    if not ids:
        return {}
    return {str(j.id): j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def progress(session: Session, campaign: Campaign) -> CampaignProgress:
    jobs = _cell_jobs(session, campaign.cells)
    counts = Counter(jobs[c["job_id"]].status.value for c in campaign.cells if c["job_id"] in jobs)
    done = sum(counts[s.value] for s in TERMINAL_STATUSES)
    running = sum(
        float((jobs[c["job_id"]].progress or {}).get("fraction") or 0.0)
        for c in campaign.cells
        if jobs.get(c["job_id"]) and jobs[c["job_id"]].status is JobStatus.running
    )
    total = len(campaign.cells)
    expected = total
    if campaign.stage in (STAGE_SEARCH, STAGE_TUNING):
        # the main stage is not submitted yet: count it so progress does not jump back
        spec = campaign.spec
        per_set = 1 + len(spec["seeds"]) * (1 + len(spec["methods"]))
        searching = campaign.stage == STAGE_SEARCH
        searches = sum(c["role"] == ROLE_SEARCH for c in campaign.cells) if searching else 0
        expected += per_set * (len(spec["forget_set_ids"]) + searches)
    fraction = (done + running) / expected if expected else 1.0
    return CampaignProgress(total=expected, by_status=dict(counts), fraction=round(min(fraction, 1.0), 4))


def _mean_gap(gaps: list[float]) -> float:
    return statistics.fmean(gaps) if gaps else float("inf")


def _choose(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Per tuned method, the candidate with the smallest mean Avg-Gap to the retrain of the same seed."""
    cells = [c for c in campaign.cells if c["stage"] == STAGE_TUNING]
    jobs = _cell_jobs(session, cells)
    metrics = metrics_for(session, [j.id for j in jobs.values()])
    keys = gap_keys(forget_set_task(session, uuid.UUID(campaign.spec["sweep_forget_set_id"])))
    retrain_by_seed = {
        c["seed"]: metrics.get(uuid.UUID(c["job_id"]), {}) for c in cells if c["role"] == ROLE_RETRAIN
    }
    chosen: dict[str, Any] = {}
    for entry in _entries(campaign):
        if not entry.grid:
            continue
        options = candidates(entry)
        gaps: dict[int, list[float]] = {i: [] for i in range(len(options))}
        for cell in cells:
            if cell["role"] != ROLE_METHOD or cell["label"] != entry.name:
                continue
            result = metrics.get(uuid.UUID(cell["job_id"]), {})
            reference = retrain_by_seed.get(cell["seed"], {})
            if all(k in result and k in reference for k in keys):
                gaps[cell["candidate"]].append(avg_gap(result, reference, keys=keys))
        best = min(gaps, key=lambda i: (_mean_gap(gaps[i]), i))
        chosen[entry.name] = {
            "params": options[best],
            "candidate": best,
            "avg_gap": None if not gaps[best] else _mean_gap(gaps[best]),
            "tried": [
                {"params": options[i], "avg_gap": None if not gaps[i] else _mean_gap(gaps[i])} for i in gaps
            ],
        }
    return chosen


def advance(factory: sessionmaker[Session], campaign_id: uuid.UUID, settings: Settings) -> list[uuid.UUID]:
    """Move a campaign on when its current stage has finished; returns jobs to publish after commit."""
    with session_scope(factory) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None or campaign.status is not CampaignStatus.running:
            return []
        jobs = _cell_jobs(session, campaign.cells)
        if any(
            jobs[c["job_id"]].status not in TERMINAL_STATUSES for c in campaign.cells if c["job_id"] in jobs
        ):
            return []
        version = campaign.version
        principal = Principal(tenant_id=campaign.tenant_id, key_id="campaign", scopes=frozenset(Scope))
        submitter = _Submitter(session, principal, settings, campaign)
        spec = dict(campaign.spec)
        if campaign.stage == STAGE_SEARCH:
            spec = _adopt_searched_sets(campaign, jobs)
            campaign.spec = spec  # the submitters below read the searched forget sets from it
            tuning = any(entry.grid for entry in _entries(campaign))
            stage_cells = _submit_tuning(submitter) if tuning else _submit_main(submitter)
            new_stage = STAGE_TUNING if tuning else STAGE_MAIN
            cells, status, new_jobs = campaign.cells + stage_cells, CampaignStatus.running, submitter.new_jobs
        elif campaign.stage == STAGE_TUNING:
            campaign.chosen_params = _choose(session, campaign)
            cells = campaign.cells + _submit_main(submitter)
            new_stage, status, new_jobs = STAGE_MAIN, CampaignStatus.running, submitter.new_jobs
        else:
            cells, new_stage, status, new_jobs = campaign.cells, STAGE_DONE, CampaignStatus.finished, []
        try:
            _admit(session, campaign.tenant_id, settings, len(new_jobs), new_stage)
        except DomainError as exc:
            session.rollback()  # the stage's jobs are not created
            _stop_over_quota(session, campaign_id, version, new_stage, exc)
            return []
        # Conditional on the version so two concurrent ticks cannot both advance the stage.
        changed = session.execute(
            update(Campaign)
            .where(Campaign.id == campaign.id, Campaign.version == version)
            .values(
                stage=new_stage,
                status=status,
                spec=spec,
                cells=cells,
                chosen_params=campaign.chosen_params,
                version=version + 1,
                finished_at=utcnow() if status is CampaignStatus.finished else None,
            )
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            return []
        return new_jobs


def _stop_over_quota(
    session: Session, campaign_id: uuid.UUID, version: int, stage: str, exc: DomainError
) -> None:
    """End a campaign whose next stage the quotas refused: status cancelled (nothing more will run), the
    refusal in spec["failure"] (code, detail, and active / limit / requested for the jobs quota)."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.version != version:
        return  # another tick got here first
    failure: dict[str, Any] = {"code": exc.code, "stage": stage, "detail": exc.detail}
    for extra in exc.errors or []:
        failure.update(extra)
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.version == version)
        .values(
            status=CampaignStatus.cancelled,
            spec={**campaign.spec, "failure": failure},
            finished_at=utcnow(),
            version=version + 1,
        )
        .execution_options(synchronize_session=False)
    )


def _adopt_searched_sets(campaign: Campaign, jobs: dict[str, Job]) -> dict[str, Any]:
    """Add each finished search's forget set to the grid; a failed search is recorded and left out."""
    spec = dict(campaign.spec)
    ids = list(spec["forget_set_ids"])
    failures = []
    for cell in campaign.cells:
        if cell["role"] != ROLE_SEARCH:
            continue
        job = jobs.get(cell["job_id"])
        produced = (job.result or {}).get("forget_set_id") if job is not None else None
        if job is not None and job.status is JobStatus.succeeded and produced:
            if produced not in ids:
                ids.append(produced)
        else:
            failures.append({"job_id": cell["job_id"], "status": job.status.value if job else "missing"})
    spec["forget_set_ids"] = ids
    spec["search_failures"] = failures
    return spec


def running_campaigns(factory: sessionmaker[Session]) -> list[uuid.UUID]:
    with session_scope(factory) as session:
        return list(session.scalars(select(Campaign.id).where(Campaign.status == CampaignStatus.running)))


def cancel(session: Session, campaign: Campaign, job_ids: list[uuid.UUID] | None = None) -> int:
    """Cancel the campaign's own unfinished cells (all, or the given ones); shared cached jobs of other
    campaigns are left alone. Returns how many jobs were asked to stop."""
    wanted = {str(j) for j in job_ids} if job_ids is not None else None
    jobs = _cell_jobs(session, campaign.cells)
    count = 0
    for cell in campaign.cells:
        job = jobs.get(cell["job_id"])
        if job is None or job.status in TERMINAL_STATUSES or job.campaign_id != campaign.id:
            continue
        if wanted is not None and cell["job_id"] not in wanted:
            continue
        job_service.request_cancel(session, job)
        count += 1
    if wanted is None:
        campaign.status = CampaignStatus.cancelled
        campaign.finished_at = utcnow()
        campaign.version += 1
    return count


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat(mean=None, std=None, n=0)
    return Stat(
        mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0, n=len(values)
    )


def _cell_versions(
    task: str,
    job: Job,
    found: dict[str, float],
    seed: int | None,
    retrains: dict[Any, dict[str, float] | None],
    retrain_jobs: dict[Any, Job | None],
) -> list[dict[str, float]]:
    """A cell's metrics with W1/AIN against its seed's retrain (the original, seed None: one version per
    seed's retrain); just the stored metrics when there is nothing to compare with."""
    seeds = list(retrains) if seed is None else [seed]
    versions = [
        with_comparison_metrics(task, job, found, retrain_jobs.get(s), retrains.get(s))
        for s in seeds
        if retrains.get(s) is not None
    ]
    return versions or [found]


def table(session: Session, campaign: Campaign) -> CampaignTable:
    """The papers' table: per forget set, original, retrain and every method, mean ± std over seeds."""
    rails = Guardrails.model_validate(campaign.spec.get("guardrails") or {})
    task = _campaign_task(session, campaign)
    keys = gap_keys(task)
    table_metrics = REGRESSION_TABLE_METRICS if task == REGRESSION else TABLE_METRICS
    cells = [c for c in campaign.cells if c["stage"] == STAGE_MAIN]
    jobs = _cell_jobs(session, cells)
    metrics = metrics_for(session, [j.id for j in jobs.values()])
    names = {}
    for forget_set in session.scalars(
        select(ForgetSet).where(ForgetSet.id.in_([uuid.UUID(f) for f in campaign.spec["forget_set_ids"]]))
    ):
        names[str(forget_set.id)] = forget_set.name
    rows: list[TableRow] = []
    for forget_set_id in campaign.spec["forget_set_ids"]:
        here = [c for c in cells if c["forget_set_id"] == forget_set_id]

        def result(cell: dict[str, Any]) -> dict[str, float] | None:
            job = jobs.get(cell["job_id"])
            return metrics.get(job.id) if job is not None and job.status is JobStatus.succeeded else None

        original = next((result(c) for c in here if c["role"] == ROLE_ORIGINAL), None)
        retrains = {c["seed"]: result(c) for c in here if c["role"] == ROLE_RETRAIN}
        retrain_jobs = {c["seed"]: jobs.get(c["job_id"]) for c in here if c["role"] == ROLE_RETRAIN}

        groups: list[tuple[str, str | None, dict[str, Any] | None, list[dict[str, Any]]]] = [
            (ROLE_ORIGINAL, None, None, [c for c in here if c["role"] == ROLE_ORIGINAL]),
            (
                ROLE_RETRAIN,
                "retrain",
                campaign.spec["retrain_params"],
                [c for c in here if c["role"] == ROLE_RETRAIN],
            ),
        ]
        for entry in _entries(campaign):
            params = campaign.chosen_params.get(entry.name, {}).get("params", entry.params)
            groups.append(
                (
                    entry.name,
                    entry.method,
                    params,
                    [c for c in here if c["role"] == ROLE_METHOD and c["label"] == entry.name],
                )
            )
        for row_name, method, params, group in groups:
            values: dict[str, list[float]] = {k: [] for k in table_metrics}
            gaps: list[float] = []
            rtes: list[float] = []
            flags: set[str] = set()
            job_rows = []
            for cell in group:
                job = jobs.get(cell["job_id"])
                found = result(cell)
                cell_flags: list[str] = []
                if found is not None and job is not None:
                    versions = _cell_versions(task, job, found, cell["seed"], retrains, retrain_jobs)
                    for key in table_metrics:
                        # the stored metrics are the same in every version; W1/AIN differ per retrain seed
                        per_version = [v[key] for v in versions if key in v]
                        values[key].extend(per_version if key in _PER_REFERENCE else per_version[:1])
                    if row_name != ROLE_ORIGINAL:
                        rtes.append(float((job.timings or {}).get("method_s", 0.0)))
                    reference = retrains.get(cell["seed"]) if cell["seed"] is not None else None
                    if row_name == ROLE_RETRAIN:
                        gaps.append(0.0)
                    elif reference and all(k in found and k in reference for k in keys):
                        gaps.append(avg_gap(found, reference, keys=keys))
                    if cell["role"] == ROLE_METHOD:
                        cell_flags = guardrail_flags(found, original, reference, rails)
                elif job is not None and job.status is JobStatus.failed:
                    cell_flags = ["failed"]  # e.g. diverged to non-finite weights: no result to compare
                flags.update(cell_flags)
                job_rows.append(
                    {
                        "job_id": cell["job_id"],
                        "seed": cell["seed"],
                        "status": job.status.value if job else "missing",
                        "flags": cell_flags,
                    }
                )
            rows.append(
                TableRow(
                    forget_set_id=uuid.UUID(forget_set_id),
                    forget_set_name=names.get(forget_set_id, forget_set_id),
                    row=row_name,
                    method=method,
                    params=params,
                    metrics={k: _stat(v) for k, v in values.items()},
                    avg_gap=_stat(gaps),
                    rte_seconds=_stat(rtes),
                    flags=sorted(flags),
                    jobs=job_rows,
                )
            )
    columns = [*table_metrics, "avg_gap", "rte_seconds"]
    return CampaignTable(campaign_id=campaign.id, columns=columns, rows=rows)


def table_csv(result: CampaignTable) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["forget_set_id", "forget_set", "row", "method", "params", "seeds"]
    for column in result.columns:
        header += [f"{column}_mean", f"{column}_std"]
    writer.writerow([*header, "flags"])
    for row in result.rows:
        metric_columns = [c for c in result.columns if c in row.metrics]
        stats = [*(row.metrics[k] for k in metric_columns), row.avg_gap, row.rte_seconds]
        line: list[Any] = [
            row.forget_set_id,
            row.forget_set_name,
            row.row,
            row.method or "",
            "" if row.params is None else _compact(row.params),
            max(s.n for s in stats),
        ]
        for stat in stats:
            line += [
                "" if stat.mean is None else f"{stat.mean:.4f}",
                "" if stat.std is None else f"{stat.std:.4f}",
            ]
        writer.writerow([*line, ";".join(row.flags)])
    return buffer.getvalue()


def _compact(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))
