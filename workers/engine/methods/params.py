"""Validated parameter models of the registered methods (pydantic only, torch-free).

Every method's params carry a ``preset``: ``"reference"`` fills the fields it does not set with the values of
the reference code (OPTML-Group, optml.md §1.3-§2.8, §6; the distillation methods' own references), and
``"lethe"`` (the default) with values that act sensibly on the registry's datasets and inherit the original
model's recipe (batch size, augmentation) instead of imposing the reference's CIFAR recipe. A field given
explicitly always wins over the preset. Each field's description names its per-preset values where they
differ; fields that name none are the same in both presets. Deviations from the references are noted per
field and in each model's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from workers.engine.paper_presets import paper_recipe_bases
from workers.engine.presets import DEFAULT_PRESET, Preset, PresetModel, preset_field

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
REFERENCE_BATCH_SIZE = 256  # every reference driver's --batch_size (optml.md §1.4)

# ------------------------------------------------------------------------------------------------ presets
PRESET_DESCRIPTION = (
    "Which table fills the fields not given explicitly: 'reference' = the values of the method's reference "
    "code (to reproduce published numbers), 'lethe' (default) = values that act on the registry's small "
    "datasets and inherit the original model's recipe (batch size, augmentation) where the method has such a "
    "setting. An explicitly given field always wins. Fields whose description names no preset values are "
    "the same in both."
)


class PresetParams(PresetModel):
    """Base of every method's params: the ``preset`` field and its resolution (workers.engine.presets)."""

    preset: Preset = Field(default=DEFAULT_PRESET, description=PRESET_DESCRIPTION)


# ------------------------------------------------------------------------------------- recipe inheritance
InheritedBatchSize = Annotated[int | None, Field(ge=1, le=MAX_BATCH_SIZE)]
InheritedAugment = bool | None
INHERIT_NOTE = (
    "null = the original model's value (its training recipe as recorded by its train job); when that recipe "
    "is unknown (an uploaded model), {fallback}. The result records the value used and its source under "
    "details.inherited ('params' = given explicitly or set by the preset, 'original', or 'fallback')."
)
INHERIT_BATCH_SIZE = "Samples per optimisation step. " + INHERIT_NOTE.format(
    fallback=f"{REFERENCE_BATCH_SIZE} (the reference's)"
)
INHERIT_AUGMENT = (
    "Random crop + horizontal flip of each training batch (only for images of at least 16 x 16 pixels; "
    "ignored and reported as not applied otherwise). Unlearning with augmentation on a model trained "
    "without it mixes regimes and costs retain accuracy. "
    + INHERIT_NOTE.format(fallback="false (no augmentation)")
)
FALLBACK_AUGMENT = False


@dataclass
class Inherited:
    """Values resolved against the original model's recipe, and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve(
        self,
        name: str,
        given: Any,
        original: TrainRecipe | None,
        fallback: Any,
        original_field: str | None = None,
    ) -> Any:
        """``given`` when set, else the original recipe's ``original_field`` (default ``name``), else
        ``fallback``; recorded under ``name``."""
        if given is not None:
            value, source = given, "params"
        elif original is not None:
            value, source = getattr(original, original_field or name), "original"
        else:
            value, source = fallback, "fallback: the original model's recipe is unknown"
        self.values[name] = value
        self.sources[name] = {"value": value, "source": source}
        return value

    def optimizer(self, family: str, original: TrainRecipe | None, why: str) -> None:
        """Record the optimiser family the method uses next to the original's (not a choice: see ``why``)."""
        self.sources["optimizer"] = {
            "value": family,
            "original": original.optimizer if original is not None else None,
            "source": why,
        }


def _check_strictly_increasing(milestones: list[float]) -> list[float]:
    if any(later <= earlier for earlier, later in pairwise(milestones)):
        raise ValueError("milestones must be strictly increasing")
    return milestones


