"""Device resolution, reproducibility and progress plumbing shared by the diffusion loops."""

from __future__ import annotations

import time

import torch

from workers.engine.errors import EngineError, InvalidInputError
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
    "resolve_device",
    "seeded_generator",
    "synchronize",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``"cpu"`` / ``"cuda"`` are checked (same rules as
    :func:`workers.engine.execute.resolve_device`)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise EngineError("device 'cuda' was requested but no CUDA device is available to this worker")
        return torch.device("cuda")
    raise InvalidInputError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")


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
