"""Params of the generative jobs (pydantic only, torch-free: the API validates submissions with them).

A generative model is stored as one of two registered architectures: ``unet_ddpm`` (a multi-step
class-conditional DDPM teacher, config :class:`DiffusionModelConfig`) or ``unet_one_step`` (an SFD one-step
generator: the same U-Net, plus the ``t_init`` its generator function G(z, c) is defined at). The jobs:

- ``train`` (method ``ddpm``): :class:`DDPMTrainParams` on a classification image dataset.
- ``retrain`` (method ``ddpm_retrain``): the gold reference, the teacher's recipe with the forget set's class
  excluded, then the generative evaluation.
- ``unlearn`` (methods ``sfd`` and ``sfd_control``): :class:`SFDJobParams`; the class to forget comes from the
  job's (class) forget set, and ``sfd_control`` is the distil-only control through the same code.
- ``evaluate``: :class:`GenerativeEvaluation` on a teacher or a generator with a class forget set.
- ``sample``: :class:`SampleJobParams`, images (npz) and a PNG grid, classes x samples.

Every job that evaluates also stores a sample grid (one row per class, the forgotten class included, drawn
with the evaluation's fixed seed so that rows of a comparison show the same noise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.engine.diffusion.params import (
    MAX_CLASSES,
    MAX_TIMESTEPS,
    ClassifierParams,
    ClassIndex,
    DDPMTrainParams,
    DiffusionModelConfig,
    GenerativeEvalParams,
    SampleParams,
    SFDParams,
)

TEACHER = "unet_ddpm"
GENERATOR = "unet_one_step"
GENERATIVE_ARCHITECTURES = (TEACHER, GENERATOR)
MAX_GRID_PER_CLASS = 64
MAX_GRID_SCALE = 16
DEFAULT_GRID_PER_CLASS = 8
DEFAULT_GRID_SCALE = 4
MAX_SAMPLE_PER_CLASS = 1000
DEFAULT_SAMPLE_PER_CLASS = 8
# The metric classifier is trained with a fixed seed, not the job's: every row of a comparison must be
# scored by the same classifier (it is cached per dataset and params in the artifact store).
METRIC_CLASSIFIER_SEED = 0


class OneStepGeneratorConfig(DiffusionModelConfig):
    """An SFD one-step generator: the teacher's U-Net config plus the t_init at which G(z, c) =
    sigma_init * (z - eps(b_init z, t_init, c)) is evaluated."""

    t_init: int = Field(ge=1, le=MAX_TIMESTEPS, description="The generator's t* (SFD's t_init).")

    @model_validator(mode="after")
    def _t_init_on_schedule(self) -> OneStepGeneratorConfig:
        if self.t_init >= self.timesteps:
            raise ValueError(f"t_init must be smaller than timesteps ({self.timesteps})")
        return self


def teacher_config(config: DiffusionModelConfig) -> DiffusionModelConfig:
    """The U-Net config of the teacher a model shares its network with: a one-step generator's config without
    its ``t_init`` (SFD starts the generator from the teacher's weights and keeps its config), a teacher's
    own config."""
    return DiffusionModelConfig.model_validate(config.model_dump(exclude={"t_init"}))


def same_network(
    architecture: str, arch_config: Mapping[str, Any], teacher_arch_config: Mapping[str, Any]
) -> bool:
    """Whether a ``unet_ddpm`` teacher with ``teacher_arch_config`` has the network of a generative model of
    ``architecture`` with ``arch_config`` (so that its weights load into that model's U-Net and the two are
    sampled alike, each with its own sampler). False for a non-generative architecture or a config that does
    not parse."""
    if architecture not in GENERATIVE_ARCHITECTURES:
        return False
    try:
        mine = DiffusionModelConfig.model_validate({k: v for k, v in arch_config.items() if k != "t_init"})
        theirs = DiffusionModelConfig.model_validate(dict(teacher_arch_config))
    except ValidationError:
        return False
    return mine == theirs


class GenerativeEvaluation(BaseModel):
    """How a generative model is scored: samples drawn (multi-step teachers with ``sampler``; one-step
    generators use one network evaluation), the metric classifier, and the sample grid."""

    model_config = ConfigDict(extra="forbid")

    samples: GenerativeEvalParams = Field(
        default_factory=GenerativeEvalParams, description="How many images are generated for the metrics."
    )
    sampler: SampleParams = Field(
        default_factory=SampleParams,
        description="How multi-step teachers are sampled (ignored for generators).",
    )
    classifier: ClassifierParams = Field(
        default_factory=ClassifierParams,
        description="The metric classifier (trained once per dataset and params, then reused).",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Seed of the evaluation's noise: the same for every row so that rows are comparable.",
    )
    grid_per_class: int = Field(
        default=DEFAULT_GRID_PER_CLASS, ge=1, le=MAX_GRID_PER_CLASS, description="Grid images per class."
    )


class DDPMRetrainParams(BaseModel):
    """The gold reference: a DDPM trained from scratch with the forget set's class left out."""

    model_config = ConfigDict(extra="forbid")

    recipe: DDPMTrainParams | None = Field(
        default=None,
        description="Training recipe (null: the teacher's recorded one); the forget class is excluded.",
    )
    evaluation: GenerativeEvaluation = Field(
        default_factory=GenerativeEvaluation, description="How the gold model is scored."
    )


class SFDJobParams(SFDParams):
    """SFD as a job: the class to forget is the forget set's; ``forget_class`` may be omitted, and when
    given must agree with it. ``override_class`` (default 1, the reference's) must differ from it."""

    forget_class: ClassIndex | None = Field(  # type: ignore[assignment]
        default=None, description="Omit: the forget set's class. If given, it must equal that class."
    )
    evaluation: GenerativeEvaluation = Field(
        default_factory=GenerativeEvaluation, description="How the one-step generator is scored."
    )

    def engine_params(self, forget_class: int, *, control: bool) -> SFDParams:
        """The engine's params for forgetting ``forget_class`` (the distil-only control if ``control``)."""
        if self.forget_class is not None and self.forget_class != forget_class:
            raise ValueError(
                f"params.forget_class {self.forget_class} differs from the forget set's class {forget_class}"
            )
        values = self.model_dump(exclude={"evaluation"})
        values["forget_class"] = forget_class
        params = SFDParams.model_validate(values)
        return params.distill_only() if control else params


class SampleJobParams(BaseModel):
    """A ``sample`` job: ``n_per_class`` images of each of ``classes`` (all by default), ordered class by
    class, stored as an npz (uint8 images, int64 labels) and a PNG grid with one class per row."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassIndex] | None = Field(
        default=None, max_length=MAX_CLASSES, description="Classes to sample (null: all of the model's)."
    )
    n_per_class: int = Field(default=DEFAULT_SAMPLE_PER_CLASS, ge=1, le=MAX_SAMPLE_PER_CLASS)
    sampler: SampleParams = Field(
        default_factory=SampleParams,
        description="How a multi-step teacher is sampled (ignored for generators).",
    )
    grid_scale: int = Field(default=DEFAULT_GRID_SCALE, ge=1, le=MAX_GRID_SCALE, description="Pixel zoom.")

    @model_validator(mode="after")
    def _unique_classes(self) -> SampleJobParams:
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat a class")
        return self


__all__ = [
    "GENERATIVE_ARCHITECTURES",
    "GENERATOR",
    "METRIC_CLASSIFIER_SEED",
    "TEACHER",
    "DDPMRetrainParams",
    "DDPMTrainParams",
    "GenerativeEvaluation",
    "OneStepGeneratorConfig",
    "SFDJobParams",
    "SampleJobParams",
    "same_network",
    "teacher_config",
]
