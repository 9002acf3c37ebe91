"""The linear-beta variance-preserving DDPM schedule of the reference (blindspot_sfd.md §2.1).

x_t = a_t x_0 + b_t eps with a_t = sqrt(alpha_bar_t), b_t = sqrt(1 - alpha_bar_t) and sigma_t = b_t / a_t
= sqrt(1 / alpha_bar_t - 1). Timesteps are 0-based indices into the T betas, as in the reference
(``(1 - b).cumprod(dim=0).index_select(0, t)``). Computed in float64 and stored as float32, like the
reference's numpy schedule cast with ``.float()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.engine.diffusion.params import DiffusionModelConfig


@dataclass(frozen=True)
class NoiseSchedule:
    betas: torch.Tensor  # (T,)
    alphas_cumprod: torch.Tensor  # (T,) alpha_bar_t
    # A CPU copy for scalar look-ups (t_init's coefficients every SFD step) without a device sync.
    host_alphas_cumprod: torch.Tensor

    @classmethod
    def linear(
        cls, timesteps: int, beta_start: float, beta_end: float, device: torch.device | str = "cpu"
    ) -> NoiseSchedule:
        betas64 = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod64 = torch.cumprod(1.0 - betas64, dim=0)
        alphas_cumprod = alphas_cumprod64.to(torch.float32)
        return cls(
            betas=betas64.to(torch.float32).to(device),
            alphas_cumprod=alphas_cumprod.to(device),
            host_alphas_cumprod=alphas_cumprod,
        )

    @classmethod
    def from_config(cls, config: DiffusionModelConfig, device: torch.device | str = "cpu") -> NoiseSchedule:
        return cls.linear(config.timesteps, config.beta_start, config.beta_end, device)

    @property
    def timesteps(self) -> int:
        return int(self.betas.shape[0])

    def signal(self, t: torch.Tensor) -> torch.Tensor:
        """a_t = sqrt(alpha_bar_t), shaped (N, 1, 1, 1) for broadcasting over images."""
        return self.alphas_cumprod.index_select(0, t).sqrt().view(-1, 1, 1, 1)

    def noise(self, t: torch.Tensor) -> torch.Tensor:
        """b_t = sqrt(1 - alpha_bar_t), shaped (N, 1, 1, 1)."""
        return (1.0 - self.alphas_cumprod.index_select(0, t)).sqrt().view(-1, 1, 1, 1)

    def coefficients(self, step: int) -> tuple[float, float, float]:
        """(a_t, b_t, sigma_t) of one timestep as Python floats (e.g. t_init = 440: 0.3711, 0.9286, 2.502)."""
        # Same expressions as the reference's init_a / init_b / init_sigma, in float32 like its tensors.
        alpha_bar = self.host_alphas_cumprod[step]
        a = float(alpha_bar.sqrt().item())
        b = float((1.0 - alpha_bar).sqrt().item())
        sigma = float((1.0 / alpha_bar - 1.0).sqrt().item())
        return a, b, sigma

    def diffuse(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0): a_t x_0 + b_t eps."""
        return self.signal(t) * x0 + self.noise(t) * eps

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """The denoised estimate f(x_t, t) = (x_t - b_t eps_hat) / a_t (the reference's sg_x / p_x)."""
        return (x_t - self.noise(t) * eps_hat) / self.signal(t)
