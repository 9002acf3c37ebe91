from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from app.schemas.common import NAME_MAX, NAME_PATTERN  # the shared name rules (control and bidi characters)

MAX_FORGET_INDICES = 10_000_000
# Indices are stored as int64: anything beyond that range can only be out of range anyway.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
    class_counts: list[int] = Field(description="Train samples per class; empty for regression datasets.")
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
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)


class DataRootDatasetCreate(BaseModel):
    """A dataset in the operator's data root (``LETHE_DATA_ROOT``), named by format and relative path."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["data_root"] = "data_root"
    format: str = Field(
        max_length=50,
        description="cifar10, cifar100, svhn, mnist, fashion_mnist or image_folder (torchvision's on-disk "
        "formats; the README's data-root table lists the files each expects).",
    )
    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[^\x00-\x1f\x7f\\]+$",
        description="Directory relative to the data root, e.g. 'cifar-10-batches-py'. Absolute paths, "
        "'..' and symbolic links that leave the root are refused.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="The format's options: normalization {mean, std} per channel (every format); label "
        "(cifar100: fine | coarse); image_size, channels, test_fraction, split_seed (image_folder).",
    )
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)


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
    sha256: str = Field(
        description=(
            "The identity of the weights: SHA-256 over the tensors (names, dtypes, shapes, bytes) in name "
            "order, independent of the file's metadata and tensor order; bit-identical models share it. "
            "Provenance (source, job_id) is beside it."
        )
    )
    size_bytes: int
    num_params: int
    mask_sha256: str | None = Field(None, description="Set for pruned models: their sparsity masks' hash.")
    sparsity: float | None = Field(None, description="Fraction of prunable weights pruned (pruned models).")
    created_at: datetime


class IndicesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["indices"]
    indices: list[Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]] = Field(
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


class TargetRangeSpec(BaseModel):
    """Regression datasets: forget every training sample whose target lies in [low, high] (both inclusive;
    a missing bound is open), e.g. ``{"kind": "target_range", "high": 30}`` for "every target <= 30"."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["target_range"]
    low: float | None = Field(
        None, allow_inf_nan=False, description="Smallest target forgotten (inclusive); null = no lower bound."
    )
    high: float | None = Field(
        None, allow_inf_nan=False, description="Largest target forgotten (inclusive); null = no upper bound."
    )

    @model_validator(mode="after")
    def _bounded(self) -> TargetRangeSpec:
        if self.low is None and self.high is None:
            raise ValueError("give low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


ForgetSpec = Annotated[IndicesSpec | ClassSpec | RandomSpec | TargetRangeSpec, Field(discriminator="kind")]


class ForgetSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: uuid.UUID
    name: str | None = Field(None, min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)
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


class ShadowModelOut(BaseModel):
    """A model an audit trained or unlearned, kept for reuse by later audits of this tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    key: str = Field(description="SHA-256 of everything that determines the model (its inputs).")
    role: str = Field(description="base | retrain | unlearned | pool")
    architecture: str
    dataset_sha256: str
    spec: dict[str, Any] = Field(description="The key's material: recipe, subset digest, seed, method, ...")
    sha256: str
    size_bytes: int
    job_id: uuid.UUID | None = Field(description="The audit job that produced it.")
    use_count: int = Field(description="How many later audits reused it.")
    last_used_at: datetime | None
    created_at: datetime
