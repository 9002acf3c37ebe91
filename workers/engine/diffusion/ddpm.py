"""Training a class-conditional epsilon-prediction DDPM teacher (the reference's ``train``, §2.1).

Per step: a batch of real images x_0 in [-1, 1] with labels c; each label is replaced by the null class
with probability ``cond_drop_prob``; t uniform on {0, ..., T-1} with antithetic pairs (t, T-1-t); the loss
is sum over pixels of (eps - eps_theta(a_t x_0 + b_t eps, t, c))^2, averaged over the batch; gradients are
clipped to global norm ``grad_clip_norm`` before the Adam step; the EMA is updated after it.

Data stay on the device. Each batch is a fresh without-replacement draw of ``batch_size`` indices (the
reference streams an infinite shuffled sampler: the same marginal distribution, with no state to carry
across a checkpoint). On CUDA the forward runs under bf16 autocast; the loss is reduced in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workers.engine.diffusion import checkpoint
from workers.engine.diffusion.ema import EMA
from workers.engine.diffusion.params import DDPMTrainParams, DiffusionModelConfig
from workers.engine.diffusion.runtime import LOG_EVERY, Stopwatch, hooks_or_null, seeded_generator
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks

PHASE = "ddpm_train"


def epsilon_loss(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """The reference's ``noise_estimation_loss_conditional``: per-sample pixel sums of the squared epsilon
    error, averaged over the batch (also the fake-score loss of SFD, ``sid_sg_loss_conditional``)."""
    prediction = model(schedule.diffuse(x0, t, eps), t, labels)
    return (eps - prediction.float()).square().sum(dim=(1, 2, 3)).mean()


def antithetic_timesteps(count: int, timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """t for ``count // 2 + 1`` draws, each paired with T - 1 - t, cut to ``count`` (the reference)."""
    half = torch.randint(0, timesteps, (count // 2 + 1,), generator=generator, device=generator.device)
    return torch.cat([half, timesteps - 1 - half])[:count]


@dataclass
class DDPMTrainOutput:
    model: UNet  # the raw (non-EMA) weights after the last step
    ema: EMA  # the released teacher
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int | None = None


def train(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DiffusionModelConfig,
    params: DDPMTrainParams,
    *,
    seed: int,
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
) -> DDPMTrainOutput:
    """Train a fresh U-Net (seeded init) on ``images`` (N, C, H, W) in [-1, 1] and int64 ``labels``, both
    already on the training device and already restricted to the classes to learn.

    ``hooks.progress`` is called after every step (it may raise JobCancelled); with ``checkpoint_every`` > 0
    ``hooks.checkpoint(PHASE, step, blob)`` receives a resumable blob; ``resume`` continues from one.
    """
    device = images.device
    if images.shape[0] < 2:
        raise InvalidInputError("DDPM training needs at least 2 training images")
    progress = hooks_or_null(hooks)
    torch.manual_seed(seed)  # the U-Net's initialisation (and dropout, if enabled)
    model = UNet(config).to(device)
    ema = EMA(model, params.ema_decay, warmup=params.ema_warmup)
    schedule = NoiseSchedule.from_config(config, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2))
    generator = seeded_generator(seed, device)
    state = checkpoint.LoopState({"model": model}, {"model": optimizer}, {"model": ema}, generator)
    # The model config is part of the run's identity: a checkpoint of another architecture must not load.
    params_json = checkpoint.run_identity(params, config)
    history: list[dict[str, float]] = []
    start_step = 0
    if resume is not None:
        start_step, history = checkpoint.restore(
            resume, state, phase=PHASE, seed=seed, params_json=params_json
        )
    batch_size = min(params.batch_size, images.shape[0])
    null_class = config.num_classes
    autocast = device.type == "cuda"
    watch = Stopwatch(device)
    window_loss = torch.zeros((), device=device)
    window_steps = 0
    model.train()
    for step in range(start_step, params.steps):
        index = torch.randperm(images.shape[0], generator=generator, device=device)[:batch_size]
        x0 = images[index]
        c = labels[index]
        dropped = torch.rand(batch_size, generator=generator, device=device) < params.cond_drop_prob
        c = torch.where(dropped, torch.full_like(c, null_class), c)
        if params.antithetic:
            t = antithetic_timesteps(batch_size, config.timesteps, generator)
        else:
            t = torch.randint(0, config.timesteps, (batch_size,), generator=generator, device=device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = epsilon_loss(model, schedule, x0, t, c, eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip_norm)
        optimizer.step()
        ema.update(model)
        window_loss += loss.detach()
        window_steps += 1
        done = step + 1
        info: dict[str, float] = {}
        if done % LOG_EVERY == 0 or done == params.steps:
            mean_loss = float(window_loss.item()) / window_steps
            if not math.isfinite(mean_loss):
                raise InvalidInputError(f"{PHASE}: training diverged at step {done}; lower the learning rate")
            info = {"step": done, "loss": mean_loss, "seconds": watch.seconds()}
            history.append(info)
            window_loss.zero_()
            window_steps = 0
        progress.progress(PHASE, done, params.steps, info)
        if hooks is not None and params.checkpoint_every and done % params.checkpoint_every == 0:
            blob = checkpoint.save(
                state, phase=PHASE, seed=seed, params_json=params_json, step=done, history=history
            )
            hooks.checkpoint(PHASE, done, blob)
    model.eval()
    return DDPMTrainOutput(
        model=model,
        ema=ema,
        history=history,
        seconds=watch.seconds(),
        resumed_from_step=start_step if resume is not None else None,
    )
