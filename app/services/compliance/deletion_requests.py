"""Deletion requests: run the unlearning and the evaluations a policy needs, then issue a signed report.

Submitting one adds, in the caller's transaction, the jobs it needs (by role):

* ``unlearn``: the chosen method on the model and forget set, with the request's params and seed;
* ``retrain``: the retrain oracle with the same seed (reused when the tenant has it: content-hash cache);
* ``original``: an evaluation of the original model on the forget set (cached likewise, seed 0 as campaigns);
  it is also the first control;
* ``identity``: the second control, the registered no-op method run as an unlearning with the request's seed
  and device (left out for generative models, which it does not support);
* ``audit``: only when a policy rule names an audit metric (``ulira_*``, ``kaggle_*``, ``lira_*``,
  ``rmia_*``): the method audited with the request's params and ``audit`` settings, and ``audit_identity``,
  the identity method audited with the same settings (the audit's shadow models are shared through the
  shadow store, so the control's audit retrains nothing);
* ``recovery``: only when a policy rule names a recovery metric (``recovery_*``, ``transform.*``,
  ``relearn.*``): a recovery audit (quantization, pruning, relearning) of the unlearned model and
  ``recovery_identity``, the same audit of the identity control's output, both against the request's own
  original and retrain, with the request's seed and ``recovery`` settings (refused for generative models:
  they have no identity control, which the recovery rules' verdict needs). They need the unlearned model, so
  :func:`advance` adds them as a second stage once the unlearning, the retrain and the identity control have
  succeeded.

The report judges the unlearned model and each control by the same rules: a pass needs every control to
fail at least one rule (see app.services.compliance.policies.verdict_with_controls), so a policy that an
untouched model passes can only give ``inconclusive`` or ``fail``.

The reaper's periodic tick calls :func:`advance`: once every job has ended the request is ``issued`` with a
signed report (whatever its verdict), or ``failed`` when a job it needs failed or was cancelled.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.core.problems import DomainError, NotFound, Unprocessable, validation_errors
from app.core.security import Principal, Scope
from app.models import (
    ComplianceReport,
    DeletionRequest,
    DeletionRequestStatus,
    Job,
    JobKind,
    JobStatus,
    Model,
    Policy,
)
from app.models.base import utcnow
from app.models.job import TERMINAL_STATUSES
from app.schemas.compliance import (
    DeletionRequestCreate,
    DeletionRequestOut,
    DeletionRequestProgress,
    PolicyRef,
    PolicyRule,
    is_audit_metric,
    is_recovery_metric,
)
from app.schemas.jobs import MAX_SEED, JobCreate
from app.services.compliance import audit, reports
from app.services.compliance.policies import find_policy, get_policy
from app.services.compliance.signing import signing_key
from app.services.data.forget_sets import get_forget_set
from app.services.data.models import get_architecture, get_model
from app.services.jobs import lifecycle as job_service
from app.services.jobs.submission import build_job, find_reusable
from app.services.ops import quotas
from workers.engine.job_kinds import job_kind
from workers.engine.methods import METHODS
from workers.engine.recovery.params import ORIGINAL_FIELD, RETRAIN_FIELD

ROLE_UNLEARN = "unlearn"
ROLE_RETRAIN = "retrain"
ROLE_ORIGINAL = "original"
ROLE_IDENTITY = "identity"
ROLE_AUDIT = "audit"
ROLE_AUDIT_IDENTITY = "audit_identity"
ROLE_RECOVERY = "recovery"
ROLE_RECOVERY_IDENTITY = "recovery_identity"
RECOVERY_KIND = "recovery"
# The recovery stage's jobs: role → the role of the job whose output model it audits.
RECOVERY_SUBJECTS = {ROLE_RECOVERY: ROLE_UNLEARN, ROLE_RECOVERY_IDENTITY: ROLE_IDENTITY}
IDENTITY_METHOD = "identity"
REFERENCE_FIELDS = ("subject_reference", "ticket_reference", "requested_by")
ACTOR = "deletion-request"


def needs_audit(policy: Policy) -> bool:
    return any(is_audit_metric(PolicyRule.model_validate(rule).metric) for rule in policy.rules)


def needs_recovery(policy: Policy) -> bool:
    return any(is_recovery_metric(PolicyRule.model_validate(rule).metric) for rule in policy.rules)


def _recovery_params(session: Session, body: DeletionRequestCreate, model: Model) -> dict[str, Any]:
    """The recovery audits' options, validated now (the jobs start later): 422 before anything is written."""
    spec = job_kind(RECOVERY_KIND)
    # The model's task, not its dataset's: a generative model learns from a classification dataset.
    task = get_architecture(model.architecture).task
    if task not in spec.task_types:
        raise Unprocessable(
            f"this policy needs a recovery audit, which does not support {task.value} models yet",
            code="task-mismatch",
        )
    if task not in METHODS.get(IDENTITY_METHOD).task_types:
        # Recovery rules are judged against the identity control's recovery audit (a pass needs the no-op
        # to fail a rule); without that control a recovery rule could only ever read "inconclusive".
        raise Unprocessable(
            f"this policy has recovery rules, which are judged against the recovery audit of the identity"
            f" control; the identity method does not run on {task.value} models, so a deletion request"
            " cannot judge them: audit the unlearned model with a 'recovery' job instead",
            code="task-mismatch",
        )
    options = body.recovery.model_dump(mode="json") if body.recovery is not None else {}
    try:
        spec.params_models[task].model_validate(options)
    except ValidationError as exc:
        raise Unprocessable(
            "invalid recovery settings", code="invalid-params", errors=validation_errors(exc.errors())
        ) from exc
    return options


