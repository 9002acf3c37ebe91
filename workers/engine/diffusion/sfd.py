"""Score Forgetting Distillation (SFD): the reference's ``train_sfd`` and losses (blindspot_sfd.md §2.2-2.3).

Three U-Nets start from the teacher's EMA weights: the teacher phi (frozen), the fake score psi (tracks the
generator's distribution by denoising score matching on its samples) and the one-step generator theta.
Every iteration:

1. psi-step: remain labels c are drawn from the retained classes' label distribution (labels only: SFD
   never sees an image); x_g = stopgrad G(z, c); epsilon-MSE of psi on (x_g, t, c) with t ~ U{t_min..t_max-1},
   weight ``fake_remain_coef``; plus ``fake_forget_coef`` x the same loss on stopgrad G(z, c_f) with label
   c_f; gradients clipped by value; one Adam step.
2. theta-step (psi frozen): ``generator_remain_coef`` x l_SiD(G(z, c); teacher at c, fake at c) +
   ``generator_forget_coef`` x l_SiD(G(z, c_f); teacher at the override class c_o, fake at c_f); gradients
   clipped by value; one Adam step; generator EMA update.

l_SiD (``sid_g_loss_conditional``): x_t = a_t x_g + b_t eps; f_phi, f_psi the denoised estimates of the two
networks (frozen, but differentiated through their input x_t); omega = mean |f_phi - x_g| per sample
(stop-gradient, clamped to >= 1e-5);
l = sum_pixels (f_phi - f_psi) * ((f_phi - x_g) - alpha (f_phi - f_psi)) / omega, averaged over the batch.
Both forget coefficients 0 is the distil-only control (plain SiD on the retained classes' labels).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workers.engine.diffusion import checkpoint
from workers.engine.diffusion.ddpm import epsilon_loss
from workers.engine.diffusion.ema import EMA
from workers.engine.diffusion.params import OMEGA_MIN, DiffusionModelConfig, SFDParams
from workers.engine.diffusion.runtime import LOG_EVERY, Stopwatch, hooks_or_null, seeded_generator
from workers.engine.diffusion.sampling import generate_one_step
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks

PHASE = "sfd"
PIXEL_DIMS = (1, 2, 3)
# forget_warmup draws the forget terms' t from [0.02 T, T - 0.02 T) (the reference's int(0.02 T + 0.5)).
WARMUP_T_FRACTION = 0.02
LOSS_NAMES = ("fake_remain_loss", "fake_forget_loss", "generator_remain_loss", "generator_forget_loss")


# ------------------------------------------------------------------------------------------------ losses
def sid_loss_per_sample(
    f_teacher: torch.Tensor, f_fake: torch.Tensor, x_g: torch.Tensor, alpha: float
) -> torch.Tensor:
    """sum_pixels (f_phi - f_psi) * ((f_phi - x_g) - alpha (f_phi - f_psi)) / omega, shape (N,)."""
    with torch.no_grad():
        omega = (f_teacher - x_g).abs().float().mean(dim=PIXEL_DIMS, keepdim=True).clamp(min=OMEGA_MIN)
    difference = f_teacher - f_fake
    return (difference * ((f_teacher - x_g) - alpha * difference) / omega).sum(dim=PIXEL_DIMS)


def sid_generator_loss(
    teacher: nn.Module,
    fake: nn.Module,
    schedule: NoiseSchedule,
    x_g: torch.Tensor,
    t: torch.Tensor,
    teacher_labels: torch.Tensor,
    fake_labels: torch.Tensor,
    eps: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """l_SiD averaged over the batch; gradients reach the generator through x_g (directly and via x_t)."""
    x_t = schedule.diffuse(x_g, t, eps)
    f_fake = schedule.denoise(x_t, t, fake(x_t, t, fake_labels))
    f_teacher = schedule.denoise(x_t, t, teacher(x_t, t, teacher_labels))
    return sid_loss_per_sample(f_teacher, f_fake, x_g, alpha).mean()


# ---------------------------------------------------------------------------------------- label source
def remain_label_counts(
    labels: Sequence[int] | np.ndarray, num_classes: int, forget_class: int
) -> np.ndarray:
    """Per-class counts of the retained classes from integer class labels (the forgotten class's count is
    set to 0, as the reference's retain-class loader skips it).

    This is the only data SFD consumes: the labels of the training set, never its images. Anything that
    is not a 1-D array of integer class labels (e.g. an image array) is refused here.
    """
    array = np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise InvalidInputError(
            "SFD is data-free: pass the training labels only (a 1-D integer array), never images "
            f"(got an array of shape {array.shape} and dtype {array.dtype})"
        )
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise InvalidInputError(f"labels must lie in [0, {num_classes})")
    counts = np.bincount(array.astype(np.int64), minlength=num_classes).astype(np.float64)
    counts[forget_class] = 0.0
    if counts.sum() <= 0:
        raise InvalidInputError("SFD needs at least one label of a retained class")
    return counts


class RemainLabels:
    """Draws remain labels c from the retained classes' empirical label distribution."""

    def __init__(self, counts: np.ndarray, device: torch.device):
        self.probabilities = torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=device)

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.probabilities, count, replacement=True, generator=generator)


