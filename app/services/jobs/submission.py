"""Validating and recording a job submission (the job row, its first event and the audit row).

What a job kind needs comes from its registry entry (``workers.engine.job_kinds``): the inputs it requires
and forbids, the method it runs, its params model, the task types it supports, its own checks and whether
its result is cached. This module applies them in one order for every kind.
"""

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
from app.models import Dataset, ForgetSet, Job, JobStatus, Model
from app.schemas.jobs import MAX_SEED, JobCreate
from app.services.compliance import audit
from app.services.data.datasets import get_dataset
from app.services.data.forget_sets import get_forget_set
from app.services.data.models import get_architecture, get_model, validate_arch_config
from app.services.jobs.controls import resolve_controls
from app.services.jobs.lifecycle import add_event
from app.services.ops import quotas
from workers.engine.architectures import ArchitectureSpec
from workers.engine.errors import UnknownEntryError
from workers.engine.job_kinds import JobKindSpec, MethodUse, SubmissionContext, SubmissionRefused, job_kind
from workers.engine.methods import METHODS, MethodSpec
from workers.engine.task_types import TaskType

REUSABLE_STATUSES = (JobStatus.queued, JobStatus.running, JobStatus.succeeded)


def result_cache_key(
    kind: str,
    model: Model,
    forget_set: ForgetSet,
    dataset: Dataset,
    params: dict[str, Any],
    seed: int,
    device: str,
) -> str:
    """Content hash of every input that determines the result; any change gives another key."""
    spec = job_kind(kind)
    if spec.inherits_recipe and params.get("recipe") is None:
        params = {**params, "recipe": model.train_recipe}  # retrain with the original's recipe
    material = {
        "kind": spec.name,
        "model": model.sha256,
        "architecture": model.architecture,
        "arch_config": model.arch_config,
        "mask": model.mask_sha256,
        "dataset": dataset.sha256,
        "forget_set": forget_set.sha256,
        "forget_class": forget_set.forget_class,
        "params": params,
        # evaluate is deterministic given the weights; retrain depends on its seed
        "seed": seed if spec.cache_by_seed else None,
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


def method_spec(kind: str, name: str | None, task: TaskType | None) -> MethodSpec | None:
    """The method a job of ``kind`` on a model of task type ``task`` runs (None: a kind that runs none, or
    names it in its params). ``task=None`` checks a named method before the inputs are known (it returns None
    for an unnamed one)."""
    spec = job_kind(kind)
    if spec.method_use is not MethodUse.named:
        if name is not None:
            raise Unprocessable(
                spec.method_refusal or f"{spec.name} jobs take no method", code="unexpected-method"
            )
        return None
    if task is None and name is None:
        return None
    expected = spec.default_method(task)
    if expected is not None:
        if name not in (None, expected):
            raise Unprocessable(
                f"{spec.name} jobs{f' on {task.value} models' if task else ''} run method '{expected}',"
                f" not '{name}'",
                code="unexpected-method",
            )
        name = expected
    if name is None:
        choices = [m.name for m in METHODS if m.job_kind == spec.method_kind and task in m.task_types]
        if task is None:
            return None
        raise Unprocessable(f"{spec.name} jobs need a method: one of {choices}", code="missing-method")
    try:
        method = METHODS.get(name)
    except UnknownEntryError as exc:
        raise Unprocessable(
            f"unknown method '{name}'; available: {METHODS.names()}", code="unknown-method"
        ) from exc
    if method.job_kind != spec.method_kind:
        raise Unprocessable(
            f"method '{name}' runs in {method.job_kind} jobs, not {spec.name}", code="unexpected-method"
        )
    if task is not None and task not in method.task_types:
        raise Unprocessable(
            f"method '{method.name}' does not support {task.value} models", code="task-mismatch"
        )
    return method


def _parse_params(
    method: MethodSpec | None, params: dict[str, Any], kind: str, task: TaskType
) -> BaseModel | None:
    """The params parsed with the method's model, or the kind's for this task type (None: takes none)."""
    if method is None:
        spec = job_kind(kind)
        schema = spec.params_model(task)
        if schema is None:
            if params:
                raise Unprocessable(f"{spec.name} jobs take no params", code="invalid-params")
            return None
        what = spec.params_label or f"a {task.value} {spec.name} job"
    else:
        schema = method.params_model
        what = f"method '{method.name}'"
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        raise Unprocessable(
            f"invalid params for {what}",
            code="invalid-params",
            errors=validation_errors(exc.errors(), prefix=("params",)),
        ) from exc


def validate_params(
    method: MethodSpec | None, params: dict[str, Any], kind: str, task: TaskType
) -> dict[str, Any]:
    parsed = _parse_params(method, params, kind, task)
    return parsed.model_dump(mode="json") if parsed is not None else {}


def _require(value: uuid.UUID | None, field: str, spec: JobKindSpec) -> uuid.UUID:
    if value is None:
        raise Unprocessable(f"{spec.name} jobs need '{field}'", code="missing-field")
    return value


def _forbid(body: JobCreate, spec: JobKindSpec) -> None:
    for field in spec.forbidden:
        if getattr(body, field) not in (None, {}):
            raise Unprocessable(f"{spec.name} jobs do not take '{field}'", code="unexpected-field")


def _architecture(body: JobCreate, spec: JobKindSpec, dataset: Dataset | None) -> ArchitectureSpec:
    """The architecture a job builds (train), checked against the dataset it is trained on."""
    # An entry that builds an architecture also takes the dataset it trains on (required dataset_id).
    assert dataset is not None, f"job kind {spec.name} requires 'architecture' without 'dataset_id'"
    if body.architecture is None:
        raise Unprocessable(
            f"{spec.name} jobs need 'architecture' (see GET /v1/architectures)", code="missing-field"
        )
    arch = get_architecture(body.architecture)
    if not arch.supports_dataset(dataset.task):
        raise Unprocessable(
            f"architecture '{arch.name}' does not support {dataset.task} datasets", code="task-mismatch"
        )
    return arch


def _model_task(model: Model) -> TaskType:
    return get_architecture(model.architecture).task


def build_job(session: Session, principal: Principal, body: JobCreate, settings: Settings) -> Job:
    tenant = principal.tenant_id
    spec = job_kind(body.kind)
    if spec.method_use is not MethodUse.in_params:
        # A named method is checked before any input is read (an audit's, in its params, after them).
        method_spec(spec.name, body.method, None)
    dataset: Dataset | None = None
    model: Model | None = None
    forget_set: ForgetSet | None = None
    arch: ArchitectureSpec | None = None
    arch_config: dict[str, Any] | None = None

    _forbid(body, spec)
    if "dataset_id" in spec.required:
        dataset = get_dataset(session, tenant, _require(body.dataset_id, "dataset_id", spec))
    if "architecture" in spec.required:
        arch = _architecture(body, spec, dataset)
        assert dataset is not None
        arch_config = validate_arch_config(arch, body.arch_config, dataset).model_dump(mode="json")
    if "model_id" in spec.required:
        model = get_model(session, tenant, _require(body.model_id, "model_id", spec))
    if "forget_set_id" in spec.required:
        forget_set = get_forget_set(session, tenant, _require(body.forget_set_id, "forget_set_id", spec))
        if model is not None and model.dataset_id is not None and model.dataset_id != forget_set.dataset_id:
            raise Unprocessable(
                f"the forget set belongs to dataset {forget_set.dataset_id} but the model was trained on"
                f" {model.dataset_id}",
                code="dataset-mismatch",
            )
        dataset = session.get(Dataset, forget_set.dataset_id)
    elif model is not None and dataset is None:
        if model.dataset_id is None:
            raise Unprocessable(
                f"{spec.name} works on the model's training data: upload the model with its dataset_id",
                code="missing-dataset",
            )
        dataset = session.get(Dataset, model.dataset_id)
    if arch is not None:
        task = arch.task
    else:
        assert model is not None, f"job kind {spec.name} requires neither 'architecture' nor 'model_id'"
        task = _model_task(model)

    method = method_spec(spec.name, body.method, task)
    parsed = _parse_params(method, body.params, spec.name, task)
    params = parsed.model_dump(mode="json") if parsed is not None else {}
    if not spec.supports(task):
        raise Unprocessable(spec.task_refusal(task), code="task-mismatch")
    if task is TaskType.generative and forget_set is not None and forget_set.kind != "class":
        # Generative models forget whole classes.
        raise Unprocessable(
            f"generative models forget whole classes: this forget set is '{forget_set.kind}', not 'class'",
            code="forget-set-kind",
        )
    if spec.check is not None:
        try:
            spec.check(SubmissionContext(task, params, parsed, model, forget_set, dataset))
        except SubmissionRefused as exc:
            raise Unprocessable(exc.message, code=exc.code) from exc
    if (
        task is not TaskType.generative
        and method is not None
        and dataset is not None
        and "dataset_id" not in spec.required  # a dataset given in the body was checked with the architecture
        and dataset.task not in {t.value for t in method.task_types}
    ):
        raise Unprocessable(
            f"method '{method.name}' does not support {dataset.task} tasks", code="task-mismatch"
        )

    # Models the kind reads besides its input (a recovery audit's original and retrain), resolved now so that
    # the stored params name them.
    params = resolve_controls(session, tenant, spec, model, forget_set, params)
    quotas.check_job_limits(settings, spec.name, params, model)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    cache_key = None
    if spec.cacheable and model is not None and forget_set is not None and dataset is not None:
        cache_key = result_cache_key(spec.name, model, forget_set, dataset, params, seed, body.device)
    method_name = method.name if method is not None else None
    if spec.method_use is MethodUse.in_params:
        method_name = str(params["method"])  # the audited method: what the job's rows are listed under
    return Job(
        cache_key=cache_key,
        tenant_id=tenant,
        kind=body.kind,
        method=method_name,
        status=JobStatus.queued,
        params=params,
        seed=seed,
        device_requested=body.device,
        dataset_id=dataset.id if dataset else None,
        model_id=model.id if model else None,
        forget_set_id=forget_set.id if forget_set else None,
        architecture=arch.name if arch is not None else None,
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
    job.request_id = request_id
    session.add(job)
    session.flush()
    quotas.check_active_jobs(session, principal.tenant_id, settings)
    add_event(session, job.id, "queued", 0, {"kind": job.kind, "method": job.method})
    audit.record(
        session,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        action="job.create",
        resource_type="job",
        resource_id=str(job.id),
        request_id=request_id,
        details={"kind": job.kind, "method": job.method, "seed": job.seed},
    )
    return job, True
