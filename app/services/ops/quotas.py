"""Per-tenant and per-job limits (Settings, env prefix ``LETHE_``), each refused with its own problem code.

* queued + running jobs of a tenant, ``max_active_jobs_per_tenant``: ``POST /v1/jobs`` answers 429
  ``too-many-active-jobs`` with Retry-After (campaign cells count towards it; idempotent replays and cached
  results that create no job are never refused);
* every epochs field of a job's params and of an inherited recipe, ``max_job_epochs``: job submission and
  campaign creation answer 422 ``epochs-over-limit``;
* wall-clock time of a running attempt, ``job_time_budget_seconds``: the reaper beat fails the job with
  ``time-budget-exceeded`` and its worker stops at the next heartbeat;
* the size of a generated built-in dataset, ``max_dataset_uncompressed_bytes``: ``POST /v1/datasets``
  answers 422 ``dataset-too-large`` before generating anything;
* the bytes a tenant stores, ``storage_quota_bytes_per_tenant``: datasets, models and audit shadow models,
  counted from their rows' ``size_bytes`` (each stored file once). A dataset or model upload that would not
  fit answers 413 ``storage-quota-exceeded`` before anything is written (a dataset counts as stored, i.e.
  its decompressed float32 arrays, not as uploaded); a job submission answers 422 ``storage-quota-exceeded``
  when the output models of the tenant's queued and running jobs, this one included, would not fit: each
  reserves the size of its input model, or for a train job the float32 size of its architecture.

Uploads are bounded elsewhere with the same settings: request bodies and uploaded files by
``max_upload_bytes`` (413 ``payload-too-large`` / ``upload-too-large``), dataset archives' declared
uncompressed size by ``max_dataset_uncompressed_bytes`` (422 ``zip-bomb``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import session_scope
from app.core.problems import DomainError, Unprocessable
from app.models import Dataset, Job, JobStatus, Model, ShadowModel, Tenant
from app.models.base import utcnow
from app.services.jobs.lifecycle import add_event
from workers.engine.job_kinds import job_kind, kinds_producing

ACTIVE = (JobStatus.queued, JobStatus.running)
RETRY_AFTER_SECONDS = 30
FLOAT32_BYTES = 4


class TooManyRequests(DomainError):
    status, code, title = 429, "too-many-requests", "Too many requests"


def active_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    return int(
        session.scalar(select(func.count(Job.id)).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE)))
        or 0
    )


STORED_TABLES = (Dataset, Model, ShadowModel)
STORAGE_QUOTA_CODE = "storage-quota-exceeded"


def storage_used(session: Session, tenant_id: uuid.UUID) -> int:
    """Bytes of the tenant's datasets, models and shadow models, each stored file counted once (identical
    content shares one content-addressed file)."""
    total = 0
    for table in STORED_TABLES:
        per_file = (
            select(func.max(table.size_bytes).label("size"))
            .where(table.tenant_id == tenant_id)
            .group_by(table.storage_key)
            .subquery()
        )
        total += int(session.scalar(select(func.coalesce(func.sum(per_file.c.size), 0))) or 0)
    return total


def _lock_tenant(session: Session, tenant_id: uuid.UUID) -> None:
    # FOR NO KEY UPDATE, as audit.record does: of two concurrent writers for the last bytes or the last job
    # slot, the second counts the first's rows (SQLite serialises writers anyway).
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True))


def _quota_refusal(what: str, used: int, limit: int, requested: int, status: int) -> DomainError:
    return DomainError(
        f"{what} needs {requested} bytes of storage; this tenant uses {used} of its {limit} bytes"
        f" (LETHE_STORAGE_QUOTA_BYTES_PER_TENANT), {max(limit - used, 0)} left: delete datasets, models or"
        " jobs it no longer needs, or ask the operator for a larger quota",
        code=STORAGE_QUOTA_CODE,
        status=status,
        errors=[{"used_bytes": used, "limit_bytes": limit, "requested_bytes": requested}],
    )


def check_storage(
    session: Session, tenant_id: uuid.UUID, requested: int, settings: Settings, *, what: str
) -> None:
    """Refuse (413 ``storage-quota-exceeded``) when storing ``requested`` more bytes would take the tenant
    over its quota. Locks the tenant row first: call it in the transaction that inserts the new row, so a
    concurrent upload waits and then counts it."""
    limit = settings.storage_quota_bytes_per_tenant
    if limit is None:
        return
    _lock_tenant(session, tenant_id)
    used = storage_used(session, tenant_id)
    if used + requested > limit:
        raise _quota_refusal(what, used, limit, requested, 413)


def model_producing_kinds() -> list[str]:
    """Job kinds whose success stores a new model (the output reserves its size while the job is active)."""
    return kinds_producing("model")


def _output_model_bytes(
    kind: str, input_model_bytes: int | None, architecture: str | None, arch_config: dict[str, Any] | None
) -> int:
    """What a job's output model will take: its input model's size (unlearning, retraining and pruning
    keep the architecture), else the float32 size of the architecture it trains."""
    if input_model_bytes is not None:
        return input_model_bytes
    if "architecture" not in job_kind(kind).required or architecture is None:
        return 0
    from workers.engine.architectures import ARCHITECTURES, parameter_count
    from workers.engine.errors import InvalidInputError, UnknownEntryError

    try:
        spec = ARCHITECTURES.get(architecture)
        return parameter_count(spec.expected_state(arch_config or {})) * FLOAT32_BYTES
    except (UnknownEntryError, InvalidInputError):
        return 0  # refused by submission's own validation


def reserved_output_bytes(session: Session, tenant_id: uuid.UUID) -> tuple[int, int]:
    """(reserved bytes, model-producing jobs) over the tenant's queued and running jobs."""
    active = session.execute(
        select(Job.kind, Model.size_bytes, Job.architecture, Job.arch_config)
        .outerjoin(Model, Model.id == Job.model_id)
        .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), Job.kind.in_(model_producing_kinds()))
    ).all()
    return sum(_output_model_bytes(kind, size, arch, config) for kind, size, arch, config in active), len(
        active
    )