def override_labels(
    params: SFDParams, num_classes: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """c_o for the forget term: the fixed override class, or uniform over the classes other than c_f."""
    device = generator.device
    if params.override_class is not None:
        return torch.full((count,), params.override_class, dtype=torch.long, device=device)
    drawn = torch.randint(0, num_classes - 1, (count,), generator=generator, device=device)
    return drawn + (drawn >= params.forget_class).long()


# -------------------------------------------------------------------------------------------- the loop
@dataclass
class SFDOutput:
    generator: UNet  # raw generator weights after the last step
    ema: EMA  # the released one-step generator
    fake: UNet
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int | None = None


@dataclass
class _Networks:
    teacher: UNet
    fake: UNet
    generator: UNet


def init_networks(teacher: UNet) -> _Networks:
    """Teacher (frozen, eval), fake score and generator: all copies of the teacher's (EMA) weights."""
    teacher = teacher.eval().requires_grad_(False)
    fake = copy.deepcopy(teacher)
    generator = copy.deepcopy(teacher)
    return _Networks(teacher=teacher, fake=fake, generator=generator)


def _loss_t(
    params: SFDParams, count: int, generator: torch.Generator, timesteps: int, warmup: bool
) -> torch.Tensor:
    low, high = params.t_min, params.t_max
    if warmup:
        margin = int(WARMUP_T_FRACTION * timesteps + 0.5)
        low, high = margin, timesteps - margin
    return torch.randint(low, high, (count,), generator=generator, device=generator.device)


def check_params(params: SFDParams, config: DiffusionModelConfig) -> None:
    """Refuse params that do not fit the model (timesteps, class indices) with a user-facing message."""
    if params.t_max > config.timesteps or params.t_init >= config.timesteps:
        raise InvalidInputError(
            f"t_init {params.t_init} / t_max {params.t_max} exceed the model's {config.timesteps} timesteps"
        )
    for name, value in (("forget_class", params.forget_class), ("override_class", params.override_class)):
        if value is not None and value >= config.num_classes:
            raise InvalidInputError(f"{name} {value} is not a class of this {config.num_classes}-class model")


def distill(
    teacher: UNet,
    config: DiffusionModelConfig,
    params: SFDParams,
    counts: np.ndarray,
    *,
    seed: int,
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
) -> SFDOutput:
    """Run SFD from ``teacher`` (a U-Net holding the teacher's EMA weights, on the run's device).

    ``counts`` are the retained classes' label counts from :func:`remain_label_counts`. Progress, cancel
    (an exception from ``hooks.progress``), checkpoints and ``resume`` work as in the DDPM loop.
    """
    check_params(params, config)
    device = next(teacher.parameters()).device
    progress = hooks_or_null(hooks)
    nets = init_networks(teacher)
    schedule = NoiseSchedule.from_config(config, device)
    betas = (params.beta1, params.beta2)
    fake_optimizer = torch.optim.Adam(
        nets.fake.parameters(), lr=params.fake_lr, betas=betas, eps=params.adam_eps, weight_decay=0.0
    )
    generator_optimizer = torch.optim.Adam(
        nets.generator.parameters(),
        lr=params.generator_lr,
        betas=betas,
        eps=params.adam_eps,
        weight_decay=0.0,
    )
    ema = EMA(nets.generator, params.ema_decay)
    rng = seeded_generator(seed, device)
    state = checkpoint.LoopState(
        {"fake": nets.fake, "generator": nets.generator},
        {"fake": fake_optimizer, "generator": generator_optimizer},
        {"generator": ema},
        rng,
    )
    # The model config is part of the run's identity: a checkpoint of another architecture must not load.
    params_json = checkpoint.run_identity(params, config)
    history: list[dict[str, float]] = []
    start_step = 0
    if resume is not None:
        start_step, history = checkpoint.restore(
            resume, state, phase=PHASE, seed=seed, params_json=params_json
        )

    labels = RemainLabels(counts, device)
    n = params.batch_size
    image_shape = (n, config.image_channels, config.image_size, config.image_size)
    warmup_steps = int(params.forget_warmup * params.steps + 0.5)
    forget_labels = torch.full((n,), params.forget_class, dtype=torch.long, device=device)

    def generate(labels_: torch.Tensor) -> torch.Tensor:
        z = torch.randn(image_shape, generator=rng, device=device)
        return generate_one_step(nets.generator, schedule, z, labels_, params.t_init)

    def noise() -> torch.Tensor:
        return torch.randn(image_shape, generator=rng, device=device)

    watch = Stopwatch(device)
    window = torch.zeros(len(LOSS_NAMES), device=device)
    window_steps = 0
    for step in range(start_step, params.steps):
        warmup = step < warmup_steps
        # ---- psi-step: denoising score matching on stop-gradient generator samples (labels only).
        nets.fake.train().requires_grad_(True)
        nets.generator.eval()
        fake_optimizer.zero_grad(set_to_none=True)
        c = labels.draw(n, rng)
        with torch.no_grad():
            x_g = generate(c)
        t = _loss_t(params, n, rng, config.timesteps, warmup=False)
        fake_remain = epsilon_loss(nets.fake, schedule, x_g, t, c, noise())
        (params.fake_remain_coef * fake_remain).backward()
        fake_forget = torch.zeros((), device=device)
        if params.fake_forget_coef > 0:
            with torch.no_grad():
                x_f = generate(forget_labels)
            t = _loss_t(params, n, rng, config.timesteps, warmup=warmup)
            fake_forget = epsilon_loss(nets.fake, schedule, x_f, t, forget_labels, noise())
            (params.fake_forget_coef * fake_forget).backward()
        torch.nn.utils.clip_grad_value_(nets.fake.parameters(), params.grad_clip_value)
        fake_optimizer.step()

        # ---- theta-step: SiD generator loss, psi and phi frozen (differentiated through their inputs).
        nets.fake.eval().requires_grad_(False)
        nets.generator.train().requires_grad_(True)
        generator_optimizer.zero_grad(set_to_none=True)
        x_g = generate(c)
        t = _loss_t(params, n, rng, config.timesteps, warmup=False)
        generator_remain = sid_generator_loss(
            nets.teacher, nets.fake, schedule, x_g, t, c, c, noise(), params.alpha
        )
        (params.generator_remain_coef * generator_remain).backward()
        generator_forget = torch.zeros((), device=device)
        if params.generator_forget_coef > 0:
            c_o = override_labels(params, config.num_classes, n, rng)
            x_f = generate(forget_labels)
            t = _loss_t(params, n, rng, config.timesteps, warmup=warmup)
            generator_forget = sid_generator_loss(
                nets.teacher, nets.fake, schedule, x_f, t, c_o, forget_labels, noise(), params.alpha
            )
            (params.generator_forget_coef * generator_forget).backward()
        torch.nn.utils.clip_grad_value_(nets.generator.parameters(), params.grad_clip_value)
        generator_optimizer.step()
        nets.generator.eval().requires_grad_(False)
        ema.update(nets.generator)

        window += torch.stack([fake_remain, fake_forget, generator_remain, generator_forget]).detach().float()
        window_steps += 1
        done = step + 1
        info: dict[str, float] = {}
        if done % LOG_EVERY == 0 or done == params.steps:
            means = (window / window_steps).tolist()
            if not all(np.isfinite(means)):
                raise InvalidInputError(f"{PHASE}: diverged at step {done}; lower the learning rates")
            info = {"step": done, **dict(zip(LOSS_NAMES, means, strict=True)), "seconds": watch.seconds()}
            history.append(info)
            window.zero_()
            window_steps = 0
        progress.progress(PHASE, done, params.steps, info)
        if hooks is not None and params.checkpoint_every and done % params.checkpoint_every == 0:
            blob = checkpoint.save(
                state, phase=PHASE, seed=seed, params_json=params_json, step=done, history=history
            )
            hooks.checkpoint(PHASE, done, blob)
    return SFDOutput(
        generator=nets.generator,
        ema=ema,
        fake=nets.fake,
        history=history,
        seconds=watch.seconds(),
        resumed_from_step=start_step if resume is not None else None,
    )
