"""Validated parameters of the influence and teacher-student unlearning methods (pydantic only, torch-free).

``iu`` follows Unlearn-Sparse ``wfisher`` (optml.md §2.6); ``scrub`` the SCRUB copy shipped in the
WorstCase/SalUn repos (optml.md §6.3); ``bad_teacher`` the competent/incompetent teacher of Chundawat et al.
(blindspot_sfd.md §1.8); ``blindspot`` Deep Regression Unlearning's blindspot method adapted to
classification (blindspot_sfd.md §1.3). Deviations from the references are stated per field and per model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from workers.engine.methods.params import (
    BN_DESCRIPTION,
    FALLBACK_AUGMENT,
    INHERIT_AUGMENT,
    INHERIT_BATCH_SIZE,
    REFERENCE_BATCH_SIZE,
    BatchNormMode,
    BatchSize,
    Epochs,
    Inherited,
    InheritedAugment,
    InheritedBatchSize,
    LearningRate,
    Momentum,
    PresetParams,
    TrainRecipe,
    WeightDecay,
    preset_field,
)

MAX_TEMPERATURE = 100.0
MAX_LOSS_WEIGHT = 1e6
MAX_IU_ALPHA = 1e6
MAX_DAMPING = 1e6
MAX_SAMPLES = 10_000_000
MAX_SOLVER_ITERATIONS = 100_000

# Reference-path IU step. The reference leaves alpha to tuning (README ``--alpha ${alpha}``, optml.md §2.6).
# Its update is one step of size alpha along v = (G_f - n_f/n_r G_r) / n, whose norm scales like n_f/n times
# a per-sample gradient, so the useful alpha depends on the model's residual training loss. On the digits
# MLP test bed (an original at ~100 % train accuracy, forgetting one class, n_f/n = 0.1) alpha = 20 takes
# the forgotten class from 100 % to ~4 % while retain accuracy drops by ~1 point (alpha = 10 leaves ~70 %,
# 50 costs ~10 retain points). It is a starting point for tuning, not a reference value: on a small CNN on
# digits the same alpha takes retain accuracy to ~35 % (random forget set), which is why the 'lethe' preset
# line-searches downward from it.
IU_REFERENCE_ALPHA = 20.0
# cg / lissa solve (F + damping I) k = v; v is then (minus) the mean retain gradient (see the IU docstring),
# so alpha = 1 is the full Newton step of the influence function.
IU_NEWTON_ALPHA = 1.0
# bad_teacher's 'lethe' preset (see BadTeacherParams).
BAD_TEACHER_LETHE_LR = 1e-3
BAD_TEACHER_LETHE_EPOCHS = 5

Temperature = Annotated[
    float, Field(gt=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="Softmax temperature T.")
]
LossWeight = Annotated[float, Field(ge=0.0, le=MAX_LOSS_WEIGHT, allow_inf_nan=False)]
Augment = Annotated[
    bool,
    Field(
        description=(
            "Random crop + horizontal flip of the training batches (as the ``ft`` recipe's augment; only for "
            "images of at least 16 x 16 pixels)."
        )
    ),
]


class IUParams(PresetParams):
    """Parameters of ``iu`` (influence unlearning, Unlearn-Sparse ``wfisher``; optml.md §2.6).

    ``hvp='reference'`` reproduces the reference exactly, including its degenerate "WoodFisher" product
    (a rank-1 correction along the first retain sample's gradient, so in effect one scaled gradient step).
    ``'cg'`` and ``'lissa'`` are Lethe additions: a real inverse-curvature-vector product on the damped
    empirical Fisher or Gauss-Newton matrix of the retain loss. Deviation: the reference has no default
    alpha; Lethe's default depends on ``hvp`` (see ``alpha``).

    ``step``: the 'reference' preset applies ``alpha`` as given ('fixed', the reference's single step). A
    fixed alpha that suits one model collapses another (alpha 20 takes a small CNN on digits to chance, RA
    about 10 %), so the 'lethe' preset (default) runs a line search ('line_search', a Lethe addition): it
    tries alpha, alpha / 2, alpha / 4, ... and keeps the first step whose accuracy on a seeded subset of the
    retain set stays within ``line_search_margin`` points of the original's. The subset is not held out of
    G_r: it checks the retain accuracy RA itself, which is measured on all of D_r. If no step qualifies the
    model is returned unchanged and the result says so (``details.line_search.accepted = false``).
    """

    hvp: Literal["reference", "cg", "lissa"] = Field(
        default="reference",
        description=(
            "How k ~ F^-1 v is computed: 'reference' = the reference's WoodFisher loop (effectively rank-1, "
            "k ~ v); 'cg' = conjugate gradient on (F + damping I) k = v; 'lissa' = the LiSSA recursion for "
            "the same system. F is the retain-loss curvature chosen by ``curvature``."
        ),
    )
    alpha: float | None = Field(
        default=None,
        gt=0.0,
        le=MAX_IU_ALPHA,
        allow_inf_nan=False,
        description=(
            "Step: theta <- theta + alpha * k. The reference tunes it and has no default; null means "
            f"{IU_REFERENCE_ALPHA:g} for hvp='reference' (a Lethe choice for small models, tune it) and "
            f"{IU_NEWTON_ALPHA:g} (the full Newton / influence-function step) for 'cg' and 'lissa'. With "
            "step='line_search' it is the largest step tried; the result records the step used as "
            "params.alpha and this start as params.alpha_max."
        ),
    )
    step: Literal["line_search", "fixed"] = preset_field(
        "How the step size is chosen: 'fixed' = theta + alpha * k (the reference); 'line_search' = the "
        "largest of alpha * 2^-j (j = 0 .. line_search_halvings) that keeps the retain-subset accuracy "
        "within line_search_margin points of the original's (Lethe).",
        lethe="line_search",
        reference="fixed",
    )
    line_search_margin: float = Field(
        default=2.0,
        ge=0.0,
        le=100.0,
        allow_inf_nan=False,
        description="Largest accepted drop of the retain-subset accuracy, in points (line_search only).",
    )
    line_search_samples: int = Field(
        default=1024,
        ge=1,
        le=MAX_SAMPLES,
        description="Size of the seeded random retain subset the line search scores (capped by n_r).",
    )
    line_search_halvings: int = Field(
        default=16,
        ge=0,
        le=60,
        description="How many times the line search may halve alpha before giving up (no step taken).",
    )
    woodfisher_samples: int = Field(
        default=1000,
        ge=1,
        le=MAX_SAMPLES,
        description=(
            "N of the reference WoodFisher loop: it visits the first N + 2 retain samples one at a time "
            "(the reference stops after idx > N) and uses N in its denominators. Capped by the retain set "
            "size (N itself stays in the denominators). Only for hvp='reference'."
        ),
    )
    batch_size: BatchSize = Field(
        default=256,
        description=(
            "Samples per forward/backward when summing G_f and G_r and in curvature products (the result "
            "does not depend on it up to float rounding; the reference uses 256)."
        ),
    )
    curvature: Literal["fisher", "ggn"] = Field(
        default="fisher",
        description=(
            "Curvature for 'cg'/'lissa': 'fisher' = empirical Fisher (1/m) sum_i g_i g_i^T of the per-sample "
            "retain-loss gradients (what WoodFisher approximates); 'ggn' = generalised Gauss-Newton "
            "J^T H_softmax J (= the model's true Fisher for softmax cross-entropy). Both are applied as "
            "matrix-vector products with forward- and reverse-mode autodiff, never materialised."
        ),
    )
    curvature_samples: int = Field(
        default=1000,
        ge=1,
        le=MAX_SAMPLES,
        description="Curvature is estimated on the first this-many retain samples (capped by n_r).",
    )
    damping: float = Field(
        default=0.01,
        gt=0.0,
        le=MAX_DAMPING,
        allow_inf_nan=False,
        description="lambda in (F + lambda I) k = v for 'cg'/'lissa' (keeps the solve well posed).",
    )
    cg_iterations: int = Field(
        default=100, ge=1, le=MAX_SOLVER_ITERATIONS, description="Maximum conjugate-gradient iterations."
    )
    cg_tolerance: float = Field(
        default=1e-6,
        gt=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="CG stops once ||(F + lambda I) k - v|| <= cg_tolerance * ||v||.",
    )
    lissa_iterations: int = Field(
        default=1000, ge=1, le=MAX_SOLVER_ITERATIONS, description="LiSSA recursion depth."
    )
    lissa_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=1e9,
        allow_inf_nan=False,
        description=(
            "LiSSA scale s: h <- v + h - (F_B + lambda I) h / s on minibatches B of batch_size samples, "
            "k = h / s. s must exceed the largest eigenvalue of F + lambda I or the recursion diverges "
            "(reported as an error); null = 1.5 x a 20-step power-iteration estimate of it."
        ),
    )


ADAM_SOURCE = (
    "method: Adam as in the method's reference; not inherited from the original, because the method's "
    "learning rates are Adam rates"
)


def resolve_adam_batches(
    original: TrainRecipe | None, augment: bool | None, **batch_sizes: int | None
) -> Inherited:
    """Inherit augmentation and every named batch size of an Adam-trained method from the original model's
    recipe (each batch size from the original's ``batch_size``), and record the optimiser family."""
    inherited = Inherited()
    inherited.resolve("augment", augment, original, FALLBACK_AUGMENT)
    for name, given in batch_sizes.items():
        inherited.resolve(name, given, original, REFERENCE_BATCH_SIZE, original_field="batch_size")
    inherited.optimizer("adam", original, ADAM_SOURCE)
    return inherited


class BadTeacherParams(PresetParams):
    """Parameters of ``bad_teacher`` (Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023;
    blindspot_sfd.md §1.8). The 'reference' preset: all of D_f plus a random 30 % of D_r, T = 1, Adam
    lr 1e-4, 1 epoch, batch 256, ``F.kl_div`` with the default 'mean' reduction, no augmentation. Those are
    sized for CIFAR-100 (1 epoch at batch 256 is a handful of Adam steps on digits and barely moves the
    model), so the 'lethe' preset (default) uses lr 1e-3, 5 epochs, the whole retain set (with 30 % the
    digits MLP lost 7 retain points while forgetting a class, with all of it 1.3) and the original model's
    batch size and augmentation. In both, the incompetent teacher is drawn from the architecture's default
    initialisation with a seed derived from the job seed (the reference uses an unseeded
    ``ResNet18(pretrained=False)``). The optimiser stays Adam (see ``ADAM_SOURCE``)."""

    retain_fraction: float = preset_field(
        "Fraction of the retain set (seeded random subset) mixed with the whole forget set.",
        lethe=1.0,
        reference=0.3,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
    )
    temperature: Temperature = 1.0
    lr: LearningRate = preset_field(
        "Adam learning rate (constant).", lethe=BAD_TEACHER_LETHE_LR, reference=1e-4
    )
    epochs: Epochs = preset_field(
        "Passes over D_f plus the retain subset.", lethe=BAD_TEACHER_LETHE_EPOCHS, reference=1
    )
    batch_size: InheritedBatchSize = preset_field(
        INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    kl_reduction: Literal["mean", "batchmean"] = Field(
        default="mean",
        description=(
            "'mean' divides the summed KL by batch x classes like the reference's F.kl_div default; "
            "'batchmean' by the batch only (the mathematically proper KL mean). With Adam the two differ "
            "little (Adam is nearly invariant to a constant loss scale)."
        ),
    )
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=False)

    def resolve(self, original: TrainRecipe | None) -> Inherited:
        return resolve_adam_batches(original, self.augment, batch_size=self.batch_size)


ScrubSchedule = Literal["worstcase", "original"]
# Unlearn-WorstCase data-wise/arg_parser.py: m_steps 1, lr_decay_epochs [3, 5, 9], compared against a 0-BASED
# epoch counter (``epoch <= m_steps``, ``epoch > d``); in Lethe's 1-based epochs those are 2 max epochs and
# decays after epochs 4, 6 and 10.
SCRUB_REFERENCE_MAX_EPOCHS = 2
SCRUB_REFERENCE_DECAY_EPOCHS = [4, 6, 10]


class SCRUBParams(PresetParams):
    """Parameters of ``scrub`` (Kurmanji et al., NeurIPS 2023), by default as shipped in Unlearn-WorstCase
    data-wise/unlearn/SCRUB.py (optml.md §6.3). With KL_T = T^2 * KL(softmax(teacher / T) || softmax(student
    / T)) averaged over the batch, a max pass over D_f minimises -KL_T and a min pass over D_r minimises
    alpha * KL_T + gamma * CE; one SGD optimiser (momentum, weight decay) serves both.

    ``schedule='worstcase'`` (WC's code): epochs 1 .. msteps run ONLY the max pass, the later epochs ONLY
    the min pass. ``'original'`` (Kurmanji et al.'s code): epochs 1 .. msteps run a max pass then a min pass,
    later epochs the min pass. In both the LR of epoch e (1-based) is lr * lr_decay_rate^(number of
    lr_decay_epochs d with e > d).

    'reference' preset = WC's arg_parser defaults: schedule 'worstcase', T 4, alpha 0.001, gamma 0.99,
    lr 0.01 (its theta_lr), 10 epochs (unlearn_steps), m_steps 1 and lr_decay_epochs [3, 5, 9] x 0.1 on
    WC's 0-based epoch counter, i.e. msteps 2 and decays after epochs 4, 6, 10 here; batch 256 for both
    loaders, SGD momentum 0.9, weight decay 5e-4, crop+flip, BatchNorm in train mode on the forget-only
    max passes. WC's smoothing term (distance to an averaged model) has weight 0 by default and is omitted.
    'lethe' preset (default): the 'original' schedule, batch size and augmentation inherited from the
    original model, and frozen BatchNorm statistics during the max passes. On digits (small CNN, one class
    forgotten) WC's max-only epochs followed by min passes at already decayed LRs leave retain accuracy at
    about 89 %, while interleaving a min pass after each max pass keeps it at about 97 % with the class fully
    forgotten. ``max_lr``, ``forget_batch_size`` and ``bn`` are Lethe additions."""

    schedule: ScrubSchedule = preset_field(
        "'worstcase': max-only epochs 1..msteps, then min-only (Unlearn-WorstCase); 'original': max then "
        "min in epochs 1..msteps, min after (Kurmanji et al.; repairs the retain set right after each max "
        "pass).",
        lethe="original",
        reference="worstcase",
    )
    epochs: Epochs = 10
    msteps: int = preset_field(
        "Number of leading epochs with a max pass over the forget set (<= epochs).",
        lethe=SCRUB_REFERENCE_MAX_EPOCHS,
        reference=SCRUB_REFERENCE_MAX_EPOCHS,
        ge=0,
        le=1000,
    )
    temperature: Temperature = 4.0
    alpha: LossWeight = Field(
        default=0.001, description="Weight of KL(teacher || student) on the retain set."
    )
    gamma: LossWeight = Field(default=0.99, description="Weight of the cross-entropy on the retain set.")
    lr: LearningRate = Field(
        default=0.01, description="Base SGD learning rate (WC's theta_lr), before the decays."
    )
    max_lr: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        allow_inf_nan=False,
        description=(
            "Base SGD learning rate of the max passes (decayed like lr); null = lr (the reference shares one "
            "rate)."
        ),
    )
    lr_decay_epochs: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: list(SCRUB_REFERENCE_DECAY_EPOCHS),
        max_length=16,
        description=(
            "1-based epochs after which the LR is multiplied by lr_decay_rate (WC's [3, 5, 9] on its 0-based "
            "counter = [4, 6, 10] here)."
        ),
    )
    lr_decay_rate: float = Field(
        default=0.1, gt=0.0, le=1.0, allow_inf_nan=False, description="LR factor per passed decay epoch."
    )
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    batch_size: InheritedBatchSize = preset_field(
        "Retain (min pass) batch size. " + INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    forget_batch_size: InheritedBatchSize = Field(
        default=None,
        description=(
            "Forget (max pass) batch size; null = batch_size (as WC, which uses one loader batch size for "
            "both; Kurmanji et al. use 32 forget vs 128 retain)."
        ),
    )
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=True)
    bn: BatchNormMode = preset_field(
        BN_DESCRIPTION + " Applies to the max passes (forget-only batches).",
        lethe="frozen",
        reference="train",
    )

    @model_validator(mode="after")
    def _msteps_within_epochs(self) -> SCRUBParams:
        if self.msteps > self.epochs:
            raise ValueError(f"msteps ({self.msteps}) cannot exceed epochs ({self.epochs})")
        return self

    def learning_rate(self, base: float, epoch: int) -> float:
        """LR of the 1-based ``epoch`` from ``base``: one factor lr_decay_rate per passed decay epoch."""
        return base * self.lr_decay_rate ** sum(epoch > decay for decay in self.lr_decay_epochs)

    def passes(self, epoch: int) -> tuple[str, ...]:
        """The passes of the 1-based ``epoch``, in order."""
        if epoch > self.msteps:
            return ("min",)
        return ("max",) if self.schedule == "worstcase" else ("max", "min")

    def resolve(self, original: TrainRecipe | None) -> Inherited:
        inherited = Inherited()
        batch_size = inherited.resolve("batch_size", self.batch_size, original, REFERENCE_BATCH_SIZE)
        inherited.resolve("augment", self.augment, original, FALLBACK_AUGMENT)
        forget_batch = self.forget_batch_size if self.forget_batch_size is not None else batch_size
        inherited.values["forget_batch_size"] = forget_batch
        inherited.sources["forget_batch_size"] = {
            "value": forget_batch,
            "source": "params" if self.forget_batch_size is not None else "batch_size",
        }
        inherited.optimizer("sgd", original, "method: SGD as in the reference")
        return inherited


class BlindspotParams(PresetParams):
    """Parameters of ``blindspot`` (Tarun et al., Deep Regression Unlearning, ICML 2023; blindspot_sfd.md
    §1.3), for regression (the reference) and classification (an adaptation). Reference values: blindspot
    model trained for 2 epochs on D_r with Adam lr 0.01, batch 256 (AgeDB); unlearning 1 epoch, Adam lr
    1e-3, batch 256, attention weight beta = 50 on every returned layer.

    Regression tasks use ``regression_loss`` (L1 by default, the AgeDB code; 'mse' is the STS-B notebook)
    for all three of the reference's losses: training the blindspot model, the output distance to it on
    D_f and the retain loss; ``output_distance`` is not used. Classification tasks (§1.8 adaptation): the
    retain loss and the blindspot model's training loss are cross-entropy and the output distance is
    ``output_distance`` (KL(softmax(b) || softmax(f)) by default); ``regression_loss`` is not used.

    The 'reference' preset uses these values with batch 256 for both models and no augmentation; the
    'lethe' preset (default) inherits both batch sizes and the augmentation from the original model's
    recipe. The optimiser stays Adam (see ``ADAM_SOURCE``)."""

    blindspot_epochs: Epochs = Field(
        default=2, description="Epochs of training the randomly initialised blindspot model on D_r."
    )
    blindspot_lr: LearningRate = Field(default=0.01, description="Adam learning rate of the blindspot model.")
    blindspot_batch_size: InheritedBatchSize = preset_field(
        "Batch size of the blindspot model's training. " + INHERIT_BATCH_SIZE,
        lethe=None,
        reference=REFERENCE_BATCH_SIZE,
    )
    epochs: Epochs = 1
    lr: LearningRate = Field(default=1e-3, description="Adam learning rate of the unlearning (constant).")
    batch_size: InheritedBatchSize = preset_field(
        "Batch size of the unlearning. " + INHERIT_BATCH_SIZE, lethe=None, reference=REFERENCE_BATCH_SIZE
    )
    beta: LossWeight = Field(
        default=50.0,
        description=(
            "Weight of each layer's attention-transfer distance on forget samples (4-D activations only; "
            "on 2-D activations the reference's attention map is identically 1, so those layers add 0)."
        ),
    )
    output_distance: Literal["kl", "mse", "l1"] = Field(
        default="kl",
        description=(
            "Forget-sample output distance to the blindspot model: 'kl' = KL(softmax(b) || softmax(f)) "
            "(classification adaptation), 'mse' / 'l1' = mean squared / absolute logit difference (the "
            "reference's regression distances applied to logits)."
        ),
    )
    regression_loss: Literal["l1", "mse"] = Field(
        default="l1",
        description=(
            "Regression tasks only: the loss of the blindspot model's training, of the output distance on "
            "forget samples and of the retain term ('l1' = the reference's AgeDB code, 'mse' = its STS-B "
            "notebook)."
        ),
    )
    augment: InheritedAugment = preset_field(INHERIT_AUGMENT, lethe=None, reference=False)

    def resolve(self, original: TrainRecipe | None) -> Inherited:
        return resolve_adam_batches(
            original,
            self.augment,
            batch_size=self.batch_size,
            blindspot_batch_size=self.blindspot_batch_size,
        )