def check_storage_for_jobs(session: Session, tenant_id: uuid.UUID, settings: Settings) -> None:
    """Refuse (422 ``storage-quota-exceeded``) a submission whose jobs' output models, with those of the
    tenant's other queued and running jobs, would not fit in its quota. Called by check_active_jobs, after
    the new jobs were flushed and the tenant row locked."""
    limit = settings.storage_quota_bytes_per_tenant
    if limit is None:
        return
    reserved, jobs = reserved_output_bytes(session, tenant_id)
    if not reserved:
        return
    used = storage_used(session, tenant_id)
    if used + reserved > limit:
        raise _quota_refusal(
            f"the output models of this tenant's {jobs} queued or running model-producing job(s)",
            used,
            limit,
            reserved,
            422,
        )


def check_active_jobs(session: Session, tenant_id: uuid.UUID, settings: Settings) -> None:
    """Refuse when the tenant's queued + running jobs exceed the limit. Call it after the new jobs were
    flushed: they count themselves, and the refusal rolls them back with the rest of the transaction.

    The tenant row is locked before counting (FOR NO KEY UPDATE, as audit.record does: it does not wait for
    the KEY SHARE that inserted rows hold on their tenant; SQLite serialises writers anyway), so of two
    concurrent submissions for the last slot the second counts the first's job. Taking it after the inserts
    keeps every writer's lock order (referenced rows, then the tenant row, as audit.record and DELETE do).
    The storage quota of the jobs' output models is checked under the same lock (check_storage_for_jobs)."""
    limit = settings.max_active_jobs_per_tenant
    if limit is None and settings.storage_quota_bytes_per_tenant is None:
        return
    _lock_tenant(session, tenant_id)
    check_storage_for_jobs(session, tenant_id, settings)
    if limit is None:
        return
    current = active_jobs(session, tenant_id)
    if current > limit:
        raise TooManyRequests(
            f"this tenant already has {current - 1} queued or running jobs and the limit is {limit}"
            " (LETHE_MAX_ACTIVE_JOBS_PER_TENANT): wait for some to finish or cancel them, then retry",
            code="too-many-active-jobs",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


def _counted_fields(
    value: Any, unit: str, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], int]]:
    """Integer fields named ``unit`` or ``*_<unit>`` anywhere in a JSON value, with their paths."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if (name == unit or name.endswith(f"_{unit}")) and isinstance(item, int):
                yield (*path, name), item
            else:
                yield from _counted_fields(item, unit, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _counted_fields(item, unit, (*path, index))


def check_job_limits(settings: Settings, kind: str, params: dict[str, Any], model: Model | None) -> None:
    """The epochs and steps ceilings, on the validated params and, for kinds that train with the original
    model's recipe when none is given (``inherits_recipe``: retrain, audit), on that recipe."""
    inherits_recipe = job_kind(kind).inherits_recipe
    for unit, ceiling, setting in (
        ("epochs", settings.max_job_epochs, "LETHE_MAX_JOB_EPOCHS"),
        ("steps", settings.max_job_steps, "LETHE_MAX_JOB_STEPS"),
    ):
        found = [(("params", *path), value) for path, value in _counted_fields(params, unit)]
        if inherits_recipe and params.get("recipe") is None and model is not None:
            found += [
                (("model", "train_recipe", *path), v)
                for path, v in _counted_fields(model.train_recipe or {}, unit)
            ]
        over = [(path, value) for path, value in found if value > ceiling]
        if over:
            raise Unprocessable(
                f"{len(over)} {unit} setting(s) exceed the ceiling of {ceiling} {unit} per job"
                f" ({setting}): " + ", ".join(f"{'.'.join(map(str, p))}={v}" for p, v in over),
                code=f"{unit}-over-limit",
                errors=[
                    {"loc": list(path), "msg": f"at most {ceiling} {unit}", "type": f"{unit}_over_limit"}
                    for path, _ in over
                ],
            )


