"""Typed views of the API's resources.

Every model accepts fields it does not know (``extra="allow"``): a newer server may add fields, and an
older client must still read its answers. Statuses are plain strings for the same reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

JOB_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
REQUEST_TERMINAL = frozenset({"issued", "failed", "cancelled"})
CAMPAIGN_TERMINAL = frozenset({"finished", "cancelled"})


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


T = TypeVar("T", bound=BaseModel)


class Page(Resource, Generic[T]):
    """One page of a list: pass ``next_cursor`` as ``cursor`` to get the next one."""

    data: list[T]
    next_cursor: str | None = None
    has_more: bool = False


class Problem(Resource):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str = "about:blank"
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    code: str | None = None
    errors: list[dict[str, Any]] | None = None


class JobProgress(Resource):
    phase: str | None = None
    step: int | None = None
    total: int | None = None
    fraction: float | None = None


class Job(Resource):
    id: uuid.UUID
    kind: str
    method: str | None = None
    status: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    device_requested: str | None = None
    dataset_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None
    forget_set_id: uuid.UUID | None = None
    output_model_id: uuid.UUID | None = None
    architecture: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    attempt: int = 0
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    code_version: str | None = None
    campaign_id: uuid.UUID | None = None
    version: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in JOB_TERMINAL


class Dataset(Resource):
    id: uuid.UUID
    name: str
    source: str
    builtin: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    task: str
    num_classes: int
    n_train: int
    n_test: int
    input_shape: list[int]
    class_counts: list[int] = Field(default_factory=list)
    sha256: str | None = None
    size_bytes: int = 0
    created_at: datetime


class DatasetPage(Page[Dataset]):
    builtins: list[dict[str, Any]] = Field(default_factory=list)


class Model(Resource):
    id: uuid.UUID
    name: str
    architecture: str
    arch_config: dict[str, Any] = Field(default_factory=dict)
    dataset_id: uuid.UUID | None = None
    source: str
    job_id: uuid.UUID | None = None
    seed: int | None = None
    sha256: str | None = None
    size_bytes: int = 0
    num_params: int = 0
    sparsity: float | None = None
    created_at: datetime


class ForgetSet(Resource):
    id: uuid.UUID
    dataset_id: uuid.UUID
    name: str
    kind: str
    spec: dict[str, Any] = Field(default_factory=dict)
    forget_class: int | None = None
    size: int
    sha256: str | None = None
    job_id: uuid.UUID | None = None
    created_at: datetime


class ComparisonRow(Resource):
    job_id: uuid.UUID
    kind: str
    method: str | None = None
    model_id: uuid.UUID | None = None
    seed: int
    metrics: dict[str, float] = Field(default_factory=dict)
    rte_seconds: float | None = None
    avg_gap: float | None = None
    flags: list[str] = Field(default_factory=list)


class Comparison(Resource):
    forget_set_id: uuid.UUID
    task: str = "classification"
    columns: list[str] = Field(default_factory=list)
    rows: list[ComparisonRow] = Field(default_factory=list)


class CampaignProgress(Resource):
    total: int
    by_status: dict[str, int] = Field(default_factory=dict)
    fraction: float = 0.0


class Campaign(Resource):
    id: uuid.UUID
    name: str
    model_id: uuid.UUID
    status: str
    stage: str
    spec: dict[str, Any] = Field(default_factory=dict)
    chosen_params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    finished_at: datetime | None = None
    version: int = 0
    progress: CampaignProgress | None = None


class Stat(Resource):
    mean: float | None = None
    std: float | None = None
    n: int = 0


class CampaignTableRow(Resource):
    forget_set_id: uuid.UUID
    forget_set_name: str
    row: str
    method: str | None = None
    metrics: dict[str, Stat] = Field(default_factory=dict)
    avg_gap: Stat = Field(default_factory=Stat)
    rte_seconds: Stat = Field(default_factory=Stat)
    flags: list[str] = Field(default_factory=list)


class CampaignTable(Resource):
    campaign_id: uuid.UUID
    columns: list[str] = Field(default_factory=list)
    rows: list[CampaignTableRow] = Field(default_factory=list)


class PolicyRef(Resource):
    id: uuid.UUID
    name: str
    version: int


class Policy(Resource):
    id: uuid.UUID
    name: str
    version: int
    description: str | None = None
    rules: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime
    warnings: list[dict[str, Any]] = Field(default_factory=list)


class DeletionRequestProgress(Resource):
    fraction: float = 0.0
    jobs: dict[str, str] = Field(default_factory=dict)


class DeletionRequest(Resource):
    id: uuid.UUID
    name: str | None = None
    status: str
    model_id: uuid.UUID
    forget_set_id: uuid.UUID
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    device: str
    policy: PolicyRef
    jobs: dict[str, Any] = Field(default_factory=dict)
    progress: DeletionRequestProgress = Field(default_factory=DeletionRequestProgress)
    error: dict[str, Any] | None = None
    report_id: uuid.UUID | None = None
    verdict: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    version: int = 0

    @property
    def done(self) -> bool:
        return self.status in REQUEST_TERMINAL
