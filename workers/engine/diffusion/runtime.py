"""Device resolution, reproducibility and progress plumbing shared by the diffusion loops."""

from __future__ import annotations

import time

import torch

from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.training import reproducible, synchronize

# Loss records go into the history (and the progress info) every this many steps; reading a loss back
# from the device on every step would synchronise a GPU once per step.
LOG_EVERY = 50

__all__ = [
    "LOG_EVERY",
    "Stopwatch",
    "hooks_or_null",
    "reproducible",
    "seeded_generator",
    "synchronize",
]


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """The loop's only source of randomness. It lives on the loop's device: a diffusion step draws a noise
    tensor as large as its batch (several per SFD step), which a CPU generator would have to copy over
    every step. Runs are therefore repeatable per device type, not across CPU and CUDA."""
    return torch.Generator(device=device).manual_seed(seed)


class Stopwatch:
    def __init__(self, device: torch.device):
        self.device = device
        synchronize(device)
        self.started = time.perf_counter()

    def seconds(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.started


def hooks_or_null(hooks: EngineHooks | None) -> EngineHooks:
    return hooks if hooks is not None else NullHooks()
