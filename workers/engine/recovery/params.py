"""Validated params of a ``recovery`` job (pydantic only, torch-free: the API validates submissions).

The job audits an unlearned model (the job's ``model_id``) on its forget set against two other models: the
**original** it was unlearned from and the **retrain** of that original without the forget set (the control:
what "recovery" looks like for a model that never saw the data). Left out, both are resolved by the API at
submission (``app.services.jobs.controls``): the original from the job that produced the unlearned model,
the retrain as the comparison view picks it (a succeeded retrain job of that original on the same forget set,
same seed preferred); the resolved ids are stored in the job's params.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.engine.diffusion.job_params import GenerativeEvaluation

RelearnSource = Literal["forget_subset", "retain_neighbours", "unrelated"]
ALL_SOURCES: tuple[RelearnSource, ...] = ("forget_subset", "retain_neighbours", "unrelated")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7)
DEFAULT_STEPS = (0, 1, 2, 5, 10, 20, 50)
MAX_RELEARN_STEPS = 2000
# The params fields that name the two control models (read by the API's resolution and the worker's loader).
ORIGINAL_FIELD = "original_model_id"
RETRAIN_FIELD = "retrain_model_id"


class RecoveryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    original_model_id: uuid.UUID | None = Field(
        default=None,
        description="The model the audited one was unlearned from (default: the input model of the job that"
        " produced it).",
    )
    retrain_model_id: uuid.UUID | None = Field(
        default=None,
        description="The control: the original retrained without the forget set (default: the forget set's"
        " retrain of the original, as the comparison view picks it).",
    )
    quantization: bool = Field(default=True, description="Run int8, 4-bit round-to-nearest and NF4-style.")
    sparsities: list[float] = Field(
        default=list(DEFAULT_SPARSITIES),
        max_length=10,
        description="Global magnitude-pruning sparsities, each in (0, 1).",
    )
    relearn_sources: list[RelearnSource] = Field(
        default=list(ALL_SOURCES),
        max_length=3,
        description="forget_subset: a seeded subset of the forget set (the curves are then measured on the"
        " rest of it); retain_neighbours: the retain samples nearest the forget set in input space;"
        " unrelated: random retain samples farther from the forget set than the median retain sample.",
    )
    relearn_steps: list[int] = Field(
        default=list(DEFAULT_STEPS),
        min_length=1,
        max_length=32,
        description="The optimiser-step grid of the recovery curves (0 is always added).",
    )
    relearn_samples: int = Field(
        default=32,
        ge=1,
        le=100_000,
        description="Samples per relearning source (the forget subset takes at most half of the forget set).",
    )
    relearn_lr: float = Field(default=1e-3, gt=0, le=1.0, description="Adam learning rate of relearning.")
    relearn_batch_size: int = Field(default=16, ge=1, le=4096)
    recover_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A model has recovered once its forget-set metric has come back this fraction of the way"
        " from the retrain's (before relearning) to the original's.",
    )
    min_gap: float = Field(
        default=1.0,
        ge=0,
        description="Below this gap between the original and the retrain on the forget set (accuracy points;"
        " for regression, MAE units) there is nothing to recover: scores are null, with the reason.",
    )

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, values: list[float]) -> list[float]:
        if any(not 0.0 < v < 1.0 for v in values):
            raise ValueError("every sparsity must lie strictly between 0 and 1")
        return sorted(set(values))

    @field_validator("relearn_steps")
    @classmethod
    def _steps(cls, values: list[int]) -> list[int]:
        if any(v < 0 or v > MAX_RELEARN_STEPS for v in values):
            raise ValueError(f"relearning steps must lie in [0, {MAX_RELEARN_STEPS}]")
        return sorted({0, *values})

    @field_validator("relearn_sources")
    @classmethod
    def _sources(cls, values: list[RelearnSource]) -> list[RelearnSource]:
        return [source for source in ALL_SOURCES if source in values]


class GenerativeRecoveryParams(RecoveryParams):
    """A recovery audit of a generative model (a ``unet_one_step`` generator or a ``unet_ddpm`` teacher) on a
    class forget set. The forget metric is the forget-class rate in % (the share of images generated for the
    forgotten class that the metric classifier assigns to it), so ``min_gap`` and the policy figures read in
    rate points. ``evaluation`` is how every model is sampled and scored, as an ``evaluate`` job with the same
    body would (same metric classifier, same noise for the same seed)."""

    relearn_lr: float = Field(
        default=2e-4, gt=0, le=1.0, description="Adam learning rate of relearning (the DDPM teacher's)."
    )
    evaluation: GenerativeEvaluation = Field(
        default_factory=GenerativeEvaluation,
        description="How each model is sampled and scored (the evaluate job's params).",
    )
