"""Validating and recording a job submission (the job row, its first event and the audit row)."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings, code_version
from app.core.problems import Unprocessable, validation_errors
from app.core.security import Principal
from app.models import Dataset, ForgetSet, Job, JobKind, JobStatus, Model
from app.schemas.jobs import MAX_SEED, JobCreate
from app.services import audit, quotas
from app.services.datasets import get_dataset
from app.services.forget_sets import get_forget_set
from app.services.jobs import add_event
from app.services.models import get_architecture, get_model, validate_arch_config
from workers.engine.audit.params import AUDITABLE_JOB_KINDS, AuditParams
from workers.engine.diffusion.job_params import (
    GENERATIVE_ARCHITECTURES,
    TEACHER,
    GenerativeEvaluation,
    SampleJobParams,
)
from workers.engine.errors import UnknownEntryError
from workers.engine.methods import DEFAULT_METHODS, METHODS, MethodSpec
from workers.engine.tasks import TaskType

# Which method each model-modifying kind runs (train and retrain: by task type, DEFAULT_METHODS).
_KIND_METHOD = {
    JobKind.prune: "prune",
    JobKind.worst_case_search: "worst_case_search",
}
# The engine's name for a job kind, where it differs.
_ENGINE_KIND = {JobKind.worst_case_search: "search"}
# Kinds that run no method; generative models take params for them.
_KINDS_WITHOUT_METHOD = (JobKind.evaluate, JobKind.sample)
_GENERATIVE_PARAMS: dict[JobKind, type[BaseModel]] = {
    JobKind.evaluate: GenerativeEvaluation,
    JobKind.sample: SampleJobParams,
}
# Kinds that only classification / regression models support.
_DISCRIMINATIVE_ONLY = (JobKind.prune, JobKind.worst_case_search, JobKind.audit)


# Kinds whose result depends only on their inputs: the retrain oracle and evaluations of a model.
CACHEABLE_KINDS = frozenset({JobKind.retrain, JobKind.evaluate})
REUSABLE_STATUSES = (JobStatus.queued, JobStatus.running, JobStatus.succeeded)


def result_cache_key(
    kind: JobKind,
    model: Model,
    forget_set: ForgetSet,
    dataset: Dataset,
    params: dict[str, Any],
    seed: int,
    device: str,
) -> str:
    """Content hash of every input that determines the result; any change gives another key."""
    if kind is JobKind.retrain and params.get("recipe") is None:
        params = {**params, "recipe": model.train_recipe}  # retrain with the original's recipe
    material = {
        "kind": kind.value,
        "model": model.sha256,
        "architecture": model.architecture,
        "arch_config": model.arch_config,
        "mask": model.mask_sha256,
        "dataset": dataset.sha256,
        "forget_set": forget_set.sha256,
        "forget_class": forget_set.forget_class,
        "params": params,
        # evaluate is deterministic given the weights; retrain depends on its seed
        "seed": seed if kind is JobKind.retrain else None,
        "device": device,
        "code_version": code_version(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def find_reusable(session: Session, tenant_id: uuid.UUID, cache_key: str) -> Job | None:
    return session.scalar(
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.cache_key == cache_key, Job.status.in_(REUSABLE_STATUSES))
        .order_by(Job.created_at)
        .limit(1)
    )


def request_fingerprint(body: JobCreate) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def method_spec(kind: JobKind, name: str | None, task: TaskType | None) -> MethodSpec | None:
    """The method a job of ``kind`` on a model of task type ``task`` runs (None: evaluate / sample).
    ``task=None`` checks a named method before the inputs are known (it returns None for an unnamed one)."""
    if kind in _KINDS_WITHOUT_METHOD:
        if name is not None:
            raise Unprocessable(f"{kind.value} jobs take no method", code="unexpected-method")
        return None
    if task is None and name is None:
        return None
    expected = _KIND_METHOD.get(kind)
    if expected is None and task is not None:
        expected = DEFAULT_METHODS.get((kind.value, task))  # type: ignore[arg-type]
    if expected is not None:
        if name not in (None, expected):
            raise Unprocessable(
                f"{kind.value} jobs{f' on {task.value} models' if task else ''} run method '{expected}',"
                f" not '{name}'",
                code="unexpected-method",
            )
        name = expected
    if name is None:
        unlearn = [m.name for m in METHODS if m.job_kind == "unlearn" and task in m.task_types]
        if task is None:
            return None
        raise Unprocessable(f"unlearn jobs need a method: one of {unlearn}", code="missing-method")
    try:
        spec = METHODS.get(name)
    except UnknownEntryError as exc:
        raise Unprocessable(
            f"unknown method '{name}'; available: {METHODS.names()}", code="unknown-method"
        ) from exc
    if spec.job_kind != _ENGINE_KIND.get(kind, kind.value):
        raise Unprocessable(
            f"method '{name}' runs in {spec.job_kind} jobs, not {kind.value}", code="unexpected-method"
        )
    if task is not None and task not in spec.task_types:
        raise Unprocessable(
            f"method '{spec.name}' does not support {task.value} models", code="task-mismatch"
        )
    return spec


def validate_params(
    spec: MethodSpec | None, params: dict[str, Any], kind: JobKind, task: TaskType
) -> dict[str, Any]:
    if spec is None:
        schema = _GENERATIVE_PARAMS.get(kind) if task is TaskType.generative else None
        if schema is None:
            if params:
                raise Unprocessable(f"{kind.value} jobs take no params", code="invalid-params")
            return {}
        what = f"a generative {kind.value} job"
    else:
        schema = spec.params_model
        what = f"method '{spec.name}'"
    try:
        parsed: BaseModel = schema.model_validate(params)
    except ValidationError as exc:
        raise Unprocessable(
            f"invalid params for {what}",
            code="invalid-params",
            errors=validation_errors(exc.errors(), prefix=("params",)),
        ) from exc
    return parsed.model_dump(mode="json")


def _check_generative(
    kind: JobKind, model: Model, forget_set: ForgetSet | None, params: dict[str, Any]
) -> None:
    """Generative models forget whole classes, starting from a multi-step teacher."""
    if kind in _DISCRIMINATIVE_ONLY:
        raise Unprocessable(
            f"{kind.value} jobs support classification and regression models, not generative ones",
            code="task-mismatch",
        )
    if forget_set is not None and forget_set.kind != "class":
        raise Unprocessable(
            f"generative models forget whole classes: this forget set is '{forget_set.kind}', not 'class'",
            code="forget-set-kind",
        )
    if kind in (JobKind.retrain, JobKind.unlearn) and model.architecture != TEACHER:
        raise Unprocessable(
            f"{kind.value} starts from a multi-step teacher ({TEACHER}); this model is {model.architecture}",
            code="task-mismatch",
        )
    if kind is JobKind.unlearn and forget_set is not None:
        given = params.get("forget_class")
        if given is not None and given != forget_set.forget_class:
            raise Unprocessable(
                f"params.forget_class {given} differs from the forget set's class {forget_set.forget_class}",
                code="invalid-params",
            )
        if params.get("override_class") == forget_set.forget_class:
            raise Unprocessable(
                f"params.override_class must differ from the forgotten class {forget_set.forget_class}",
                code="invalid-params",
            )
    if kind is JobKind.retrain and params.get("recipe") is None and model.train_recipe is None:
        raise Unprocessable(
            "this teacher has no recorded training recipe (it was uploaded): pass params.recipe",
            code="missing-recipe",
        )


def _require(value: uuid.UUID | None, field: str, kind: JobKind) -> uuid.UUID:
    if value is None:
        raise Unprocessable(f"{kind.value} jobs need '{field}'", code="missing-field")
    return value


def _forbid(body: JobCreate, fields: tuple[str, ...]) -> None:
    for field in fields:
        if getattr(body, field) not in (None, {}):
            raise Unprocessable(f"{body.kind.value} jobs do not take '{field}'", code="unexpected-field")


def validate_audit_params(params: dict[str, Any]) -> AuditParams:
    try:
        return AuditParams.model_validate(params)
    except ValidationError as exc:
        raise Unprocessable(
            "invalid params for an audit",
            code="invalid-params",
            errors=validation_errors(exc.errors(), prefix=("params",)),
        ) from exc


def _check_audit(
    audit_params: AuditParams, model: Model, forget_set: ForgetSet, dataset: Dataset | None
) -> None:
    # Generative models were refused before (_check_generative); classifiers and regressors are audited
    # alike (regression scores: workers/engine/metrics/regression_scores.py), so the audited method is what
    # must fit the model's task.
    task = TaskType(dataset.task) if dataset is not None else _model_task(model)
    method = METHODS.get(audit_params.method)
    if task not in method.task_types:
        raise Unprocessable(
            f"method '{method.name}' does not support {task.value} models; audit one of"
            f" {[m.name for m in METHODS if task in m.task_types and m.job_kind in AUDITABLE_JOB_KINDS]}",
            code="task-mismatch",
        )
    if audit_params.recipe is None and model.train_recipe is None:
        raise Unprocessable(
            "this model has no recorded training recipe (it was uploaded): pass params.recipe, the recipe"
            " every shadow model is trained with",
            code="missing-recipe",
        )
    if audit_params.forget_sets_per_shadow > 1 and forget_set.kind != "random":
        raise Unprocessable(
            "params.forget_sets_per_shadow > 1 redraws random forget sets of the same size: it needs a random"
            f" forget set, this one is '{forget_set.kind}'",
            code="invalid-params",
        )


def _model_task(model: Model) -> TaskType:
    return get_architecture(model.architecture).task


def build_job(session: Session, principal: Principal, body: JobCreate, settings: Settings) -> Job:
    tenant = principal.tenant_id
    if body.kind is not JobKind.audit:
        method_spec(body.kind, body.method, None)  # a named method is checked before any input is read
    dataset: Dataset | None = None
    model: Model | None = None
    forget_set: ForgetSet | None = None
    architecture: str | None = None
    arch_config: dict[str, Any] | None = None

    if body.kind is JobKind.train:
        _forbid(body, ("model_id", "forget_set_id"))
        dataset = get_dataset(session, tenant, _require(body.dataset_id, "dataset_id", body.kind))
        if body.architecture is None:
            raise Unprocessable(
                "train jobs need 'architecture' (see GET /v1/architectures)", code="missing-field"
            )
        arch = get_architecture(body.architecture)
        if not arch.supports_dataset(dataset.task):
            raise Unprocessable(
                f"architecture '{arch.name}' does not support {dataset.task} datasets", code="task-mismatch"
            )
        architecture = arch.name
        arch_config = validate_arch_config(arch, body.arch_config, dataset).model_dump(mode="json")
        task = arch.task
    elif body.kind in (JobKind.prune, JobKind.worst_case_search, JobKind.sample):
        _forbid(body, ("dataset_id", "architecture", "arch_config", "forget_set_id"))
        model = get_model(session, tenant, _require(body.model_id, "model_id", body.kind))
        if model.dataset_id is None:
            raise Unprocessable(
                f"{body.kind.value} works on the model's training data: upload the model with its dataset_id",
                code="missing-dataset",
            )
        dataset = session.get(Dataset, model.dataset_id)
        task = _model_task(model)
    else:
        _forbid(body, ("dataset_id", "architecture", "arch_config"))
        model = get_model(session, tenant, _require(body.model_id, "model_id", body.kind))
        forget_set = get_forget_set(session, tenant, _require(body.forget_set_id, "forget_set_id", body.kind))
        if model.dataset_id is not None and model.dataset_id != forget_set.dataset_id:
            raise Unprocessable(
                f"the forget set belongs to dataset {forget_set.dataset_id} but the model was trained on"
                f" {model.dataset_id}",
                code="dataset-mismatch",
            )
        dataset = session.get(Dataset, forget_set.dataset_id)
        task = _model_task(model)

    audit_params: AuditParams | None = None
    if body.kind is JobKind.audit:
        if body.method is not None:
            raise Unprocessable(
                "audit jobs name the audited method in params.method", code="unexpected-method"
            )
        spec = None
        audit_params = validate_audit_params(body.params)
        params = audit_params.model_dump(mode="json")
    else:
        spec = method_spec(body.kind, body.method, task)
        params = validate_params(spec, body.params, body.kind, task)

    if task is TaskType.generative:
        assert model is not None or body.kind is JobKind.train
        if model is not None:
            _check_generative(body.kind, model, forget_set, params)
    elif body.kind is JobKind.sample:
        raise Unprocessable(
            f"sample jobs need a generative model ({', '.join(GENERATIVE_ARCHITECTURES)}); this one is"
            f" {task.value}",
            code="task-mismatch",
        )
    else:
        if audit_params is not None:
            assert model is not None and forget_set is not None
            _check_audit(audit_params, model, forget_set, dataset)
        if body.kind is JobKind.retrain and params.get("recipe") is None:
            assert model is not None
            if model.train_recipe is None:
                raise Unprocessable(
                    "this model has no recorded training recipe (it was uploaded):"
                    " pass params.recipe for the retrain",
                    code="missing-recipe",
                )
        if (
            spec is not None
            and dataset is not None
            and body.kind is not JobKind.train
            and dataset.task not in {t.value for t in spec.task_types}
        ):
            raise Unprocessable(
                f"method '{spec.name}' does not support {dataset.task} tasks", code="task-mismatch"
            )

    quotas.check_job_limits(settings, body.kind, params, model)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    cache_key = None
    if body.kind in CACHEABLE_KINDS and model is not None and forget_set is not None and dataset is not None:
        cache_key = result_cache_key(body.kind, model, forget_set, dataset, params, seed, body.device)
    return Job(
        cache_key=cache_key,
        tenant_id=tenant,
        kind=body.kind,
        method=spec.name if spec else (audit_params.method if audit_params else None),
        status=JobStatus.queued,
        params=params,
        seed=seed,
        device_requested=body.device,
        dataset_id=dataset.id if dataset else None,
        model_id=model.id if model else None,
        forget_set_id=forget_set.id if forget_set else None,
        architecture=architecture,
        arch_config=arch_config,
        progress={"phase": "queued", "fraction": 0.0},
        attempt=0,
        max_attempts=settings.max_attempts,
        code_version=code_version(),
        version=1,
    )


def submit(
    session: Session,
    principal: Principal,
    body: JobCreate,
    settings: Settings,
    *,
    idempotency_key: str | None,
    request_id: str | None,
) -> tuple[Job, bool]:
    """Validate and add the job (not committed). Returns (job, created); replays an idempotent retry."""
    fingerprint = request_fingerprint(body)
    if idempotency_key is not None:
        existing = session.scalar(
            select(Job).where(Job.tenant_id == principal.tenant_id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            if existing.request_hash != fingerprint:
                raise Unprocessable(
                    "this Idempotency-Key was already used with a different request body",
                    code="idempotency-key-reused",
                )
            return existing, False
    job = build_job(session, principal, body, settings)
    if body.reuse_cached and job.cache_key is not None:
        cached = find_reusable(session, principal.tenant_id, job.cache_key)
        if cached is not None:
            return cached, False
    job.idempotency_key = idempotency_key
    job.request_hash = fingerprint
    session.add(job)
    session.flush()
    quotas.check_active_jobs(session, principal.tenant_id, settings)
    add_event(session, job.id, "queued", 0, {"kind": job.kind.value, "method": job.method})
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="job.create",
        resource_type="job",
        resource_id=str(job.id),
        request_id=request_id,
        details={"kind": job.kind.value, "method": job.method, "seed": job.seed},
    )
    return job, True
