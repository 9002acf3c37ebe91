"""Device resolution, reproducibility and progress plumbing shared by the diffusion loops."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from workers.engine.errors import EngineError, InvalidInputError
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.training import deterministic_algorithms

# Loss records go into the history (and the progress info) every this many steps; reading a loss back
# from the device on every step would synchronise a GPU once per step.
LOG_EVERY = 50


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


@contextmanager
def reproducible(device: torch.device) -> Iterator[bool]:
    """Deterministic kernels on CPU (cheap there, and the loops' runs are then bit-for-bit repeatable);
    on CUDA favour speed with cuDNN autotuning. Yields whether the run is deterministic."""
    if device.type == "cuda":
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield False
        finally:
            torch.backends.cudnn.benchmark = previous
    else:
        with deterministic_algorithms(True):
            yield True


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """The loop's only source of randomness. It lives on the loop's device: a diffusion step draws a noise
    tensor as large as its batch (several per SFD step), which a CPU generator would have to copy over
    every step. Runs are therefore repeatable per device type, not across CPU and CUDA."""
    return torch.Generator(device=device).manual_seed(seed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
