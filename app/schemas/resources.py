from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

NAME_MAX = 200
MAX_FORGET_INDICES = 10_000_000


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    source: str
    builtin: str | None
    config: dict[str, Any]
    task: str
    num_classes: int
    n_train: int
    n_test: int
    input_shape: list[int]
    class_counts: list[int]
    sha256: str
    size_bytes: int
    created_at: datetime


class DatasetPage(BaseModel):
    data: list[DatasetOut]
    next_cursor: str | None
    has_more: bool
    builtins: list[dict[str, Any]] = Field(description="The built-in dataset registry, with config schemas.")


class BuiltinDatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builtin: str = Field(description="Name from GET /v1/datasets/builtins, e.g. 'digits' or 'procedural'.")
    config: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX)


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    architecture: str
    arch_config: dict[str, Any]
    dataset_id: uuid.UUID | None
    source: str
    job_id: uuid.UUID | None
    train_recipe: dict[str, Any] | None
    seed: int | None
    sha256: str
    size_bytes: int
    num_params: int
    mask_sha256: str | None = Field(None, description="Set for pruned models: their sparsity masks' hash.")
    sparsity: float | None = Field(None, description="Fraction of prunable weights pruned (pruned models).")
    created_at: datetime


class IndicesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["indices"]
    indices: list[StrictInt] = Field(
        max_length=MAX_FORGET_INDICES, description="Train-split indices; no duplicates."
    )


class ClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["class"]
    class_: StrictInt = Field(alias="class", ge=0, description="Forget every train sample of this class.")


class RandomSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["random"]
    fraction: float = Field(
        gt=0, lt=1, allow_inf_nan=False, description="Fraction of the train split to forget."
    )
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1)


ForgetSpec = Annotated[IndicesSpec | ClassSpec | RandomSpec, Field(discriminator="kind")]


class ForgetSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX)
    spec: ForgetSpec


class ForgetSetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    dataset_id: uuid.UUID
    name: str
    kind: str
    spec: dict[str, Any]
    forget_class: int | None
    size: int
    sha256: str
    job_id: uuid.UUID | None = Field(None, description="The search job that produced this forget set.")
    created_at: datetime


class ForgetSetIndices(BaseModel):
    id: uuid.UUID
    sha256: str
    indices: list[int]
