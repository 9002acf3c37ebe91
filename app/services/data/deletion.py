"""Deleting datasets, models, forget sets and jobs, with everything Lethe stored for them.

Semantics (``DELETE /v1/{datasets,models,forget-sets,jobs}/{id}``):

* Tenant-scoped: another tenant's resource answers 404, like every read.
* Refused with 409 ``resource-in-use`` while a queued or running job, or a running campaign, would lose
  something it uses (the job itself, its inputs, or anything derived from them): cancel it first. This holds
  with ``cascade`` too.
* Dependents: a model trained on the dataset, a forget set of it, a job that used the resource, a job's
  output model or searched forget set, a campaign that references any of them. Without ``cascade`` a
  resource that has dependents is refused with 409 ``resource-has-dependents``, listing them in ``errors``;
  ``?cascade=true`` deletes the resource and all its dependents, transitively (needs the admin scope).
* Owned data goes with its resource and is never a dependent: a job's events, metrics, epoch checkpoint and
  per-example arrays; the audit shadow models trained on a dataset; the epoch checkpoint of the job that
  produced a deleted model (it holds the same weights; the job row stays, its ``output_model_id`` cleared).
* Rows are deleted and the audit row (action ``<type>.delete``, ids of everything deleted, never forget-set
  contents) is written in one transaction. Files are deleted after the commit, each only when no remaining
  row of the tenant references it (content addressing shares identical bytes); a crash in between is
  repaired by the orphan sweep (app.services.data.artifacts.sweep_orphans).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.core.problems import Conflict, Forbidden, NotFound
from app.core.security import Principal, Scope
from app.models import (
    Campaign,
    CampaignStatus,
    Dataset,
    DeletionRequest,
    ForgetSet,
    Job,
    JobEvent,
    JobStatus,
    Metric,
    Model,
    ShadowModel,
)
from app.services.compliance import audit
from app.services.data.artifacts import chunks, delete_unreferenced, job_keys
from app.storage import ArtifactStore

ResourceType = Literal["dataset", "model", "forget_set", "job"]
ACTIVE_JOB_STATUSES = (JobStatus.queued, JobStatus.running)
MAX_LISTED = 100  # dependents listed in a 409's errors
MAX_AUDITED_IDS = 1000  # ids per type in the audit row (counts are always complete)

_TABLES: dict[str, Any] = {"dataset": Dataset, "model": Model, "forget_set": ForgetSet, "job": Job}
_NOT_FOUND = {
    "dataset": "dataset-not-found",
    "model": "model-not-found",
    "forget_set": "forget-set-not-found",
    "job": "job-not-found",
}
_LABEL = {"dataset": "dataset", "model": "model", "forget_set": "forget set", "job": "job"}


class DeletedRows(BaseModel):
    datasets: list[uuid.UUID] = Field(default_factory=list)
    models: list[uuid.UUID] = Field(default_factory=list)
    forget_sets: list[uuid.UUID] = Field(default_factory=list)
    jobs: list[uuid.UUID] = Field(default_factory=list)
    campaigns: list[uuid.UUID] = Field(default_factory=list)
    shadow_models: list[uuid.UUID] = Field(
        default_factory=list, description="Audit shadow models trained on a deleted dataset."
    )


class DeletionReport(BaseModel):
    resource_type: ResourceType
    id: uuid.UUID
    cascade: bool
    deleted: DeletedRows
    artifacts_deleted: int = Field(
        description="Stored files removed (weights, masks, arrays, checkpoints...)."
    )
    bytes_freed: int
    artifacts_shared: int = Field(
        description="Files kept because another remaining row of the tenant stores the same content."
    )
    artifacts_deferred: int = Field(
        description="Files left to the orphan sweep (stored again meanwhile, or not removable right now)."
    )
    audit_event_id: int


@dataclass
class _Closure:
    """The root and everything that depends on it (transitively), each with why it depends."""

    tenant_id: uuid.UUID
    datasets: dict[uuid.UUID, Dataset] = field(default_factory=dict)
    models: dict[uuid.UUID, Model] = field(default_factory=dict)
    forget_sets: dict[uuid.UUID, ForgetSet] = field(default_factory=dict)
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)
    campaigns: dict[uuid.UUID, Campaign] = field(default_factory=dict)
    shadows: dict[uuid.UUID, ShadowModel] = field(default_factory=dict)
    dependents: list[dict[str, Any]] = field(default_factory=list)

    def table(self, kind: str) -> dict[uuid.UUID, Any]:
        tables: dict[str, dict[uuid.UUID, Any]] = {
            "dataset": self.datasets,
            "model": self.models,
            "forget_set": self.forget_sets,
            "job": self.jobs,
            "campaign": self.campaigns,
        }
        return tables[kind]


class _CampaignIndex:
    """Which campaigns reference a model, forget set or job (grids live in JSON, so read them once)."""

    def __init__(self, session: Session, tenant_id: uuid.UUID) -> None:
        self.by_ref: dict[tuple[str, str], list[Campaign]] = defaultdict(list)
        for campaign in session.scalars(select(Campaign).where(Campaign.tenant_id == tenant_id)):
            refs: set[tuple[str, str]] = {("model", str(campaign.model_id))}
            spec = campaign.spec or {}
            for fs in spec.get("forget_set_ids") or []:
                refs.add(("forget_set", str(fs)))
            if spec.get("sweep_forget_set_id"):
                refs.add(("forget_set", str(spec["sweep_forget_set_id"])))
            for cell in campaign.cells or []:
                if cell.get("job_id"):
                    refs.add(("job", str(cell["job_id"])))
                if cell.get("forget_set_id"):
                    refs.add(("forget_set", str(cell["forget_set_id"])))
            for ref in refs:
                self.by_ref[ref].append(campaign)

    def referencing(self, kind: str, ids: Iterable[uuid.UUID]) -> list[Campaign]:
        return [c for i in ids for c in self.by_ref.get((kind, str(i)), [])]


def _in(session: Session, entity: Any, column: Any, ids: Iterable[Any], tenant_id: uuid.UUID) -> list[Any]:
    rows: list[Any] = []
    for chunk in chunks(sorted(ids)):
        rows += session.scalars(select(entity).where(entity.tenant_id == tenant_id, column.in_(chunk)))
    return rows


def _collect(session: Session, tenant_id: uuid.UUID, kind: str, root: Any) -> _Closure:
    closure = _Closure(tenant_id=tenant_id)
    closure.table(kind)[root.id] = root
    frontier: dict[str, set[uuid.UUID]] = defaultdict(set)
    frontier[kind].add(root.id)
    campaigns: _CampaignIndex | None = None

    def add(row_kind: str, row: Any, reason: str, found: dict[str, set[uuid.UUID]]) -> None:
        table = closure.table(row_kind)
        if row.id in table:
            return
        table[row.id] = row
        entry: dict[str, Any] = {"resource_type": row_kind, "id": str(row.id), "reason": reason}
        if row_kind in ("job", "campaign"):
            entry["status"] = row.status.value
        closure.dependents.append(entry)
        found[row_kind].add(row.id)

    while any(frontier.values()):
        found: dict[str, set[uuid.UUID]] = defaultdict(set)
        if ids := frontier["dataset"]:
            for model in _in(session, Model, Model.dataset_id, ids, tenant_id):
                add("model", model, f"trained on dataset {model.dataset_id}", found)
            for forget_set in _in(session, ForgetSet, ForgetSet.dataset_id, ids, tenant_id):
                add("forget_set", forget_set, f"a forget set of dataset {forget_set.dataset_id}", found)
            for job in _in(session, Job, Job.dataset_id, ids, tenant_id):
                add("job", job, f"ran on dataset {job.dataset_id}", found)
            shas = {closure.datasets[i].sha256 for i in ids}
            for shadow in _in(session, ShadowModel, ShadowModel.dataset_sha256, shas, tenant_id):
                closure.shadows[shadow.id] = shadow  # owned: regenerable audit cache of this data
        if ids := frontier["model"]:
            for job in _in(session, Job, Job.model_id, ids, tenant_id):
                add("job", job, f"ran on model {job.model_id}", found)
            campaigns = campaigns or _CampaignIndex(session, tenant_id)
            for campaign in campaigns.referencing("model", ids):
                add("campaign", campaign, f"campaign on model {campaign.model_id}", found)
        if ids := frontier["forget_set"]:
            for job in _in(session, Job, Job.forget_set_id, ids, tenant_id):
                add("job", job, f"ran on forget set {job.forget_set_id}", found)
            campaigns = campaigns or _CampaignIndex(session, tenant_id)
            for campaign in campaigns.referencing("forget_set", ids):
                add("campaign", campaign, "campaign using a deleted forget set", found)
        if ids := frontier["job"]:
            outputs = {j.output_model_id for i in ids if (j := closure.jobs[i]).output_model_id is not None}
            for model in _in(session, Model, Model.job_id, ids, tenant_id) + _in(
                session, Model, Model.id, outputs, tenant_id
            ):
                add("model", model, f"output of job {model.job_id}", found)
            for forget_set in _in(session, ForgetSet, ForgetSet.job_id, ids, tenant_id):
                add("forget_set", forget_set, f"found by search job {forget_set.job_id}", found)
            campaigns = campaigns or _CampaignIndex(session, tenant_id)
            for campaign in campaigns.referencing("job", ids):
                add("campaign", campaign, "campaign with a deleted job as a cell", found)
        frontier = found
    return closure


def _refuse_if_active(closure: _Closure, kind: str, root_id: uuid.UUID) -> None:
    active = [
        {"resource_type": "job", "id": str(j.id), "status": j.status.value}
        for j in closure.jobs.values()
        if j.status in ACTIVE_JOB_STATUSES
    ]
    active += [
        {"resource_type": "campaign", "id": str(c.id), "status": c.status.value}
        for c in closure.campaigns.values()
        if c.status is CampaignStatus.running
    ]
    if not active:
        return
    label = _LABEL[kind]
    if kind == "job" and active[0]["id"] == str(root_id):
        detail = (
            f"job {root_id} is {active[0]['status']}: cancel it (POST /v1/jobs/{root_id}/cancel) and"
            " delete it once it has stopped"
        )
    else:
        detail = (
            f"{label} {root_id} is in use by {len(active)} queued or running job(s) / running campaign(s):"
            " cancel them (POST /v1/jobs/{id}/cancel, POST /v1/campaigns/{id}/cancel) and retry once they"
            " have stopped"
        )
    raise Conflict(detail, code="resource-in-use", errors=active[:MAX_LISTED])


def _refuse_if_evidence(session: Session, closure: _Closure, kind: str, root_id: uuid.UUID) -> None:
    """Compliance records are kept with their inputs: nothing a deletion request used (its model, forget set
    or jobs, nor anything those depend on) may go, not even with ``?cascade=true``."""
    job_ids = {str(job_id) for job_id in closure.jobs}
    held = []
    requests = session.scalars(select(DeletionRequest).where(DeletionRequest.tenant_id == closure.tenant_id))
    for request in requests:
        used_jobs = {str(entry.get("job_id")) for entry in (request.jobs or {}).values()}
        if (
            request.model_id in closure.models
            or request.forget_set_id in closure.forget_sets
            or used_jobs & job_ids
        ):
            held.append(
                {"resource_type": "deletion_request", "id": str(request.id), "status": request.status}
            )
    if held:
        raise Conflict(
            f"{_LABEL[kind]} {root_id} is evidence for {len(held)} deletion request(s): compliance records"
            " keep their inputs and jobs, so it cannot be deleted (not even with ?cascade=true)",
            code="resource-held-by-compliance-record",
            errors=held[:MAX_LISTED],
        )


def _refuse_dependents(closure: _Closure, kind: str, root_id: uuid.UUID) -> None:
    if not closure.dependents:
        return
    counts: dict[str, int] = defaultdict(int)
    for entry in closure.dependents:
        counts[entry["resource_type"]] += 1
    summary = ", ".join(f"{n} {t.replace('_', ' ')}(s)" for t, n in sorted(counts.items()))
    raise Conflict(
        f"{_LABEL[kind]} {root_id} has {len(closure.dependents)} dependent resource(s) ({summary}): delete"
        " them first, or repeat with ?cascade=true (admin scope) to delete it together with all of them",
        code="resource-has-dependents",
        errors=closure.dependents[:MAX_LISTED],
    )


def _delete_rows(session: Session, entity: Any, ids: Iterable[uuid.UUID]) -> None:
    for chunk in chunks(sorted(ids)):
        session.execute(
            delete(entity).where(entity.id.in_(chunk)).execution_options(synchronize_session=False)
        )


def _producer_checkpoints(session: Session, closure: _Closure) -> list[str]:
    """Jobs outside the closure that produced a deleted model: drop their link and epoch checkpoint (the
    checkpoint holds the model's weights); the job row and its metrics stay."""
    model_ids = set(closure.models)
    producers = {m.job_id for m in closure.models.values() if m.job_id is not None}
    keys: list[str] = []
    rows: list[Job] = []
    for chunk in chunks(sorted(model_ids)):
        rows += session.scalars(
            select(Job).where(Job.tenant_id == closure.tenant_id, Job.output_model_id.in_(chunk))
        )
    rows += _in(session, Job, Job.id, producers - {j.id for j in rows}, closure.tenant_id)
    for job in rows:
        if job.id in closure.jobs:
            continue
        if job.checkpoint_key:
            keys.append(job.checkpoint_key)
        values: dict[str, Any] = {
            "checkpoint_key": None,
            "checkpoint_epoch": None,
            "version": Job.version + 1,
        }
        if job.output_model_id in model_ids:
            values["output_model_id"] = None
        session.execute(
            update(Job).where(Job.id == job.id).values(**values).execution_options(synchronize_session=False)
        )
    return keys


def _artifact_keys(closure: _Closure) -> list[str]:
    keys: list[str] = [d.storage_key for d in closure.datasets.values()]
    for model in closure.models.values():
        keys.append(model.storage_key)
        if model.mask_key:
            keys.append(model.mask_key)
    keys += [f.scores_key for f in closure.forget_sets.values() if f.scores_key]
    for job in closure.jobs.values():
        keys += job_keys(job)
    keys += [s.storage_key for s in closure.shadows.values()]
    return keys


def _deleted(closure: _Closure) -> DeletedRows:
    return DeletedRows(
        datasets=sorted(closure.datasets),
        models=sorted(closure.models),
        forget_sets=sorted(closure.forget_sets),
        jobs=sorted(closure.jobs),
        campaigns=sorted(closure.campaigns),
        shadow_models=sorted(closure.shadows),
    )


def _lock_root(session: Session, kind: str, tenant_id: uuid.UUID, root_id: uuid.UUID) -> Any:
    # FOR UPDATE (Postgres): a concurrent insert referencing the row (a job on this model) either commits
    # before the dependents are read, or waits and then fails its foreign key. SQLite: BEGIN IMMEDIATE.
    entity = _TABLES[kind]
    row = session.scalar(
        select(entity).where(entity.id == root_id, entity.tenant_id == tenant_id).with_for_update()
    )
    if row is None:
        raise NotFound(f"{_LABEL[kind]} {root_id} not found", code=_NOT_FOUND[kind])
    return row


def delete_resource(
    session: Session,
    factory: sessionmaker[Session],
    store: ArtifactStore,
    principal: Principal,
    kind: ResourceType,
    root_id: uuid.UUID,
    *,
    cascade: bool,
    request_id: str | None,
) -> DeletionReport:
    """Delete the resource (and with ``cascade`` its dependents), commit, then delete the files."""
    started = time.time()
    if cascade and Scope.admin not in principal.scopes:
        raise Forbidden("?cascade=true needs an API key with the 'admin' scope", code="insufficient-scope")
    root = _lock_root(session, kind, principal.tenant_id, root_id)
    closure = _collect(session, principal.tenant_id, kind, root)
    _refuse_if_active(closure, kind, root_id)
    _refuse_if_evidence(session, closure, kind, root_id)
    if not cascade:
        _refuse_dependents(closure, kind, root_id)
    keys = _artifact_keys(closure)
    keys += _producer_checkpoints(session, closure)
    job_ids = sorted(closure.jobs)
    for chunk in chunks(job_ids):
        for owned in (Metric, JobEvent):
            session.execute(
                delete(owned).where(owned.job_id.in_(chunk)).execution_options(synchronize_session=False)
            )
    _delete_rows(session, Job, job_ids)
    for chunk in chunks(sorted(closure.campaigns)):
        # The surviving cells of a deleted campaign (jobs on other resources) simply leave it.
        session.execute(
            update(Job)
            .where(Job.campaign_id.in_(chunk))
            .values(campaign_id=None, version=Job.version + 1)
            .execution_options(synchronize_session=False)
        )
    _delete_rows(session, Campaign, closure.campaigns)
    _delete_rows(session, Model, closure.models)
    _delete_rows(session, ForgetSet, closure.forget_sets)
    _delete_rows(session, ShadowModel, closure.shadows)
    _delete_rows(session, Dataset, closure.datasets)
    deleted = _deleted(closure)
    details: dict[str, Any] = {
        "cascade": cascade,
        "counts": {name: len(ids) for name, ids in deleted.model_dump().items()},
        "deleted": {
            name: [str(i) for i in ids[:MAX_AUDITED_IDS]] for name, ids in deleted.model_dump().items() if ids
        },
        "artifacts": len(set(keys)),
    }
    sha = getattr(root, "sha256", None)
    if sha:
        details["sha256"] = sha  # a content hash only: never forget-set contents
    event = audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action=f"{kind}.delete",
        resource_type=kind,
        resource_id=str(root_id),
        request_id=request_id,
        details=details,
    )
    try:
        session.flush()
        event_id = event.id
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            f"{_LABEL[kind]} {root_id} gained a dependent while it was being deleted; retry",
            code="concurrent-modification",
        ) from exc
    files = delete_unreferenced(factory, store, keys, written_before=started)
    return DeletionReport(
        resource_type=kind,
        id=root_id,
        cascade=cascade,
        deleted=deleted,
        artifacts_deleted=len(files.deleted),
        bytes_freed=files.bytes_freed,
        artifacts_shared=len(files.shared),
        artifacts_deferred=len(files.deferred),
        audit_event_id=event_id,
    )


# OpenAPI text shared by the four DELETE routes.
CASCADE_DESCRIPTION = (
    "Also delete every dependent resource, transitively (models trained on a dataset, forget sets of it, jobs"
    " that used any of them, their output models and searched forget sets, campaigns referencing them)."
    " Needs the admin scope. Without it, a resource with dependents answers 409 resource-has-dependents."
)
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "The key lacks the scope (cascade and datasets need admin)"},
    404: {"description": "Unknown here (another tenant's resources are not visible)"},
    409: {
        "description": "resource-in-use: a queued or running job or a running campaign depends on it (cancel"
        " first); resource-has-dependents: dependents exist and cascade is false (listed in errors)"
    },
}