# ------------------------------------------------------------------------------- speed-run recipe fields
# Optional training-loop features of the published CIFAR-10 speed runs (issue 20). Each is off at its
# default, so every recipe that does not set them trains exactly as before, and TrainRecipe leaves them out
# of its JSON while they are off (see TrainRecipe._omit_unused_extensions).
TrainSchedule = Annotated[
    Literal["constant", "multistep", "cosine", "warmup_linear"],
    Field(
        description=(
            "Learning-rate schedule: 'constant'; 'multistep' multiplies the LR by gamma at each milestone "
            "(per epoch, like torch MultiStepLR); 'cosine' decays it to 0 over all steps (per step); "
            "'warmup_linear' rises linearly to the LR over the first `warmup` fraction of the steps, then "
            "falls linearly to 0 at the last step (per step)."
        )
    ),
]
Warmup = Annotated[
    float,
    Field(
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="For 'warmup_linear': the fraction of all steps at which the LR peaks.",
    ),
]
Nesterov = Annotated[
    bool, Field(description="Nesterov momentum (torch SGD's nesterov=True); needs momentum > 0.")
]
LabelSmoothing = Annotated[
    float,
    Field(
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description=(
            "Label smoothing of the classification cross-entropy (torch's label_smoothing); 0 = none. "
            "Regression losses ignore it."
        ),
    ),
]
Translate = Annotated[
    int | None,
    Field(
        ge=0,
        le=64,
        description=(
            "Padding of the augmentation's random crop in pixels, i.e. a random translation of up to this "
            "many pixels each way (zero fill); null = image side / 8 (the reference's 4 px at 32 px)."
        ),
    ),
]
LookaheadSteps = Annotated[
    int,
    Field(
        ge=0,
        le=10_000,
        description=(
            "Lookahead of the weights: every this many optimiser steps (and at the last step) a slow copy "
            "of every floating-point weight and buffer moves towards the trained one, slow = d * slow + "
            "(1 - d) * fast, and training continues from the slow copy; 0 = off."
        ),
    ),
]
LookaheadDecay = Annotated[
    float,
    Field(
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description=(
            "Lookahead's final decay d; at step t of T it is d * (t / T)^3, so the weights move freely "
            "early and are averaged late in training."
        ),
    ),
]
Whiten = Annotated[
    bool,
    Field(
        description=(
            "Before the first epoch of a fresh run, set the fixed first layer of architectures that have one "
            "(speedrun_cnn's 2x2 whitening conv) from the eigenvectors of the covariance of the training "
            "inputs' 2x2 patches; ignored (and reported as not applied) for other architectures. The "
            "training inputs are those the run trains on: a retrain computes it from the retain set only."
        )
    ),
]

# The published speed-run recipe (Keller Jordan's airbench94, CIFAR-10, described in "94% on CIFAR-10 in
# 3.29 seconds on a single GPU") in Lethe's terms: mean loss, one SGD parameter group. Deviations, all
# because TrainRecipe trains every architecture with one optimiser group and a mean loss: the published
# run sums the loss, freezes BatchNorm scales, trains BatchNorm shifts at 64x the LR and its whitening bias
# for 3 epochs only; its LR goes 0.2 -> 1 -> 0.07 of the peak (here 0 -> 1 -> 0), its flips alternate by
# epoch (here random), and its translation pads by reflection (here zeros). lr and weight_decay are the
# published values for a summed loss converted to a mean one: lr 11.5 per 1,024 examples at momentum 0.85 is
# 11.5 / (1 + 1 / 0.15) = 1.5 at batch 1,024 (scale it with the batch size), and the decoupled decay 0.0153
# per 1,024 examples is lr * weight_decay = 0.002 per step. speedrun_cnn is the matching architecture.
SPEEDRUN_RECIPE: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 1024,
    "lr": 1.5,
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 1.33e-3,
    "schedule": "warmup_linear",
    "warmup": 0.23,
    "label_smoothing": 0.2,
    "augment": True,
    "translate": 2,
    "lookahead_steps": 5,
    "lookahead_decay": 0.77,
    "whiten": True,
}
# Named recipes: the speed run and the paper-scale presets' originals (workers/engine/paper_presets.py).
RECIPE_BASES: dict[str, dict[str, Any]] = {"speedrun": SPEEDRUN_RECIPE, **paper_recipe_bases()}
# TrainRecipe fields that are left out of its JSON while at their defaults (off).
LOOP_EXTENSIONS = (
    "warmup",
    "nesterov",
    "label_smoothing",
    "translate",
    "lookahead_steps",
    "lookahead_decay",
    "whiten",
)


