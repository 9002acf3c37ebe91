"""Dry-run of a policy against the untouched-model control: would a model that forgot nothing pass it?

The check combines what holds by construction (``policies.lint``: utility rules the original meets, bounds
covering a metric's whole range) with measured evidence: the stored results for a model and forget set, a
deletion request's own controls, succeeded jobs (the original's evaluation, the retrain oracle, an audit of
the ``identity`` method) or metrics given directly. It stores nothing but its audit row, so authors can
iterate on rules before publishing them.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.problems import Conflict, NotFound, Unprocessable
from app.core.security import Principal
from app.models import Job, JobStatus, Model
from app.schemas.compliance import (
    STAGE_AUDIT,
    STAGE_RECOVERY,
    ControlCheck,
    PolicyCheck,
    PolicyCheckOut,
    PolicyRef,
    PolicyRule,
    PolicyWarning,
    RuleOutcome,
)
from app.services.compliance import audit
from app.services.compliance.deletion_requests import (
    IDENTITY_METHOD,
    ROLE_AUDIT_IDENTITY,
    ROLE_ORIGINAL,
    ROLE_RECOVERY_IDENTITY,
    ROLE_RETRAIN,
    get_request,
)
from app.services.compliance.policies import Table, evaluate_rule, get_policy, lint, rules_outcome
from app.services.compliance.reports import metric_table, values_table
from app.services.compliance.signing import canonical_json
from app.services.data.forget_sets import get_forget_set
from app.services.data.models import get_model
from app.services.jobs.results import metrics_for
from workers.engine.job_kinds import comparison_role, job_kind, kinds_producing, kinds_where

Evidence = Literal["inputs", "deletion_request", "jobs", "metrics"]
# The untouched model's further stages: the identity method's audit and recovery audit.
CONTROL_STAGES = {STAGE_AUDIT: ROLE_AUDIT_IDENTITY, STAGE_RECOVERY: ROLE_RECOVERY_IDENTITY}


def _job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, role: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found", code="job-not-found")
    if job.status is not JobStatus.succeeded:
        raise Conflict(
            f"the {role} job {job_id} is {job.status.value}: only a succeeded job's metrics are evidence",
            code="control-not-evaluated",
        )
    return job


def _audits_identity_output(session: Session, job: Job) -> bool:
    """A recovery audit (a kind with control models) of a model the identity method produced."""
    if not job_kind(job.kind).control_models or job.model_id is None:
        return False
    model = session.get(Model, job.model_id)
    producer = session.get(Job, model.job_id) if model is not None and model.job_id is not None else None
    return producer is not None and producer.method == IDENTITY_METHOD


def _check_kind(session: Session, job: Job, role: str) -> None:
    """The job must measure what its role claims, or the check would judge the wrong model."""
    expected = {
        ROLE_ORIGINAL: comparison_role(job.kind) == "original"
        or (comparison_role(job.kind) == "method" and job.method == IDENTITY_METHOD),
        ROLE_RETRAIN: comparison_role(job.kind) == "reference",
        ROLE_AUDIT_IDENTITY: "report" in job_kind(job.kind).produces and job.method == IDENTITY_METHOD,
        ROLE_RECOVERY_IDENTITY: _audits_identity_output(session, job),
    }[role]
    if not expected:
        wanted = {
            ROLE_ORIGINAL: "an evaluate job (or an unlearn job of the identity method)",
            ROLE_RETRAIN: "a retrain job",
            ROLE_AUDIT_IDENTITY: "an audit job of the identity method",
            ROLE_RECOVERY_IDENTITY: "a recovery audit of the identity method's output",
        }[role]
        raise Unprocessable(
            f"job {job.id} is a {job.kind} job ({job.method or 'no method'}): the {role} evidence must"
            f" be {wanted}",
            code="wrong-control-job",
        )


def _tables_from_jobs(session: Session, jobs: dict[str, Job]) -> dict[str, Table]:
    values = metrics_for(session, [job.id for job in jobs.values()])
    return {role: metric_table(job, values.get(job.id, {})) for role, job in jobs.items()}


def _newest(session: Session, tenant_id: uuid.UUID, body: PolicyCheck, role: str) -> Job | None:
    """The newest succeeded job of ``role`` on the request's model and forget set."""
    kinds = {
        ROLE_ORIGINAL: kinds_where(comparison_role="original"),
        ROLE_RETRAIN: kinds_where(comparison_role="reference"),
        ROLE_AUDIT_IDENTITY: kinds_producing("report"),
    }
    query = select(Job).where(
        Job.tenant_id == tenant_id,
        Job.kind.in_(kinds[role]),
        Job.model_id == body.model_id,
        Job.forget_set_id == body.forget_set_id,
        Job.status == JobStatus.succeeded,
    )
    if role == ROLE_AUDIT_IDENTITY:
        query = query.where(Job.method == IDENTITY_METHOD)
    return session.scalar(query.order_by(Job.finished_at.desc(), Job.id.desc()).limit(1))


