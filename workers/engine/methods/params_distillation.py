"""Validated parameters of the influence and teacher-student unlearning methods (pydantic only, torch-free).

``iu`` follows Unlearn-Sparse ``wfisher`` (optml.md §2.6); ``scrub`` the SCRUB copy shipped in the
WorstCase/SalUn repos (optml.md §6.3); ``bad_teacher`` the competent/incompetent teacher of Chundawat et al.
(blindspot_sfd.md §1.8); ``blindspot`` Deep Regression Unlearning's blindspot method adapted to
classification (blindspot_sfd.md §1.3). Deviations from the references are stated per field and per model.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.methods.params import BatchSize, Epochs, LearningRate, Momentum, WeightDecay

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
# 50 costs ~10 retain points). It is a starting point for tuning, not a reference value.
IU_REFERENCE_ALPHA = 20.0
# cg / lissa solve (F + damping I) k = v; v is then (minus) the mean retain gradient (see the IU docstring),
# so alpha = 1 is the full Newton step of the influence function.
IU_NEWTON_ALPHA = 1.0

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


class IUParams(BaseModel):
    """Parameters of ``iu`` (influence unlearning, Unlearn-Sparse ``wfisher``; optml.md §2.6).

    ``hvp='reference'`` reproduces the reference exactly, including its degenerate "WoodFisher" product
    (a rank-1 correction along the first retain sample's gradient, so in effect one scaled gradient step).
    ``'cg'`` and ``'lissa'`` are Lethe additions: a real inverse-curvature-vector product on the damped
    empirical Fisher or Gauss-Newton matrix of the retain loss. Deviation: the reference has no default
    alpha; Lethe's default depends on ``hvp`` (see ``alpha``).
    """

    model_config = ConfigDict(extra="forbid")

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
            f"{IU_NEWTON_ALPHA:g} (the full Newton / influence-function step) for 'cg' and 'lissa'."
        ),
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


class BadTeacherParams(BaseModel):
    """Parameters of ``bad_teacher`` (Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023;
    blindspot_sfd.md §1.8). Reference defaults: all of D_f plus a random 30 % of D_r, T = 1, Adam lr 1e-4,
    1 epoch, batch 256, ``F.kl_div`` with the default 'mean' reduction. No deviations in the defaults; the
    incompetent teacher is drawn from the architecture's default initialisation with a seed derived from
    the job seed (the reference uses an unseeded ``ResNet18(pretrained=False)``)."""

    model_config = ConfigDict(extra="forbid")

    retain_fraction: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Fraction of the retain set (seeded random subset) mixed with the whole forget set.",
    )
    temperature: Temperature = 1.0
    lr: LearningRate = Field(default=1e-4, description="Adam learning rate (constant).")
    epochs: Epochs = 1
    batch_size: BatchSize = 256
    kl_reduction: Literal["mean", "batchmean"] = Field(
        default="mean",
        description=(
            "'mean' divides the summed KL by batch x classes like the reference's F.kl_div default; "
            "'batchmean' by the batch only (the mathematically proper KL mean). With Adam the two differ "
            "little (Adam is nearly invariant to a constant loss scale)."
        ),
    )
    augment: Augment = False


class SCRUBParams(BaseModel):
    """Parameters of ``scrub`` (Kurmanji et al., as shipped in Unlearn-WorstCase data-wise/unlearn/SCRUB.py;
    optml.md §6.3). Each of the first ``msteps`` epochs makes a max pass over D_f (minimise -KL(teacher ||
    student)) and every epoch a min pass over D_r (minimise alpha * KL + gamma * CE), both with KL at
    temperature T scaled by T^2. Reference values: T = 4, alpha = 0.001, gamma = 0.99, msteps = 1,
    10 epochs (the WC evaluation protocol), SGD momentum 0.9, weight decay 5e-4, batch 256, one optimiser
    shared by both passes. Deviation: the reference searches the LR in [1e-4, 1e-1] and records no single
    value; Lethe defaults to 0.01 (the reference driver's FT rate). ``max_lr`` is a Lethe addition."""

    model_config = ConfigDict(extra="forbid")

    epochs: Epochs = 10
    msteps: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Number of leading epochs that begin with a max pass over the forget set (<= epochs).",
    )
    temperature: Temperature = 4.0
    alpha: LossWeight = Field(
        default=0.001, description="Weight of KL(teacher || student) on the retain set."
    )
    gamma: LossWeight = Field(default=0.99, description="Weight of the cross-entropy on the retain set.")
    lr: LearningRate = Field(default=0.01, description="SGD learning rate of the min passes (constant).")
    max_lr: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        allow_inf_nan=False,
        description="SGD learning rate of the max passes; null = lr (the reference shares one rate).",
    )
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4
    batch_size: BatchSize = 256
    augment: Augment = True

    @model_validator(mode="after")
    def _msteps_within_epochs(self) -> SCRUBParams:
        if self.msteps > self.epochs:
            raise ValueError(f"msteps ({self.msteps}) cannot exceed epochs ({self.epochs})")
        return self


class BlindspotParams(BaseModel):
    """Parameters of ``blindspot`` (Tarun et al., Deep Regression Unlearning, ICML 2023; blindspot_sfd.md
    §1.3), for regression (the reference) and classification (an adaptation). Reference values: blindspot
    model trained for 2 epochs on D_r with Adam lr 0.01, batch 256 (AgeDB); unlearning 1 epoch, Adam lr
    1e-3, batch 256, attention weight beta = 50 on every returned layer.

    Regression tasks use ``regression_loss`` (L1 by default, the AgeDB code; 'mse' is the STS-B notebook)
    for all three of the reference's losses: training the blindspot model, the output distance to it on
    D_f and the retain loss; ``output_distance`` is not used. Classification tasks (§1.8 adaptation): the
    retain loss and the blindspot model's training loss are cross-entropy and the output distance is
    ``output_distance`` (KL(softmax(b) || softmax(f)) by default); ``regression_loss`` is not used."""

    model_config = ConfigDict(extra="forbid")

    blindspot_epochs: Epochs = Field(
        default=2, description="Epochs of training the randomly initialised blindspot model on D_r."
    )
    blindspot_lr: LearningRate = Field(default=0.01, description="Adam learning rate of the blindspot model.")
    blindspot_batch_size: BatchSize = 256
    epochs: Epochs = 1
    lr: LearningRate = Field(default=1e-3, description="Adam learning rate of the unlearning (constant).")
    batch_size: BatchSize = 256
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
    augment: Augment = False
