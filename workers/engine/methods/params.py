"""Validated parameter models of the registered methods (pydantic only, torch-free).

Defaults reproduce the OPTML-Group reference code (optml.md §1.3-§2.3); deviations are noted per field.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65_536
MAX_LEARNING_RATE = 10.0

Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS, description="Passes over the training data.")]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE, description="Samples per optimisation step.")]
LearningRate = Annotated[
    float,
    Field(gt=0.0, le=MAX_LEARNING_RATE, allow_inf_nan=False, description="Peak SGD learning rate."),
]
Momentum = Annotated[
    float, Field(ge=0.0, lt=1.0, allow_inf_nan=False, description="SGD (heavy-ball) momentum.")
]
WeightDecay = Annotated[
    float,
    Field(ge=0.0, le=1.0, allow_inf_nan=False, description="L2 weight decay, applied to every parameter."),
]
Schedule = Annotated[
    Literal["constant", "multistep", "cosine"],
    Field(
        description=(
            "Learning-rate schedule: 'constant'; 'multistep' multiplies the LR by gamma at each milestone "
            "(per epoch, like torch MultiStepLR); 'cosine' decays it to 0 over all steps (per step)."
        )
    ),
]
Milestones = Annotated[
    list[Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]],
    Field(
        max_length=16,
        description=(
            "For 'multistep': strictly increasing FRACTIONS of the total epochs at which the LR drops, "
            "rounded to the nearest epoch (the reference's 91 and 136 of 182 epochs are 0.5 and 0.75)."
        ),
    ),
]
Gamma = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, description="LR factor per milestone.")]
Augment = Annotated[
    bool,
    Field(
        description=(
            "Random crop (zero padding of size/8) + horizontal flip on each training batch, as the "
            "reference's RandomCrop(32, 4) + RandomHorizontalFlip. Applied only to images of at least "
            "16 x 16 pixels; ignored (and reported as not applied) for smaller images and non-image inputs."
        )
    ),
]
Optimizer = Annotated[Literal["sgd"], Field(description="Optimiser; SGD is the only one the reference uses.")]

REFERENCE_MILESTONES = [0.5, 0.75]


class TrainRecipe(BaseModel):
    """How to train a model from its current weights: the reference original-model recipe by default
    (182 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 256, x0.1 at epochs 91/136, crop+flip;
    optml.md §1.3). The reference also keeps the best checkpoint by validation accuracy; Lethe returns the
    final weights (deviation: there is no validation split to select on)."""

    model_config = ConfigDict(extra="forbid")

    epochs: Epochs = 182
    batch_size: BatchSize = 256
    lr: LearningRate = 0.1
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    schedule: Schedule = "multistep"
    milestones: Milestones = Field(default_factory=lambda: list(REFERENCE_MILESTONES))
    gamma: Gamma = 0.1
    augment: Augment = True
    optimizer: Optimizer = "sgd"

    @field_validator("milestones")
    @classmethod
    def _strictly_increasing(cls, milestones: list[float]) -> list[float]:
        if any(later <= earlier for earlier, later in pairwise(milestones)):
            raise ValueError("milestones must be strictly increasing")
        return milestones


class TrainParams(BaseModel):
    """Parameters of the ``train`` method, which trains the original model from a seeded random init."""

    model_config = ConfigDict(extra="forbid")

    recipe: TrainRecipe = Field(default_factory=TrainRecipe, description="Training recipe.")


class RetrainParams(BaseModel):
    """Parameters of ``retrain``, the exact-unlearning gold standard: train from a seeded random init on the
    retain set only (optml.md §2.2). ``recipe=None`` means "the original model's recipe", which the caller
    supplies; the reference retrains for 160 instead of 182 epochs with otherwise the same settings, so pass
    an explicit recipe to reproduce that."""

    model_config = ConfigDict(extra="forbid")

    recipe: TrainRecipe | None = Field(
        default=None,
        description="Training recipe; null reuses the recipe the original model was trained with.",
    )


class FinetuneParams(TrainRecipe):
    """Parameters of ``ft``: continue training the original model on the retain set only.

    Reference FT (Unlearn-Sparse unlearn/FT.py, README ``--unlearn FT --unlearn_lr 0.01
    --unlearn_epochs 10``; optml.md §2.3): SGD lr 0.01, momentum 0.9, weight decay 5e-4, 10 epochs,
    batch 256, constant LR (the reference's MultiStepLR milestones 91/136 are never reached in 10 epochs),
    train mode with crop+flip augmentation. No deviations in the defaults; any schedule may be chosen.
    """

    epochs: Epochs = 10
    lr: LearningRate = 0.01
    schedule: Schedule = "constant"