class TrainRecipe(BaseModel):
    """How to train a model from its current weights: the reference original-model recipe by default
    (182 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, batch 256, x0.1 at epochs 91/136, crop+flip;
    optml.md §1.3). The reference also keeps the best checkpoint by validation accuracy; Lethe returns the
    final weights (deviation: there is no validation split to select on).

    Speed-run training (issue 20): {"base": "speedrun"} starts from the published speed-run recipe (10
    epochs, batch 1024, nesterov SGD with a warm-up/linear-decay LR, label smoothing 0.2, 2 px translation +
    flip, lookahead, whitening initialisation; for the speedrun_cnn architecture), any field given beside
    it overriding it; the recipe is stored with every field spelled out."""

    model_config = ConfigDict(extra="forbid")

    epochs: Epochs = 182
    batch_size: BatchSize = 256
    lr: LearningRate = 0.1
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    schedule: TrainSchedule = "multistep"
    milestones: Milestones = Field(default_factory=lambda: list(REFERENCE_MILESTONES))
    gamma: Gamma = 0.1
    augment: Augment = True
    optimizer: Optimizer = "sgd"
    warmup: Warmup = 0.23
    nesterov: Nesterov = False
    label_smoothing: LabelSmoothing = 0.0
    translate: Translate = None
    lookahead_steps: LookaheadSteps = 0
    lookahead_decay: LookaheadDecay = 0.77
    whiten: Whiten = False

    @model_validator(mode="before")
    @classmethod
    def _expand_base(cls, data: Any) -> Any:
        """``{"base": name, ...}``: the named recipe with the given fields on top."""
        if not isinstance(data, dict) or "base" not in data:
            return data
        fields = dict(data)
        base = fields.pop("base")
        if base not in RECIPE_BASES:
            raise ValueError(f"unknown recipe base {base!r}; available: {', '.join(RECIPE_BASES)}")
        return {**RECIPE_BASES[base], **fields}

    @field_validator("milestones")
    @classmethod
    def _strictly_increasing(cls, milestones: list[float]) -> list[float]:
        return _check_strictly_increasing(milestones)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainRecipe:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_extensions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A recipe that uses none of the speed-run fields dumps exactly as before they existed, so the
        # content hashes built from recipes (retrain cache, audit shadow keys) and epoch checkpoints of
        # such recipes are unchanged.
        # Settings of a feature in use stay spelled out even at their defaults.
        data: dict[str, Any] = handler(self)
        in_use = {"warmup": self.schedule == "warmup_linear", "lookahead_decay": self.lookahead_steps > 0}
        for name in LOOP_EXTENSIONS:
            if not in_use.get(name) and getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data

    def loop_extensions(self) -> list[str]:
        """The speed-run fields this recipe sets to something other than their (off) defaults."""
        return [
            name for name in LOOP_EXTENSIONS if getattr(self, name) != type(self).model_fields[name].default
        ]


class TrainParams(PresetParams):
    """Parameters of the ``train`` method, which trains the original model from a seeded random init. Both
    presets use the reference's original-model recipe (``TrainRecipe``'s defaults)."""

    recipe: TrainRecipe = Field(
        default_factory=TrainRecipe,
        description="Training recipe (the reference's original-model recipe in both presets).",
    )


class IdentityParams(BaseModel):
    """``identity`` takes no parameters."""

    model_config = ConfigDict(extra="forbid")


REFERENCE_RETRAIN_EPOCHS = 160