def _from_inputs(session: Session, tenant_id: uuid.UUID, body: PolicyCheck) -> dict[str, Job]:
    assert body.model_id is not None and body.forget_set_id is not None
    get_model(session, tenant_id, body.model_id)  # 404 for another tenant's ids before anything else
    get_forget_set(session, tenant_id, body.forget_set_id)
    jobs = {
        role: job
        for role in (ROLE_ORIGINAL, ROLE_RETRAIN, ROLE_AUDIT_IDENTITY)
        if (job := _newest(session, tenant_id, body, role)) is not None
    }
    if ROLE_ORIGINAL not in jobs:
        raise Conflict(
            f"model {body.model_id} has no succeeded evaluation on forget set {body.forget_set_id}: run one"
            ' (POST /v1/jobs {"kind": "evaluate", "model_id": ..., "forget_set_id": ...}), plus a retrain for'
            " gap rules, then check again",
            code="control-not-evaluated",
        )
    return jobs


def _evidence(
    session: Session, tenant_id: uuid.UUID, body: PolicyCheck
) -> tuple[Evidence, dict[str, Job], dict[str, Table]] | None:
    if body.metrics is not None:
        return (
            "metrics",
            {},
            {
                ROLE_ORIGINAL: values_table(body.metrics.original),
                ROLE_RETRAIN: values_table(body.metrics.retrain),
                ROLE_AUDIT_IDENTITY: values_table(body.metrics.audit),
                ROLE_RECOVERY_IDENTITY: values_table(body.metrics.recovery),
            },
        )
    if body.model_id is not None:
        jobs = _from_inputs(session, tenant_id, body)
        return "inputs", jobs, _tables_from_jobs(session, jobs)
    if body.original_job_id is not None:
        ids = {
            ROLE_ORIGINAL: body.original_job_id,
            ROLE_RETRAIN: body.retrain_job_id,
            ROLE_AUDIT_IDENTITY: body.audit_job_id,
            ROLE_RECOVERY_IDENTITY: body.recovery_job_id,
        }
        jobs = {role: _job(session, tenant_id, job_id, role) for role, job_id in ids.items() if job_id}
        for role, job in jobs.items():
            _check_kind(session, job, role)
        return "jobs", jobs, _tables_from_jobs(session, jobs)
    if body.deletion_request_id is not None:
        request = get_request(session, tenant_id, body.deletion_request_id)
        jobs = {
            role: _job(session, tenant_id, uuid.UUID(request.jobs[role]["job_id"]), role)
            for role in (ROLE_ORIGINAL, ROLE_RETRAIN, ROLE_AUDIT_IDENTITY, ROLE_RECOVERY_IDENTITY)
            if role in request.jobs
        }
        return "deletion_request", jobs, _tables_from_jobs(session, jobs)
    return None


