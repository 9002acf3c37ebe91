"""Registries: what can be run. Dashboards render forms from the params schemas."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from app.api.deps import Reader
from app.schemas.common import RegistryEntry
from app.schemas.jobs import JobKindOut
from workers.engine.architectures import ARCHITECTURES
from workers.engine.audit.params import AuditParams
from workers.engine.datasets import DATASETS
from workers.engine.job_kinds import JOB_KINDS
from workers.engine.methods import METHODS
from workers.engine.paper_presets import PAPER_PRESETS
from workers.engine.task_types import TaskType

router = APIRouter(tags=["discovery"])


def builtin_datasets() -> list[dict[str, Any]]:
    return [
        RegistryEntry(
            name=d.name,
            description=d.description,
            task_types=[d.task_type.value],
            params_schema=d.config_model.model_json_schema(),
        ).model_dump()
        for d in DATASETS
    ]


@router.get("/methods", response_model=list[RegistryEntry])
def list_methods(_: Reader) -> list[RegistryEntry]:
    return [
        RegistryEntry(
            name=m.name,
            description=m.description,
            task_types=[t.value for t in m.task_types],
            params_schema=m.params_model.model_json_schema(),
            job_kind=m.job_kind,
        )
        for m in METHODS
    ]


@router.get("/architectures", response_model=list[RegistryEntry])
def list_architectures(_: Reader) -> list[RegistryEntry]:
    return [
        RegistryEntry(
            name=a.name,
            description=a.description,
            task_types=[t.value for t in a.task_types],
            params_schema=a.config_model.model_json_schema(),
        )
        for a in ARCHITECTURES
    ]


@router.get("/datasets/builtins", response_model=list[RegistryEntry])
def list_builtin_datasets(_: Reader) -> list[dict[str, Any]]:
    return builtin_datasets()


@router.get("/audit-params")
def audit_params_schema(_: Reader) -> dict[str, Any]:
    """JSON schema of an audit job's ``params`` (the audited method, K, F, attacks, ...)."""
    return AuditParams.model_json_schema()


@router.get("/job-kinds", response_model=list[JobKindOut])
def list_job_kinds(_: Reader) -> list[JobKindOut]:
    """The kinds a job can be (the job-kind registry): the inputs each needs and refuses, its params."""
    kinds = []
    for spec in JOB_KINDS:
        defaults = {task.value: spec.default_method(task) for task in spec.task_types}
        kinds.append(
            JobKindOut(
                name=spec.name,
                description=spec.description,
                required=list(spec.required),
                forbidden=list(spec.forbidden),
                task_types=[task.value for task in spec.task_types],
                method_use=spec.method_use.value,
                method_kind=spec.method_kind,
                default_methods={task: name for task, name in defaults.items() if name is not None},
                params_schemas={
                    task.value: model.model_json_schema()
                    for task in TaskType
                    if (model := spec.params_model(task)) is not None
                },
                produces=sorted(spec.produces),
                cacheable=spec.cacheable,
            )
        )
    return kinds


@router.get("/paper-presets")
def list_paper_presets(_: Reader) -> list[dict[str, Any]]:
    """Paper-scale presets: a published experiment's architecture, training recipe (a job's
    ``params.recipe.base``), retrain params, methods and forget sets (a campaign's ``paper_preset``)."""
    return [asdict(preset) for preset in PAPER_PRESETS]