class RetrainParams(PresetParams):
    """Parameters of ``retrain``, the exact-unlearning gold standard: train from a seeded random init on the
    retain set only (optml.md §2.2). ``recipe=None`` (the 'lethe' preset) means "the original model's
    recipe", which the caller supplies, so the gold standard differs from the original only by the forget
    set; the 'reference' preset is the reference's retrain command (160 instead of 182 epochs, otherwise the
    original-model recipe: SGD lr 0.1, momentum 0.9, wd 5e-4, batch 256, x0.1 at 50 % / 75 %, crop+flip)."""

    recipe: TrainRecipe | None = preset_field(
        "Training recipe; null reuses the recipe the original model was trained with.",
        lethe=None,
        reference=TrainRecipe(epochs=REFERENCE_RETRAIN_EPOCHS).model_dump(mode="json"),
    )


class UnlearnRecipe(PresetParams):
    """The SGD recipe of the training-style unlearning methods (ft, ga, rl, salun, l1_sparse): the reference
    driver's ``iterative_unlearn`` (optml.md §1.4: SGD momentum 0.9, wd 5e-4, batch 256, constant LR for
    short runs, train mode with crop+flip). ``batch_size`` and ``augment`` are inherited from the original
    model's recipe by default (the 'lethe' preset); the 'reference' preset sets the reference's 256 and
    crop+flip. The optimiser family is SGD, the only one ``TrainRecipe`` (hence any original trained here)
    has, so it always matches the original's. :meth:`resolve_recipe` gives the concrete ``TrainRecipe``."""

    epochs: Epochs = 10
    batch_size: InheritedBatchSize = preset_field(
        INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    lr: LearningRate = 0.01
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    schedule: Schedule = "constant"
    milestones: Milestones = Field(default_factory=lambda: list(REFERENCE_MILESTONES))
    gamma: Gamma = 0.1
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=True)
    optimizer: Optimizer = "sgd"

    @field_validator("milestones")
    @classmethod
    def _strictly_increasing(cls, milestones: list[float]) -> list[float]:
        return _check_strictly_increasing(milestones)

    def resolve_recipe(self, original: TrainRecipe | None) -> tuple[TrainRecipe, Inherited]:
        """The concrete recipe: inherited fields filled from ``original`` (or their fallbacks)."""
        inherited = Inherited()
        batch_size = inherited.resolve("batch_size", self.batch_size, original, REFERENCE_BATCH_SIZE)
        augment = inherited.resolve("augment", self.augment, original, FALLBACK_AUGMENT)
        inherited.optimizer("sgd", original, "method: SGD, the family of every recipe Lethe trains")
        recipe = TrainRecipe(
            epochs=self.epochs,
            batch_size=batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            milestones=list(self.milestones),
            gamma=self.gamma,
            augment=augment,
            optimizer=self.optimizer,
        )
        return recipe, inherited


class FinetuneParams(UnlearnRecipe):
    """Parameters of ``ft``: continue training the original model on the retain set only.

    Reference FT (Unlearn-Sparse unlearn/FT.py, README ``--unlearn FT --unlearn_lr 0.01
    --unlearn_epochs 10``; optml.md §2.3): SGD lr 0.01, momentum 0.9, weight decay 5e-4, 10 epochs,
    batch 256, constant LR (the reference's MultiStepLR milestones 91/136 are never reached in 10 epochs),
    train mode with crop+flip augmentation. The 'lethe' preset differs only in inheriting batch size and
    augmentation from the original model (see ``UnlearnRecipe``); any schedule may be chosen.
    """


# ------------------------------------------------------------------------------------ unlearning methods
MAX_L1_COEFFICIENT = 1.0
GA_REFERENCE_LR = 1e-4
GA_LETHE_LR = 5e-4


BatchNormMode = Literal["train", "frozen"]
BN_DESCRIPTION = (
    "BatchNorm running statistics during forget-only batches. 'train': updated from those batches, as the "
    "reference's train mode does, so after a forget-only pass they describe the forget set rather than the "
    "data the model is evaluated on (on a class forget set this alone costs retain accuracy and raises UA). "
    "'frozen': the original's running mean and variance are kept (restored after every forget-only step); "
    "the forward pass still normalises with batch statistics and BN's affine weights still train, so the "
    "metrics measure the weight update alone. No effect on models without BatchNorm (the MLP)."
)