def check_policy(
    session: Session, principal: Principal, body: PolicyCheck, request_id: str | None
) -> PolicyCheckOut:
    """Evaluate the rules for the untouched model; adds the check's audit row (not committed)."""
    tenant = principal.tenant_id
    ref: PolicyRef | None = None
    if body.policy_id is not None:
        policy = get_policy(session, tenant, body.policy_id)
        ref = PolicyRef(id=policy.id, name=policy.name, version=policy.version)
        rules = [PolicyRule.model_validate(rule) for rule in policy.rules]
    else:
        assert body.rules is not None
        rules = body.rules
    warnings = lint(rules)
    vacuous_by_construction = any(w.code == "vacuous-policy" for w in warnings)
    control: ControlCheck | None = None
    evidence = _evidence(session, tenant, body)
    if evidence is not None:
        kind, jobs, tables = evidence
        verdicts = [
            evaluate_rule(i, rule, tables, subject=ROLE_ORIGINAL, stage_subjects=CONTROL_STAGES)
            for i, rule in enumerate(rules)
        ]
        outcome = rules_outcome(verdicts)
        control = ControlCheck(
            evidence=kind,
            jobs={role: job.id for role, job in jobs.items()},
            outcome=outcome,
            rules=[_outcome(v) for v in verdicts],
        )
        flagged = {w.rule_index for w in warnings}
        for verdict in verdicts:
            if verdict["passed"] is True and verdict["index"] not in flagged:
                warnings.append(
                    PolicyWarning(
                        code="control-passes",
                        rule_index=verdict["index"],
                        detail=f"the untouched model meets it: {verdict['finding']}",
                    )
                )
        if outcome == "pass" and not vacuous_by_construction:
            warnings.append(
                PolicyWarning(
                    code="vacuous-policy",
                    detail=(
                        "the untouched model passes every rule as measured: tighten a forgetting rule until"
                        " it fails (its finding shows by how much it passes)"
                    ),
                )
            )
    separates = _separates(vacuous_by_construction, control)
    check_id = uuid.uuid4()
    audit.record(
        session,
        tenant_id=tenant,
        actor=principal.actor,
        action="policy.check",
        resource_type="policy_check",
        resource_id=str(check_id),
        request_id=request_id,
        details=_audit_details(ref, rules, control, separates),
    )
    return PolicyCheckOut(
        id=check_id,
        policy=ref,
        separates=separates,
        summary=_summary(separates, vacuous_by_construction, control),
        warnings=warnings,
        control=control,
    )


def _outcome(verdict: dict[str, Any]) -> RuleOutcome:
    return RuleOutcome(
        index=verdict["index"],
        metric=verdict["metric"],
        statement=verdict["statement"],
        meaning=verdict["meaning"],
        finding=verdict["finding"],
        passed=verdict["passed"],
    )


def _separates(vacuous_by_construction: bool, control: ControlCheck | None) -> bool | None:
    if vacuous_by_construction:
        return False
    if control is None or control.outcome == "inconclusive":
        return None
    return control.outcome == "fail"


def _summary(separates: bool | None, by_construction: bool, control: ControlCheck | None) -> str:
    if separates is False:
        how = "by construction" if by_construction else "as measured"
        return (
            f"Vacuous: the untouched model passes every rule ({how}), so requests under this policy can be"
            " inconclusive or fail, never pass."
        )
    if separates is True:
        assert control is not None
        failed = ", ".join(str(r.index + 1) for r in control.rules if r.passed is False)
        return f"Separating: the untouched model fails rule {failed}, so a pass will mean something."
    if control is None:
        return (
            "Not decided: no rule holds for the untouched model by construction, but without evidence"
            " (a deletion request, control jobs or metrics) it was not measured."
        )
    missing = ", ".join(str(r.index + 1) for r in control.rules if r.passed is None)
    return f"Not decided: the evidence lacks what rule {missing} needs, and the control fails no other rule."


def _audit_details(
    ref: PolicyRef | None, rules: list[PolicyRule], control: ControlCheck | None, separates: bool | None
) -> dict[str, Any]:
    payload = [rule.model_dump(mode="json", exclude_none=True) for rule in rules]
    return {
        "policy": None if ref is None else {"id": str(ref.id), "name": ref.name, "version": ref.version},
        "rules_sha256": hashlib.sha256(canonical_json(payload)).hexdigest(),
        "evidence": None if control is None else control.evidence,
        "separates": separates,
    }
