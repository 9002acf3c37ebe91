"""Samplers: strided ancestral DDPM and DDIM for a teacher, and the one-step SFD generator.

Multi-step (:func:`sample_multistep`): the K timesteps tau_1 < ... < tau_K evenly strided over {0..T-1}
(K = T is the full chain). From x_{tau_K} ~ N(0, I), each step predicts eps (with CFG), forms
x0_hat = (x_t - b_t eps) / a_t (clamped to [-1, 1] when asked), then
- ``ddpm``: samples the respaced posterior q(x_prev | x_t, x0_hat) with beta' = 1 - alpha_bar_t /
  alpha_bar_prev and its "fixed small" variance beta' (1 - alpha_bar_prev) / (1 - alpha_bar_t); with K = T
  this is the original ancestral sampler;
- ``ddim``: x_prev = a_prev x0_hat + b_prev eps (eta = 0), with eps re-derived from the clamped x0_hat as in
  guided-diffusion's ``ddim_sample``.
The last step returns x0_hat. One network evaluation per step without guidance, two with (batched).

One step (:func:`generate_one_step`): the reference's ``run_generator``: x* = b_init z and
G(z, c) = x* / a_init - sigma_init eps_theta(x*, t_init, c) = sigma_init (z - eps_theta(b_init z, t_init, c)).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.diffusion.params import SampleParams
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet, guided_eps

DATA_MIN = -1.0
DATA_MAX = 1.0


def strided_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps evenly spread over [0, T-1], ascending, always including 0 and T-1."""
    steps = min(steps, timesteps)
    if steps == 1:
        return [timesteps - 1]
    values = torch.linspace(0, timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(values))


def network_evaluations(params: SampleParams, timesteps: int) -> int:
    """U-Net passes per generated image (a CFG pass counts twice: conditional + null)."""
    return len(strided_timesteps(timesteps, params.steps)) * (2 if params.guidance_scale > 0 else 1)


@torch.no_grad()
def sample_multistep(
    model: UNet,
    schedule: NoiseSchedule,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    params: SampleParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """Images in [-1, 1] (unclamped for ddim without clipping), one per label, on the labels' device."""
    device = labels.device
    count = labels.shape[0]
    x = torch.randn((count, *image_shape), generator=generator, device=device)
    sequence = strided_timesteps(schedule.timesteps, params.steps)
    alphas_cumprod = schedule.alphas_cumprod
    for position in reversed(range(len(sequence))):
        step = sequence[position]
        t = torch.full((count,), step, dtype=torch.long, device=device)
        eps = guided_eps(model, x, t, labels, params.guidance_scale).float()
        alpha_bar = alphas_cumprod[step]
        x0 = (x - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        if params.clip_denoised:
            x0 = x0.clamp(DATA_MIN, DATA_MAX)
        if position == 0:
            return x0
        alpha_bar_prev = alphas_cumprod[sequence[position - 1]]
        if params.sampler == "ddim":
            eps = (x - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()
            x = alpha_bar_prev.sqrt() * x0 + (1.0 - alpha_bar_prev).sqrt() * eps
            continue
        beta = 1.0 - alpha_bar / alpha_bar_prev
        mean = (alpha_bar_prev.sqrt() * beta / (1.0 - alpha_bar)) * x0 + (
            (1.0 - beta).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        ) * x
        variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        x = mean + variance.sqrt() * torch.randn(x.shape, generator=generator, device=device)
    return x


def generate_one_step(
    model: nn.Module, schedule: NoiseSchedule, z: torch.Tensor, labels: torch.Tensor, t_init: int
) -> torch.Tensor:
    """G(z, c) with gradients through ``model`` when enabled (the SFD generator step needs them)."""
    a, b, sigma = schedule.coefficients(t_init)
    x_init = b * z
    t = torch.full((z.shape[0],), t_init, dtype=torch.long, device=z.device)
    eps: torch.Tensor = model(x_init, t, labels)
    return x_init / a - sigma * eps


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space -> [0, 1] data space, clamped (the reference's inverse data transform)."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] data space -> [-1, 1] model space (the reference's ``rescaled`` data transform)."""
    return images * 2.0 - 1.0
