from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from app.models.job import JobStatus
from workers.engine.job_kinds import JOB_KINDS


def registered_kind(name: str) -> str:
    """A job kind is whatever the job-kind registry holds (a kind registered after start-up included)."""
    if name not in JOB_KINDS:
        raise ValueError(f"unknown job kind {name!r}; one of {', '.join(JOB_KINDS.names())}")
    return name


def _list_registered_kinds(schema: dict[str, Any]) -> None:
    schema["enum"] = JOB_KINDS.names()


# The registry's kinds, checked on input and listed in the OpenAPI schema when it is generated.
RegisteredKind = Annotated[
    str,
    AfterValidator(registered_kind),
    Field(description="A job kind (GET /v1/job-kinds).", json_schema_extra=_list_registered_kinds),
]

MAX_SEED = 2**31 - 1


class JobCreate(BaseModel):
    """Submit a job. Which fields are needed depends on ``kind``:

    - ``train``: ``dataset_id``, ``architecture`` (+ ``arch_config``), ``params`` (a TrainParams).
    - ``retrain``: ``model_id`` (the original), ``forget_set_id``; ``params.recipe`` defaults to the
      original's recipe.
    - ``unlearn``: ``model_id``, ``forget_set_id``, ``method`` (see GET /v1/methods), ``params``.
    - ``evaluate``: ``model_id``, ``forget_set_id``.
    - ``prune`` / ``worst_case_search``: ``model_id`` (trained on a stored dataset), ``params``.
    - ``audit``: ``model_id`` (the original), ``forget_set_id``, ``params`` (GET /v1/audit-params:
      the audited method and its params, shadows K, forget sets per shadow F, attacks).
    - ``sample``: ``model_id`` of a generative model (trained on a stored dataset), ``params`` (classes,
      n_per_class, sampler): images as npz and a PNG grid.

    Generative models (architectures ``unet_ddpm`` / ``unet_one_step``): ``train`` runs method ``ddpm``,
    ``retrain`` ``ddpm_retrain`` (the gold reference without the class), ``unlearn`` ``sfd`` or
    ``sfd_control``; retrain / unlearn / evaluate need a forget set of kind ``class``, and ``evaluate`` takes
    optional ``params`` (the generative evaluation: samples, sampler, metric classifier, grid).
    """

    model_config = ConfigDict(extra="forbid")

    kind: RegisteredKind
    method: str | None = Field(
        None, max_length=100, description="Method name from GET /v1/methods (unlearn jobs)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Validated against the method's params schema."
    )
    seed: StrictInt | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed; drawn and recorded when omitted."
    )
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    dataset_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None
    forget_set_id: uuid.UUID | None = None
    architecture: str | None = Field(None, max_length=100)
    arch_config: dict[str, Any] = Field(default_factory=dict)
    reuse_cached: bool = Field(
        True,
        description="Retrain and evaluate jobs: reuse the tenant's job with identical inputs (model and "
        "mask, forget set, recipe, seed, device, code version) instead of running it again.",
    )


class JobKindOut(BaseModel):
    """What a job kind needs and gives: the fields of its registry entry a client can act on."""

    name: str
    description: str
    required: list[str] = Field(description="Submission fields the kind needs.")
    forbidden: list[str] = Field(description="Submission fields the kind refuses.")
    task_types: list[str]
    method_use: str = Field(description="none: no method; named: `method` names one; in_params: in params")
    method_kind: str | None = Field(None, description="Methods (GET /v1/methods) of this job_kind are named.")
    default_methods: dict[str, str] = Field(description="The method run when none is named, by task type.")
    params_schemas: dict[str, dict[str, Any]] = Field(
        description="JSON schema of `params` by task type (kinds that run a method take its params instead)."
    )
    produces: list[str]
    cacheable: bool


class JobProgress(BaseModel):
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    fraction: float | None = None
    info: dict[str, Any] | None = None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    method: str | None
    status: JobStatus
    params: dict[str, Any]
    seed: int
    device_requested: str
    dataset_id: uuid.UUID | None
    model_id: uuid.UUID | None
    forget_set_id: uuid.UUID | None
    output_model_id: uuid.UUID | None
    architecture: str | None
    arch_config: dict[str, Any] | None
    progress: dict[str, Any]
    attempt: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    environment: dict[str, Any] | None
    timings: dict[str, Any] | None
    code_version: str
    campaign_id: uuid.UUID | None = None
    cache_key: str | None = None
    version: int
    metrics: dict[str, float] = Field(default_factory=dict)


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: datetime
    type: str
    attempt: int
    data: dict[str, Any]


class ComparisonRow(BaseModel):
    job_id: uuid.UUID
    kind: str
    method: str | None
    model_id: uuid.UUID | None
    output_model_id: uuid.UUID | None
    seed: int
    device: str | None
    metrics: dict[str, float]
    rte_seconds: float | None = Field(None, description="The method's own time (RTE), excluding evaluation.")
    avg_gap: float | None = Field(
        None, description="Mean |UA, MIA-Efficacy, RA, TA - retrain|; null without a retrain."
    )
    reference_job_id: uuid.UUID | None = Field(
        None, description="The retrain job the gap is measured against."
    )
    flags: list[str] = Field(
        default_factory=list,
        description="Guardrail rules the result breaks (ra-collapse, ta-collapse, ua-overshoot, "
        "mia-overshoot, single-class; regression: retain-mae-rise, test-mae-rise, forget-mae-overshoot; "
        "generative: retain-accuracy-collapse); utility rules need an evaluate job of the original here.",
    )
    grid_url: str | None = Field(
        None, description="Generative rows: the sample grid of the evaluated model (one class per row)."
    )


class Comparison(BaseModel):
    forget_set_id: uuid.UUID
    task: str = Field(
        "classification",
        description="classification / regression / generative: which metrics the columns are.",
    )
    columns: list[str]
    rows: list[ComparisonRow]