def estimated_dataset_bytes(config: BaseModel) -> int | None:
    """float32 bytes of a generated image dataset's inputs, from its config (None: no size knobs)."""
    fields = config.model_dump()
    if not {"n_train", "n_test", "channels", "image_size"} <= fields.keys():
        return None
    samples = int(fields["n_train"]) + int(fields["n_test"])
    return samples * int(fields["channels"]) * int(fields["image_size"]) ** 2 * FLOAT32_BYTES


def check_builtin_dataset(name: str, config: dict[str, Any], settings: Settings) -> None:
    """Refuse a built-in dataset whose arrays would exceed the dataset size limit, before generating it
    (the API process would otherwise allocate them). Unknown names and bad configs are left to the builder's
    own 422s."""
    from workers.engine.datasets import DATASETS
    from workers.engine.errors import UnknownEntryError

    try:
        spec = DATASETS.get(name)
        parsed = spec.config_model.model_validate(config)
    except (UnknownEntryError, ValidationError):
        return
    size = estimated_dataset_bytes(parsed)
    limit = settings.max_dataset_uncompressed_bytes
    if size is not None and size > limit:
        raise Unprocessable(
            f"this config of dataset '{name}' would generate about {size} bytes of inputs; the limit is"
            f" {limit} bytes (LETHE_MAX_DATASET_UNCOMPRESSED_BYTES): lower n_train, n_test, channels or"
            " image_size",
            code="dataset-too-large",
        )


def enforce_time_budget(
    factory: sessionmaker[Session], settings: Settings, *, now: datetime | None = None
) -> list[uuid.UUID]:
    """Fail running jobs whose current attempt has run longer than the budget.

    One conditional UPDATE per job (still running, still over budget); the worker's next heartbeat finds
    the job no longer running and stops without writing results (LeaseLost). Returns the failed jobs."""
    budget = settings.job_time_budget_seconds
    if budget is None:
        return []
    now = now or utcnow()
    cutoff = now - timedelta(seconds=budget)
    failed: list[uuid.UUID] = []
    with session_scope(factory) as session:
        over = session.execute(
            select(Job.id, Job.attempt).where(Job.status == JobStatus.running, Job.started_at < cutoff)
        ).all()
        for job_id, attempt in over:
            error = {
                "code": "time-budget-exceeded",
                "detail": f"the job ran longer than its time budget of {budget:g} s"
                " (LETHE_JOB_TIME_BUDGET_SECONDS) and was stopped",
            }
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running, Job.started_at < cutoff)
                .values(
                    status=JobStatus.failed,
                    finished_at=now,
                    lease_expires_at=None,
                    error=error,
                    version=Job.version + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                add_event(session, job_id, "failed", attempt, error)
                failed.append(job_id)
    return failed
