"""Exponential moving average of a module's parameters (the reference's ``FixedEMAHelper``).

shadow <- decay * shadow + (1 - decay) * param after every optimiser step; buffers are copied (the U-Net
has none, GroupNorm keeps no running statistics). With ``warmup`` the decay of update n (1-based) is
min(decay, (1 + n) / (10 + n)), so a short run is not dominated by its initial weights.
"""

from __future__ import annotations

import torch
from torch import nn

# (1 + n) / (10 + n): the common EMA warm-up (e.g. TensorFlow's ExponentialMovingAverage num_updates).
WARMUP_OFFSET = 10.0


class EMA:
    def __init__(self, module: nn.Module, decay: float, *, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: parameter.detach().clone() for name, parameter in module.named_parameters()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (WARMUP_OFFSET + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        for name, parameter in module.named_parameters():
            # lerp(shadow, param, 1 - decay) = decay * shadow + (1 - decay) * param
            self.shadow[name].lerp_(parameter.detach(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, parameter in module.named_parameters():
            parameter.copy_(self.shadow[name])