class GradientAscentParams(UnlearnRecipe):
    """Parameters of ``ga``: gradient ascent on the forget set, ``min_theta -E_{D_f} CE(theta; x, y)``.

    Reference GA (Unlearn-Sparse unlearn/GA.py, README ``--unlearn GA --unlearn_lr 0.0001
    --unlearn_epochs 5``; optml.md §2.4): SGD lr 1e-4, momentum 0.9, weight decay 5e-4, 5 epochs, batch 256,
    constant LR, train mode (BatchNorm statistics are updated on the forget set), train augmentation, no
    gradient clipping and no retain term: the 'reference' preset. The 'lethe' preset (default) deviates:
    batch size and augmentation inherited from the original, BatchNorm running statistics frozen
    (``bn='frozen'``: with forget-only batches the reference's train mode rewrites them, and the resulting
    UA/RA mostly measure that rewrite), and lr 5e-4 (the reference lr is often too small to forget anything;
    the SalUn maintainers suggest 5e-4 to 1e-3, SalUn#8). Large values destroy the model, which the service's
    guardrails flag. The run fails only if the weights become non-finite.

    No single lr suits every architecture, because the ascent is unbounded and its speed depends on the
    gradient scale. Measured on digits, forgetting class 3 with the defaults otherwise (forget accuracy /
    test accuracy after 5 epochs, originals at ~96 / ~94): small_cnn lr 5e-4 -> 7.5 / 86.4, 1e-3 -> 0 / 69.4;
    the BatchNorm-free MLP (hidden 128) lr 5e-4 -> 95.9 / 93.9 (nothing forgotten), 2e-3 -> 89.0 / 93.0,
    5e-3 -> 4.8 / 83.8. Choose lr per architecture and read the result beside the retrain and the guardrails.
    """

    epochs: Epochs = 5
    lr: LearningRate = preset_field(
        "Peak SGD learning rate of the ascent.", lethe=GA_LETHE_LR, reference=GA_REFERENCE_LR
    )
    bn: BatchNormMode = preset_field(BN_DESCRIPTION, lethe="frozen", reference="train")


class L1SparseParams(UnlearnRecipe):
    """Parameters of ``l1_sparse`` (the reference's ``FT_prune`` -> ``FT_l1``; optml.md §2.7).

    Objective ``E_{D_r} CE(theta; x, y) + gamma_t ||theta||_1`` over ALL parameters (conv, linear, BN,
    biases), added unscaled to every minibatch's mean loss, from theta_o; SGD lr 0.01, momentum 0.9, weight
    decay 5e-4 (still on), 10 epochs, batch 256, constant LR, train augmentation. gamma_t decays linearly per
    epoch: ``gamma_t = alpha * (1 - t / (E - E0))`` for the 0-based epoch ``t < E - E0`` and 0 afterwards,
    with ``E = epochs`` and ``E0 = no_l1_epochs``; when ``E - E0 = 0`` gamma stays ``alpha`` (as the
    reference). The reference leaves ``alpha`` to tuning (README ``${alpha}``); the default 1e-4 is the value
    of several third-party reproduction scripts and of Unlearn-WorstCase's class-wise/configs/
    evaluation_ft.json. Like the reference, this runs on the dense model and creates no exact zeros. Both
    presets use these values; the 'lethe' preset (default) inherits batch size and augmentation from the
    original model, the 'reference' preset sets 256 and crop+flip.
    """

    epochs: Epochs = 10
    lr: LearningRate = 0.01
    schedule: Schedule = "constant"
    alpha: float = Field(
        default=1e-4,
        ge=0.0,
        le=MAX_L1_COEFFICIENT,
        allow_inf_nan=False,
        description=(
            "gamma, the initial l1 coefficient (the reference's --alpha; default 1e-4 from third-party "
            "scripts and Unlearn-WorstCase's config, the reference README leaves it to tuning)."
        ),
    )
    no_l1_epochs: int = Field(
        default=0,
        ge=0,
        le=MAX_EPOCHS,
        description=(
            "E0 (the reference's --no-l1-epochs): the last E0 epochs train without the l1 term; gamma decays "
            "linearly to 0 over the first epochs - E0 epochs. Must not exceed epochs."
        ),
    )

    @model_validator(mode="after")
    def _no_l1_epochs_within_epochs(self) -> L1SparseParams:
        if self.no_l1_epochs > self.epochs:
            raise ValueError("no_l1_epochs must not exceed epochs")
        return self

    def l1_gamma(self, epoch: int) -> float:
        """gamma_t of the 0-based ``epoch`` (optml.md §2.7)."""
        decay_epochs = self.epochs - self.no_l1_epochs
        if decay_epochs == 0:
            return self.alpha
        if epoch < decay_epochs:
            return self.alpha * (1.0 - epoch / decay_epochs)
        return 0.0