def _fingerprint(body: DeletionRequestCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def get_request(session: Session, tenant_id: uuid.UUID, request_id: uuid.UUID) -> DeletionRequest:
    row = session.get(DeletionRequest, request_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"deletion request {request_id} not found", code="deletion-request-not-found")
    return row


def _add_job(
    session: Session, principal: Principal, settings: Settings, body: JobCreate, new_jobs: list[uuid.UUID]
) -> dict[str, Any]:
    job = build_job(session, principal, body, settings)
    if job.cache_key is not None:
        cached = find_reusable(session, principal.tenant_id, job.cache_key)
        if cached is not None:
            return {"job_id": str(cached.id), "reused": True}
    session.add(job)
    session.flush()
    job_service.add_event(session, job.id, "queued", 0, {"kind": job.kind, "method": job.method})
    new_jobs.append(job.id)
    return {"job_id": str(job.id), "reused": False}


def submit(
    session: Session,
    principal: Principal,
    body: DeletionRequestCreate,
    settings: Settings,
    *,
    idempotency_key: str | None,
    request_id: str | None,
) -> tuple[DeletionRequest, bool, list[uuid.UUID]]:
    """Validate and add the request and its jobs (not committed): (request, created, jobs to publish)."""
    fingerprint = _fingerprint(body)
    if idempotency_key is not None:
        existing = session.scalar(
            select(DeletionRequest).where(
                DeletionRequest.tenant_id == principal.tenant_id,
                DeletionRequest.idempotency_key == idempotency_key,
            )
        )
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise Unprocessable(
                    "this Idempotency-Key was already used with a different request body",
                    code="idempotency-key-reused",
                )
            return existing, False, []
    tenant = principal.tenant_id
    if body.policy_id is not None:
        policy = get_policy(session, tenant, body.policy_id)
    else:
        assert body.policy_name is not None
        policy = find_policy(session, tenant, body.policy_name, body.policy_version)
    model = get_model(session, tenant, body.model_id)
    forget_set = get_forget_set(session, tenant, body.forget_set_id)
    recovery_params = _recovery_params(session, body, model) if needs_recovery(policy) else None
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    common = {"model_id": model.id, "forget_set_id": forget_set.id, "device": body.device}
    new_jobs: list[uuid.UUID] = []
    jobs = {
        ROLE_UNLEARN: _add_job(
            session,
            principal,
            settings,
            JobCreate(kind=JobKind.unlearn, method=body.method, params=body.params, seed=seed, **common),
            new_jobs,
        ),
        ROLE_RETRAIN: _add_job(
            session,
            principal,
            settings,
            JobCreate(kind=JobKind.retrain, params=body.retrain_params, seed=seed, **common),
            new_jobs,
        ),
        ROLE_ORIGINAL: _add_job(
            session, principal, settings, JobCreate(kind=JobKind.evaluate, seed=0, **common), new_jobs
        ),
    }
    identity = JobCreate(kind=JobKind.unlearn, method=IDENTITY_METHOD, params={}, seed=seed, **common)
    try:
        jobs[ROLE_IDENTITY] = _add_job(session, principal, settings, identity, new_jobs)
    except Unprocessable as exc:
        # Generative models (their task refuses or fixes the method): the no-op does not apply there and the
        # original's evaluation stays the one control.
        if exc.code not in ("task-mismatch", "unexpected-method"):
            raise
    audit_params = None
    if needs_audit(policy):
        options = body.audit.model_dump(mode="json") if body.audit is not None else {}
        audit_params = {**options, "method": body.method, "method_params": body.params}
        jobs[ROLE_AUDIT] = _add_job(
            session,
            principal,
            settings,
            JobCreate(kind=JobKind.audit, params=audit_params, seed=seed, **common),
            new_jobs,
        )
        control_params = {**options, "method": IDENTITY_METHOD, "method_params": {}}
        jobs[ROLE_AUDIT_IDENTITY] = _add_job(
            session,
            principal,
            settings,
            JobCreate(kind=JobKind.audit, params=control_params, seed=seed, **common),
            new_jobs,
        )
    row = DeletionRequest(
        tenant_id=tenant,
        name=body.name,
        model_id=model.id,
        forget_set_id=forget_set.id,
        policy_id=policy.id,
        method=body.method,
        params=body.params,
        seed=seed,
        device_requested=body.device,
        audit_params=audit_params,
        recovery_params=recovery_params,
        subject_reference=body.subject_reference,
        ticket_reference=body.ticket_reference,
        requested_by=body.requested_by,
        status=DeletionRequestStatus.running,
        jobs=jobs,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        version=1,
    )
    session.add(row)
    session.flush()
    quotas.check_active_jobs(session, tenant, settings)
    audit.record(
        session,
        tenant_id=tenant,
        actor=principal.actor,
        action="deletion_request.create",
        resource_type="deletion_request",
        resource_id=str(row.id),
        request_id=request_id,
        details={
            "model_id": str(model.id),
            "forget_set_id": str(forget_set.id),
            "forget_set_sha256": forget_set.sha256,
            "forget_set_size": forget_set.size,
            "method": body.method,
            "policy": {"id": str(policy.id), "name": policy.name, "version": policy.version},
            "jobs": {role: entry["job_id"] for role, entry in jobs.items()},
            # which references were given, never their values: the trail is append-only and cannot erase them
            "references": [name for name in REFERENCE_FIELDS if getattr(body, name) is not None],
        },
    )
    return row, True, new_jobs


def _jobs(session: Session, row: DeletionRequest) -> dict[str, Job | None]:
    return {role: session.get(Job, uuid.UUID(entry["job_id"])) for role, entry in row.jobs.items()}


def latest_report(session: Session, row: DeletionRequest) -> ComplianceReport | None:
    return session.scalar(
        select(ComplianceReport)
        .where(ComplianceReport.deletion_request_id == row.id)
        .order_by(ComplianceReport.created_at.desc(), ComplianceReport.id.desc())
        .limit(1)
    )


def to_out(session: Session, row: DeletionRequest) -> DeletionRequestOut:
    policy = session.get(Policy, row.policy_id)
    assert policy is not None
    jobs = _jobs(session, row)
    statuses = {role: job.status.value if job else "missing" for role, job in jobs.items()}
    fractions = []
    for job in jobs.values():
        if job is None or job.status in TERMINAL_STATUSES:
            fractions.append(1.0)
        else:
            fractions.append(float((job.progress or {}).get("fraction") or 0.0))
    fraction = sum(fractions) / len(fractions) if fractions else 1.0
    # the report is the last step
    fraction = min(fraction, 0.99) if row.status is DeletionRequestStatus.running else 1.0
    report = latest_report(session, row)
    return DeletionRequestOut(
        id=row.id,
        name=row.name,
        status=row.status,
        model_id=row.model_id,
        forget_set_id=row.forget_set_id,
        method=row.method,
        params=row.params,
        seed=row.seed,
        device=row.device_requested,
        policy=PolicyRef(id=policy.id, name=policy.name, version=policy.version),
        subject_reference=row.subject_reference,
        ticket_reference=row.ticket_reference,
        requested_by=row.requested_by,
        jobs=row.jobs,
        progress=DeletionRequestProgress(fraction=round(fraction, 4), jobs=statuses),
        error=row.error,
        report_id=report.id if report else None,
        verdict=report.verdict if report else None,
        created_at=row.created_at,
        finished_at=row.finished_at,
        version=row.version,
    )


def running_requests(factory: sessionmaker[Session]) -> list[uuid.UUID]:
    with session_scope(factory) as session:
        return list(
            session.scalars(
                select(DeletionRequest.id).where(DeletionRequest.status == DeletionRequestStatus.running)
            )
        )


def _transition(session: Session, row: DeletionRequest, status: DeletionRequestStatus, **values: Any) -> bool:
    """Conditional on the version, so two concurrent ticks cannot both finish the request."""
    changed = session.execute(
        update(DeletionRequest)
        .where(DeletionRequest.id == row.id, DeletionRequest.version == row.version)
        .values(status=status, version=row.version + 1, finished_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    return changed.rowcount == 1  # type: ignore[attr-defined]


def _add_recovery_stage(
    session: Session, row: DeletionRequest, jobs: dict[str, Job | None], settings: Settings
) -> list[uuid.UUID]:
    """Add the recovery audits of the unlearned model and of the identity control's output (not committed),
    both against the request's own original and retrain; returns the new jobs to publish."""
    retrain = jobs[ROLE_RETRAIN]
    assert retrain is not None and retrain.output_model_id is not None
    principal = Principal(tenant_id=row.tenant_id, key_id=ACTOR, scopes=frozenset(Scope))
    params = {
        **(row.recovery_params or {}),
        ORIGINAL_FIELD: str(row.model_id),
        RETRAIN_FIELD: str(retrain.output_model_id),
    }
    new_jobs: list[uuid.UUID] = []
    added: dict[str, Any] = {}
    for role, subject in RECOVERY_SUBJECTS.items():
        audited = jobs.get(subject)
        if audited is None or audited.output_model_id is None:
            continue  # no identity control (generative models): nothing of it to audit
        body = JobCreate(
            kind=RECOVERY_KIND,
            model_id=audited.output_model_id,
            forget_set_id=row.forget_set_id,
            params=params,
            seed=row.seed,
            device=row.device_requested,
        )
        added[role] = _add_job(session, principal, settings, body, new_jobs)
    quotas.check_active_jobs(session, row.tenant_id, settings)
    changed = session.execute(
        update(DeletionRequest)
        .where(DeletionRequest.id == row.id, DeletionRequest.version == row.version)
        .values(jobs={**row.jobs, **added}, version=row.version + 1)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise _Raced()
    audit.record(
        session,
        tenant_id=row.tenant_id,
        actor=ACTOR,
        action="deletion_request.stage",
        resource_type="deletion_request",
        resource_id=str(row.id),
        details={"stage": "recovery", "jobs": {role: entry["job_id"] for role, entry in added.items()}},
    )
    return new_jobs


class _Raced(Exception):
    """Another tick moved the request on first."""


def _recovery_pending(row: DeletionRequest) -> bool:
    return row.recovery_params is not None and ROLE_RECOVERY not in row.jobs


def advance(
    factory: sessionmaker[Session],
    request_id: uuid.UUID,
    settings: Settings,
    publish: Callable[[Iterable[uuid.UUID]], object] | None = None,
) -> str | None:
    """Move the request on once all its jobs have ended: add the recovery stage when its policy needs one
    (its jobs go to ``publish`` after the commit; without it the reaper's sweep sends them), else finish it.
    Returns the new status, None while it waits."""
    new_jobs: list[uuid.UUID] | None = None
    with session_scope(factory) as session:
        row = session.get(DeletionRequest, request_id)
        if row is None or row.status is not DeletionRequestStatus.running:
            return None
        jobs = _jobs(session, row)
        if any(job is not None and job.status not in TERMINAL_STATUSES for job in jobs.values()):
            return None
        unsuccessful = {
            role: job.status.value if job else "missing"
            for role, job in jobs.items()
            if job is None or job.status is not JobStatus.succeeded
        }
        if not unsuccessful and _recovery_pending(row):
            try:
                new_jobs = _add_recovery_stage(session, row, jobs, settings)
            except _Raced:
                session.rollback()
                return None
            except DomainError as exc:  # e.g. the tenant's job quota: the request cannot go on
                session.rollback()
                row = session.get(DeletionRequest, request_id)
                assert row is not None
                unsuccessful = {"recovery": exc.code}
        if new_jobs is None:
            return _finish(session, row, unsuccessful, settings)
    # The stage is committed: its jobs can be sent (reused cached results need none), and the next tick
    # finishes the request once they have ended.
    if publish is not None and new_jobs:
        publish(new_jobs)
    return None


# Steps other than jobs whose failure fails the request, with the error code it gets.
_STEP_ERRORS = {"report": "report-failed", "recovery": "stage-refused"}


def _finish(
    session: Session, row: DeletionRequest, unsuccessful: dict[str, str], settings: Settings
) -> str | None:
    """Issue the report, or fail the request when a job or step did not succeed."""
    request_id = row.id
    report = None
    if not unsuccessful:
        try:
            report = reports.issue(session, row, signing_key(settings))
        except DomainError as exc:  # e.g. an input was deleted meanwhile: nothing to certify
            session.rollback()
            reloaded = session.get(DeletionRequest, request_id)
            assert reloaded is not None
            row, unsuccessful = reloaded, {"report": exc.code}
    if report is None:
        step = next((code for name, code in _STEP_ERRORS.items() if name in unsuccessful), None)
        error = {
            "code": step or "job-unsuccessful",
            "detail": "a job or step this request needs did not succeed: no report was issued",
            "jobs": unsuccessful,
        }
        if not _transition(session, row, DeletionRequestStatus.failed, error=error):
            session.rollback()
            return None
        details: dict[str, Any] = {"status": "failed", "jobs": unsuccessful}
        status = DeletionRequestStatus.failed
    else:
        if not _transition(session, row, DeletionRequestStatus.issued):
            session.rollback()
            return None
        details = {
            "status": "issued",
            "report_id": str(report.id),
            "sha256": report.sha256,
            "verdict": report.verdict,
        }
        status = DeletionRequestStatus.issued
    audit.record(
        session,
        tenant_id=row.tenant_id,
        actor=ACTOR,
        action="deletion_request.finish",
        resource_type="deletion_request",
        resource_id=str(row.id),
        details=details,
    )
    return status.value


def reissue(
    session: Session, principal: Principal, row: DeletionRequest, settings: Settings, request_id: str | None
) -> ComplianceReport:
    if row.status is not DeletionRequestStatus.issued:
        raise DomainError(
            f"deletion request {row.id} is {row.status.value}: only an issued request's report can be"
            " re-issued",
            code="report-not-available",
            status=409,
        )
    report = reports.issue(session, row, signing_key(settings))
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="report.issue",
        resource_type="deletion_request",
        resource_id=str(row.id),
        request_id=request_id,
        details={"report_id": str(report.id), "sha256": report.sha256, "verdict": report.verdict},
    )
    return report


def cancel(session: Session, principal: Principal, row: DeletionRequest, request_id: str | None) -> int:
    """Cancel a running request and the jobs it started itself (reused cached jobs are left alone)."""
    if row.status is not DeletionRequestStatus.running:
        raise DomainError(
            f"deletion request {row.id} already {row.status.value}", code="not-cancellable", status=409
        )
    count = 0
    for role, job in _jobs(session, row).items():
        if job is None or row.jobs[role].get("reused") or job.status in TERMINAL_STATUSES:
            continue
        job_service.request_cancel(session, job)
        count += 1
    row.status = DeletionRequestStatus.cancelled
    row.finished_at = utcnow()
    row.version += 1
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="deletion_request.cancel",
        resource_type="deletion_request",
        resource_id=str(row.id),
        request_id=request_id,
        details={"jobs_cancelled": count},
    )
    return count
