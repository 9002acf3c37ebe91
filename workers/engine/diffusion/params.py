"""Validated parameters of the diffusion engine (pydantic only, torch-free: the API imports this module).

Reference values come from tqch/score-forgetting-distillation's DDPM configs (blindspot_sfd.md §2.1-§2.4);
each scaled-down default says what the reference uses and why Lethe's default differs. The defaults are
sized so that the whole digits pipeline (teacher, metric classifier, a distil-only control and an SFD run)
finishes in a few minutes on a 2-core CPU; on a GPU raise ``steps``/``batch_size`` towards the reference.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.engine.presets import DEFAULT_PRESET, Preset, PresetModel, preset_field

# ------------------------------------------------------------------------------ reference constants (§2.1)
REFERENCE_TIMESTEPS = 1000
REFERENCE_BETA_START = 1e-4
REFERENCE_BETA_END = 0.02
REFERENCE_COND_DROP_PROB = 0.1
REFERENCE_TEACHER_LR = 2e-4
REFERENCE_TEACHER_BETA1 = 0.9
REFERENCE_GRAD_CLIP_NORM = 1.0
REFERENCE_EMA_DECAY = 0.9999
REFERENCE_TEACHER_STEPS = 800_000
REFERENCE_TEACHER_BATCH = 128
# SFD (cifar10_sfd.yml, §2.4): t_init 440 is sigma = sqrt(1/alpha_bar - 1) = 2.50 on the linear-beta scale,
# t_min 38 is sigma 0.137 and t_max 712 is sigma 13.1.
REFERENCE_SFD_ALPHA = 1.2
REFERENCE_T_INIT = 440
REFERENCE_T_MIN = 38
REFERENCE_T_MAX = 712
REFERENCE_FORGET_COEF = 0.01
REFERENCE_REMAIN_COEF = 1.0
REFERENCE_FORGET_CLASS = 0
REFERENCE_OVERRIDE_CLASS = 1
REFERENCE_SFD_LR = 1e-5
REFERENCE_SFD_STEPS = 50_000
REFERENCE_SFD_BATCH = 128
REFERENCE_GENERATOR_EMA = 0.9999
REFERENCE_SFD_BETAS = (0.0, 0.999)
REFERENCE_ADAM_EPS = 1e-8
REFERENCE_GRAD_CLIP_VALUE = 1.0
# sid_g_loss_conditional clamps the per-sample omega normaliser from below.
OMEGA_MIN = 1e-5

# ------------------------------------------------------------------------------------------------ limits
MAX_CLASSES = 1000
MAX_IMAGE_SIZE = 128
MAX_CHANNELS = 4
MAX_TIMESTEPS = 10_000
MAX_STEPS = 10_000_000
MAX_BATCH_SIZE = 65_536
MAX_LEARNING_RATE = 1.0
MAX_BASE_CHANNELS = 512
MAX_LEVELS = 5
MAX_CHANNEL_MULT = 8
MAX_BLOCKS_PER_LEVEL = 4
MAX_GUIDANCE_SCALE = 100.0
MAX_LOSS_COEF = 1e4
MAX_SAMPLES_PER_CLASS = 100_000

# ------------------------------------------------------------------------------- Lethe's scaled defaults
# Timings below were measured on the shared 2-core CPU this project is developed on (one intra-op thread,
# other jobs running), so they are upper bounds rather than benchmarks.
# A 0.41 M-parameter U-Net (channels 24/48, 8x8 -> 4x4, one block per level, middle attention). The
# reference (ch 128, [1, 2, 2, 2], 2 blocks, attention at 16x16) has 36 M parameters.
DEFAULT_BASE_CHANNELS = 24
DEFAULT_CHANNEL_MULTS = (1, 2)
DEFAULT_BLOCKS_PER_LEVEL = 1
DEFAULT_NORM_GROUPS = 8
# 1,500 steps x batch 64 is ~67 epochs of the 1,437 digits training images (reference: 800k x 128); about
# 2-3 minutes on that CPU (1,200 steps took 168 s and sample at 94.7 % classifier accuracy, 25 DDPM steps).
DEFAULT_TEACHER_STEPS = 1500
DEFAULT_TEACHER_BATCH = 64
# Reference EMA 0.9999 averages over ~10k steps, longer than the whole scaled-down run; 0.999 (the
# notes' §2.7 range 0.999-0.9999) with the usual (1 + n) / (10 + n) warm-up keeps random-init weights out.
DEFAULT_TEACHER_EMA = 0.999
# SFD: 50k steps x 128 at lr 1e-5 in the reference; §2.7 suggests lr ~1e-4 and a few thousand steps on
# CPU. An SFD step costs ~26 U-Net forward-equivalents per sample (4 generator passes, 2 fake-score
# trainings, 2 SiD losses differentiated through teacher and fake score), ~9x a teacher step, so 300 steps
# at batch 32 (~1-1.5 minutes) is the CPU budget. The reference's forget coefficients 0.01 act over 50k
# steps; over 300 they forget class 0 of digits but not class 3 (generation rate 0.93 -> 0.30). Measured on
# digits classes 3, 8 (bench/diffusion_sfd.py's teacher): coefficients 0.1 at lr 1e-4 forget both
# (0.000 / 0.002) but raise the retained FD on class 3 by 30 % over the control; 0.05 at lr 2e-4 forget
# both (0.000 / 0.000) with retained accuracy 0.957 / 0.962 and FD 19.4 / 16.9. Every class: README.
DEFAULT_SFD_STEPS = 300
DEFAULT_SFD_BATCH = 32
DEFAULT_SFD_LR = 2e-4
DEFAULT_SFD_FORGET_COEF = 0.05
# Generator EMA: the reference's 0.9999 averages the last ~20 % of its 50k steps; 0.99 averages the last
# ~100 steps, a third of a 300-step run.
DEFAULT_GENERATOR_EMA = 0.99
DEFAULT_SAMPLE_STEPS = 100
DEFAULT_SAMPLE_BATCH = 1000
DEFAULT_CLASSIFIER_EPOCHS = 30
DEFAULT_EVAL_SAMPLES_PER_CLASS = 200
DEFAULT_FORGET_SAMPLES = 1000
DEFAULT_CHECKPOINT_EVERY = 1000

Steps = Annotated[int, Field(ge=1, le=MAX_STEPS, description="Optimisation steps.")]
BatchSize = Annotated[int, Field(ge=2, le=MAX_BATCH_SIZE, description="Samples per optimisation step.")]
LearningRate = Annotated[
    float, Field(gt=0.0, le=MAX_LEARNING_RATE, allow_inf_nan=False, description="Adam learning rate.")
]
EmaDecay = Annotated[
    float, Field(ge=0.0, lt=1.0, allow_inf_nan=False, description="EMA decay per optimisation step.")
]
Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
LossCoef = Annotated[float, Field(ge=0.0, le=MAX_LOSS_COEF, allow_inf_nan=False)]
ClassIndex = Annotated[int, Field(ge=0, lt=MAX_CLASSES)]
CheckpointEvery = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_STEPS,
        description=(
            "Pass a resumable safetensors checkpoint to the job's hooks every this many steps (0: never). "
            "Resuming from one reproduces the uninterrupted run bit for bit on CPU."
        ),
    ),
]


class DiffusionModelConfig(BaseModel):
    """The architecture and noise schedule of a class-conditional epsilon-prediction diffusion model.

    Stored with every teacher and every SFD generator (both are this U-Net): the schedule is part of the
    model because SFD's t_init/t_min/t_max and every sampler are defined on it. The class embedding has
    ``num_classes + 1`` rows; the last one is the learned "null" class used by condition dropout and
    classifier-free guidance (the reference keeps it as a separate parameter; same function).
    Deviations from the reference U-Net (§2.1): smaller widths, no attention except an optional one at the
    lowest resolution, stride-2 convolution for downsampling with symmetric padding.
    """

    model_config = ConfigDict(extra="forbid")

    image_channels: int = Field(default=1, ge=1, le=MAX_CHANNELS, description="Image channels.")
    image_size: int = Field(default=8, ge=4, le=MAX_IMAGE_SIZE, description="Height = width of the images.")
    num_classes: int = Field(default=10, ge=2, le=MAX_CLASSES, description="Number of real classes.")
    base_channels: int = Field(
        default=DEFAULT_BASE_CHANNELS,
        ge=8,
        le=MAX_BASE_CHANNELS,
        description="Channels at full resolution; must be a multiple of norm_groups (reference: 128).",
    )
    channel_mults: list[Annotated[int, Field(ge=1, le=MAX_CHANNEL_MULT)]] = Field(
        default_factory=lambda: list(DEFAULT_CHANNEL_MULTS),
        min_length=1,
        max_length=MAX_LEVELS,
        description=(
            "Channel multiplier per resolution level; each extra level halves the resolution "
            "(reference: [1, 2, 2, 2])."
        ),
    )
    blocks_per_level: int = Field(
        default=DEFAULT_BLOCKS_PER_LEVEL,
        ge=1,
        le=MAX_BLOCKS_PER_LEVEL,
        description="Residual blocks per level on the way down (reference: 2).",
    )
    mid_attention: bool = Field(
        default=True, description="Self-attention in the middle block (lowest resolution), as the reference."
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="Dropout inside residual blocks (reference: 0.1; off by default at this scale).",
    )
    norm_groups: int = Field(
        default=DEFAULT_NORM_GROUPS, ge=1, le=64, description="GroupNorm groups (reference: 32)."
    )
    timesteps: int = Field(
        default=REFERENCE_TIMESTEPS,
        ge=10,
        le=MAX_TIMESTEPS,
        description="Diffusion steps T; keep 1000 so that SFD's t_init = 440 means sigma = 2.50.",
    )
    beta_start: float = Field(
        default=REFERENCE_BETA_START, gt=0.0, lt=1.0, allow_inf_nan=False, description="Linear beta_1."
    )
    beta_end: float = Field(
        default=REFERENCE_BETA_END, gt=0.0, lt=1.0, allow_inf_nan=False, description="Linear beta_T."
    )

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionModelConfig:
        if self.base_channels % self.norm_groups:
            raise ValueError("base_channels must be a multiple of norm_groups")
        downsamplings = len(self.channel_mults) - 1
        if self.image_size % (2**downsamplings):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{downsamplings} "
                f"({len(self.channel_mults)} resolution levels)"
            )
        if self.beta_end < self.beta_start:
            raise ValueError("beta_end must not be smaller than beta_start")
        return self


class DDPMTrainParams(PresetModel):
    """Training of a class-conditional DDPM teacher (``runners/diffusion.py: train``, §2.1).

    Faithful: epsilon-MSE summed over pixels and averaged over the batch, uniform t with antithetic pairs
    (t, T-1-t), condition dropout 0.1 to the null class, Adam lr 2e-4 with beta1 0.9, grad-norm clip 1,
    EMA weights are the released model. Scaled down: 3,000 steps instead of 800k and EMA 0.999 with warm-up
    instead of 0.9999 (see the constants in this module). ``exclude_classes`` trains the gold reference, a
    teacher that never saw those classes' images (the embedding rows stay, untrained).
    """

    preset: Preset = Field(
        default=DEFAULT_PRESET,
        description=(
            "'lethe' (default): steps, batch and EMA scaled so that a digits teacher trains in minutes on a "
            "CPU; 'reference': the reference config's 800k steps x 128 with EMA 0.9999 and no warm-up. An "
            "explicitly given field always wins."
        ),
    )
    steps: int = preset_field(
        "Optimisation steps.",
        lethe=DEFAULT_TEACHER_STEPS,
        reference=REFERENCE_TEACHER_STEPS,
        ge=1,
        le=MAX_STEPS,
    )
    batch_size: int = preset_field(
        "Samples per optimisation step.",
        lethe=DEFAULT_TEACHER_BATCH,
        reference=REFERENCE_TEACHER_BATCH,
        ge=2,
        le=MAX_BATCH_SIZE,
    )
    lr: LearningRate = REFERENCE_TEACHER_LR
    beta1: Beta = Field(default=REFERENCE_TEACHER_BETA1, description="Adam beta1 (reference 0.9).")
    beta2: Beta = Field(default=0.999, description="Adam beta2.")
    grad_clip_norm: float = Field(
        default=REFERENCE_GRAD_CLIP_NORM,
        gt=0.0,
        le=1e6,
        allow_inf_nan=False,
        description="Clip the global gradient norm to this value before each step (reference 1).",
    )
    ema_decay: float = preset_field(
        "EMA decay per step.",
        lethe=DEFAULT_TEACHER_EMA,
        reference=REFERENCE_EMA_DECAY,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
    )
    ema_warmup: bool = preset_field(
        "Use min(ema_decay, (1 + n) / (10 + n)) at update n so that short runs are not dominated by the "
        "random initialisation (Lethe addition; the reference's FixedEMAHelper has no warm-up).",
        lethe=True,
        reference=False,
    )
    cond_drop_prob: float = Field(
        default=REFERENCE_COND_DROP_PROB,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="Probability of replacing a label by the null class, so that CFG works (reference 0.1).",
    )
    antithetic: bool = Field(
        default=True, description="Draw half the timesteps and pair each t with T-1-t (reference)."
    )
    exclude_classes: list[ClassIndex] = Field(
        default_factory=list,
        max_length=MAX_CLASSES,
        description="Classes whose images are left out of training: [c_f] trains the gold reference.",
    )
    checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY

    @field_validator("exclude_classes")
    @classmethod
    def _unique(cls, classes: list[int]) -> list[int]:
        if len(set(classes)) != len(classes):
            raise ValueError("exclude_classes must not repeat a class")
        return sorted(classes)


class SampleParams(BaseModel):
    """Multi-step sampling of a teacher. ``ddpm`` is ancestral sampling on a strided subsequence of the T
    steps (the respaced posterior with beta'_i = 1 - alpha_bar_i / alpha_bar_prev, which with all T steps is
    the reference's DDPM sampler); ``ddim`` is the deterministic DDIM update (eta = 0) on the same steps.
    CFG follows the reference's convention eps = (1 + w) eps(c) - w eps(null), so w = 0 is plain
    conditional sampling and costs one network evaluation per step (two when w > 0)."""

    model_config = ConfigDict(extra="forbid")

    sampler: Literal["ddpm", "ddim"] = Field(
        default="ddpm", description="Ancestral DDPM (stochastic) or DDIM with eta = 0 (deterministic)."
    )
    steps: int = Field(
        default=DEFAULT_SAMPLE_STEPS,
        ge=1,
        le=MAX_TIMESTEPS,
        description="Denoising steps, evenly strided over the model's T (at most T; reference: T = 1000).",
    )
    guidance_scale: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_GUIDANCE_SCALE,
        allow_inf_nan=False,
        description="CFG scale w (reference cond_scale): eps = (1 + w) eps(x, c) - w eps(x, null).",
    )
    clip_denoised: bool = Field(
        default=True, description="Clamp each step's x0 estimate to the data range [-1, 1]."
    )
    batch_size: int = Field(
        default=DEFAULT_SAMPLE_BATCH, ge=1, le=MAX_BATCH_SIZE, description="Images per network call."
    )


class SFDParams(PresetModel):
    """Score Forgetting Distillation (``train_sfd``, §2.3) into a one-step generator.

    Faithful: teacher, fake score and generator all start from the teacher's EMA weights; G(z, c) =
    sigma_init * (z - eps_theta(b_init z, t_init, c)); the SiD generator loss with alpha and the per-sample
    omega normaliser; the forget term queries the teacher at the override class and the fake score at the
    forgotten class; alternating fake-score / generator steps, each with remain labels drawn from the
    retained classes' label distribution and no images; Adam betas (0, 0.999), eps 1e-8, no weight decay,
    gradient clipping by value at 1, generator EMA. The 'lethe' preset (default) scales down steps, batch,
    learning rates and generator EMA and raises both forget coefficients from 0.01 to 0.05, which the short
    run needs to forget every digits class (see the module constants and the README's per-class table); the
    'reference' preset is cifar10_sfd.yml. Setting both forget coefficients to 0 is the distil-only control
    (``cifar10_sid.yml``); :meth:`distill_only` makes it from any params.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Preset = Field(
        default=DEFAULT_PRESET,
        description=(
            "'lethe' (default): steps, batch, learning rates, forget coefficients and generator EMA scaled "
            "so that a digits-sized run forgets any class in minutes on a CPU (bench/diffusion_sfd.py); "
            "'reference': cifar10_sfd.yml's values (50k steps x 128, lr 1e-5, forget coefficients 0.01, EMA "
            "0.9999). An explicitly given field always wins."
        ),
    )
    forget_class: ClassIndex = Field(default=REFERENCE_FORGET_CLASS, description="Class to forget, c_f.")
    override_class: ClassIndex | None = Field(
        default=REFERENCE_OVERRIDE_CLASS,
        description=(
            "Safe class c_o whose teacher score the forgotten class is aligned with (reference default 1); "
            "null draws c_o uniformly from the other classes per sample (reference pseudo_label_type 'rand')."
        ),
    )
    steps: int = preset_field(
        "Optimisation steps.", lethe=DEFAULT_SFD_STEPS, reference=REFERENCE_SFD_STEPS, ge=1, le=MAX_STEPS
    )
    batch_size: int = preset_field(
        "Samples per optimisation step.",
        lethe=DEFAULT_SFD_BATCH,
        reference=REFERENCE_SFD_BATCH,
        ge=2,
        le=MAX_BATCH_SIZE,
    )
    fake_lr: float = preset_field(
        "Adam lr of the fake score network psi.",
        lethe=DEFAULT_SFD_LR,
        reference=REFERENCE_SFD_LR,
        gt=0.0,
        le=MAX_LEARNING_RATE,
        allow_inf_nan=False,
    )
    generator_lr: float = preset_field(
        "Adam lr of the generator theta.",
        lethe=DEFAULT_SFD_LR,
        reference=REFERENCE_SFD_LR,
        gt=0.0,
        le=MAX_LEARNING_RATE,
        allow_inf_nan=False,
    )
    beta1: Beta = Field(default=REFERENCE_SFD_BETAS[0], description="Adam beta1 of both (reference 0).")
    beta2: Beta = Field(default=REFERENCE_SFD_BETAS[1], description="Adam beta2 of both (reference 0.999).")
    adam_eps: float = Field(
        default=REFERENCE_ADAM_EPS,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Adam epsilon (reference 1e-8).",
    )
    grad_clip_value: float = Field(
        default=REFERENCE_GRAD_CLIP_VALUE,
        gt=0.0,
        le=1e6,
        allow_inf_nan=False,
        description="clip_grad_value_ before every step of both networks (reference 1; by value, not norm).",
    )
    alpha: float = Field(
        default=REFERENCE_SFD_ALPHA,
        ge=0.0,
        le=10.0,
        allow_inf_nan=False,
        description=(
            "SiD alpha (reference 1.2); alpha = 1 reduces the loss to (f_p - f_q)(f_q - x_g) / omega."
        ),
    )
    t_init: int = Field(default=REFERENCE_T_INIT, ge=1, le=MAX_TIMESTEPS, description="Generator's t*.")
    t_min: int = Field(default=REFERENCE_T_MIN, ge=0, le=MAX_TIMESTEPS, description="Lowest loss t.")
    t_max: int = Field(
        default=REFERENCE_T_MAX, ge=1, le=MAX_TIMESTEPS, description="Loss t ~ U{t_min, ..., t_max - 1}."
    )
    fake_remain_coef: LossCoef = Field(default=REFERENCE_REMAIN_COEF, description="sg_remain_coef (1).")
    fake_forget_coef: float = preset_field(
        "sg_forget_coef: weight of the fake score's loss on forget-class generations.",
        lethe=DEFAULT_SFD_FORGET_COEF,
        reference=REFERENCE_FORGET_COEF,
        ge=0.0,
        le=MAX_LOSS_COEF,
        allow_inf_nan=False,
    )
    generator_remain_coef: LossCoef = Field(default=REFERENCE_REMAIN_COEF, description="g_remain_coef (1).")
    generator_forget_coef: float = preset_field(
        "g_forget_coef: weight of the generator's forget term (teacher at the override class).",
        lethe=DEFAULT_SFD_FORGET_COEF,
        reference=REFERENCE_FORGET_COEF,
        ge=0.0,
        le=MAX_LOSS_COEF,
        allow_inf_nan=False,
    )
    forget_warmup: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Fraction of the steps whose forget terms draw t from [20, 980) (reference 0).",
    )
    ema_decay: float = preset_field(
        "Generator EMA decay per step.",
        lethe=DEFAULT_GENERATOR_EMA,
        reference=REFERENCE_GENERATOR_EMA,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
    )
    checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY

    @model_validator(mode="after")
    def _consistent(self) -> SFDParams:
        if not self.t_min < self.t_max:
            raise ValueError("t_min must be smaller than t_max")
        if self.override_class is not None and self.override_class == self.forget_class:
            raise ValueError("override_class must differ from forget_class")
        return self

    @property
    def forgets(self) -> bool:
        """False for the distil-only control (both forget coefficients 0)."""
        return self.fake_forget_coef > 0.0 or self.generator_forget_coef > 0.0

    def distill_only(self) -> SFDParams:
        """The same run with both forget coefficients 0: plain SiD distillation of the retained classes."""
        return self.model_copy(update={"fake_forget_coef": 0.0, "generator_forget_coef": 0.0})


class ClassifierParams(BaseModel):
    """The metric classifier: a small CNN trained on the real training images (all classes), seeded. Stands
    in for the reference's ImageNet ResNet34 fine-tuned on CIFAR-10 (§2.5); §2.7 asks for >= 95 % test
    accuracy on digits. Its penultimate layer is the feature space of the Frechet distance."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=DEFAULT_CLASSIFIER_EPOCHS, ge=1, le=1000, description="Passes over the data.")
    batch_size: BatchSize = 64
    lr: LearningRate = 1e-3
    weight_decay: float = Field(
        default=1e-4, ge=0.0, le=1.0, allow_inf_nan=False, description="Adam (L2) weight decay."
    )
    hidden: int = Field(default=64, ge=8, le=2048, description="Width of the penultimate (feature) layer.")


class GenerativeEvalParams(BaseModel):
    """How many samples the generative evaluation draws (§2.5, §2.7: the reference uses 5,000 per class;
    §2.7 suggests ~1,000 forget-class samples on CPU)."""

    model_config = ConfigDict(extra="forbid")

    samples_per_class: int = Field(
        default=DEFAULT_EVAL_SAMPLES_PER_CLASS,
        ge=2,
        le=MAX_SAMPLES_PER_CLASS,
        description="Generated images per retained class (conditional accuracy and Frechet distance).",
    )
    forget_samples: int = Field(
        default=DEFAULT_FORGET_SAMPLES,
        ge=1,
        le=MAX_SAMPLES_PER_CLASS,
        description="Generated images conditioned on the forgotten class (UA, override rate, entropy).",
    )