RelabelMode = Annotated[
    Literal["sequential", "shuffled"],
    Field(
        description=(
            "How forget and retain data are combined in each epoch. 'sequential' (the reference's "
            "CIFAR-10/SVHN path, SalUn#21): one pass over the forget set with random labels, then one pass "
            "over the retain set with true labels, as separate optimiser steps. 'shuffled' (the reference's "
            "CIFAR-100/TinyImageNet path): forget (random labels) and retain samples concatenated and "
            "shuffled into common batches. Random labels are redrawn every epoch in both modes."
        )
    ),
]
ExcludeTrueLabel = Annotated[
    bool,
    Field(
        description=(
            "Draw each forget sample's random label uniformly from the C - 1 WRONG classes (the paper's "
            "y' != y). Default false follows the reference code, which draws uniformly from all C classes, "
            "so the true label is kept with probability 1/C."
        )
    ),
]


class RandomLabelParams(UnlearnRecipe):
    """Parameters of ``rl``: random labelling (the RL baseline of SalUn and Unlearn-WorstCase; optml.md §6.2-
    §6.3), i.e. SalUn's loss without the saliency mask: CE with random labels on the forget set plus CE with
    true labels on the retain set (alpha = 1), from theta_o.

    Defaults follow SalUn's README command for 10 % random forgetting on CIFAR-10 (``main_random.py --unlearn
    RL --unlearn_epochs 10 --unlearn_lr 0.013``; optml.md §9): SGD lr 0.013, momentum 0.9, weight decay 5e-4,
    10 epochs, batch 256, constant LR, train augmentation, 'sequential' mode, labels from all C classes. The
    reference publishes no separate RL-only learning rate (Unlearn-WorstCase grid-searches it in
    [1e-4, 1e-1], WC#4), so the RL family's SalUn value is used. These are the 'reference' preset; the
    'lethe' preset (default) inherits batch size and augmentation from the original model and freezes the
    BatchNorm running statistics during the forget-only passes of the 'sequential' mode (``bn``).
    """

    epochs: Epochs = 10
    lr: LearningRate = 0.013
    schedule: Schedule = "constant"
    mode: RelabelMode = "sequential"
    exclude_true_label: ExcludeTrueLabel = False
    bn: BatchNormMode = preset_field(
        BN_DESCRIPTION + " Only the 'sequential' mode has forget-only batches; 'shuffled' ignores it.",
        lethe="frozen",
        reference="train",
    )


class SalUnParams(RandomLabelParams):
    """Parameters of ``salun`` (Saliency Unlearning, ICLR'24; optml.md §6.1-§6.2): the ``rl`` loss, updating
    only the salient weights.

    Saliency mask (SalUn Classification/generate_mask.py): in eval mode, sum the batch-mean gradients of the
    forgetting loss -CE over the forget set (batches of ``batch_size``, train augmentation) at theta_o, take
    |g|, rank it GLOBALLY over all parameters (conv, linear, BN affine, biases) and mark the top
    ``mask_ratio`` fraction salient (exactly round(ratio * count) entries; ties broken by position). Pruned
    weights of a sparse model get zero gradient (as under the reference's prune masks), so they rank last.

    Non-salient weights stay bit-identical to theta_o: after every optimiser step they are restored and
    their momentum buffers cleared, as the reference does since PR #33 (2026-02-28). Before that fix weight
    decay and momentum still moved the "frozen" weights (SalUn#32), and the published numbers predate it;
    Lethe implements only the fixed behaviour. BatchNorm running statistics are buffers, not weights: with
    ``bn='train'`` (the 'reference' preset) they are updated in train mode as in the reference, with
    ``bn='frozen'`` (the 'lethe' preset) the forget-only passes leave them alone. Reference values: SalUn
    README (lr 0.013, 10 epochs, mask 0.5, batch 256, crop+flip); the 'lethe' preset inherits batch size and
    augmentation from the original model.
    """

    mask_ratio: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Fraction of all parameter entries that are salient (updated): the top fraction by forget-loss "
            "gradient magnitude, ranked globally. 0.5 is the reference's with_0.5.pt (threshold = median); "
            "1.0 updates everything (plain rl)."
        ),
    )


class PruneParams(PresetParams):
    """Parameters of ``prune``: one-shot global unstructured magnitude pruning (OMP; optml.md §2.8).

    Prunes the ``sparsity`` fraction of smallest-|w| entries among all Conv2d weights, globally (the
    reference's ``global_unstructured(L1Unstructured)``; FC, BatchNorm and biases are never pruned). A model
    without Conv2d layers (the MLP) has its hidden Linear weights pruned instead, never the classifier (the
    last Linear layer) or biases. Then ``finetune_epochs`` epochs of masked training on the FULL training
    set recover accuracy with the FT recipe (lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, constant,
    train augmentation). Deviation: the reference (``--prune_type rewind_lt --rewind_epoch 8 --rate 0.95``)
    rewinds the surviving weights to their epoch-8 values and retrains 182 epochs with the mask; Lethe has no
    early-training snapshot and fine-tunes the pruned trained weights for a few epochs instead. A model that
    is already pruned keeps its pruned weights pruned (they have the lowest magnitude, zero), so the target
    sparsity must be at least its current one. The 'lethe' preset (default) inherits the fine-tuning batch
    size and augmentation from the original model; the 'reference' preset uses 256 and crop+flip.
    """

    sparsity: float = Field(
        default=0.95,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="Fraction of the prunable weights set to zero (the papers' 95 %: --rate 0.95).",
    )
    finetune_epochs: int = Field(
        default=5,
        ge=0,
        le=MAX_EPOCHS,
        description=(
            "Epochs of masked fine-tuning on the full training set after pruning (0: prune only). Deviation: "
            "the reference rewinds to epoch 8 and retrains 182 epochs."
        ),
    )
    batch_size: InheritedBatchSize = preset_field(
        INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    lr: LearningRate = 0.01
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    schedule: Schedule = "constant"
    milestones: Milestones = Field(default_factory=lambda: list(REFERENCE_MILESTONES))
    gamma: Gamma = 0.1
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=True)

    @field_validator("milestones")
    @classmethod
    def _strictly_increasing(cls, milestones: list[float]) -> list[float]:
        return _check_strictly_increasing(milestones)

    def finetune_recipe(self, original: TrainRecipe | None = None) -> tuple[TrainRecipe, Inherited]:
        """The masked fine-tuning recipe (only meaningful when ``finetune_epochs`` > 0), with batch size and
        augmentation resolved against the original model's recipe."""
        inherited = Inherited()
        fields = self.model_dump(exclude={"sparsity", "finetune_epochs", "preset", "batch_size", "augment"})
        recipe = TrainRecipe(
            epochs=max(self.finetune_epochs, 1),
            batch_size=inherited.resolve("batch_size", self.batch_size, original, REFERENCE_BATCH_SIZE),
            augment=inherited.resolve("augment", self.augment, original, FALLBACK_AUGMENT),
            **fields,
        )
        inherited.optimizer("sgd", original, "method: SGD, the family of every recipe Lethe trains")
        return recipe, inherited
