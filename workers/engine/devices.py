"""Which device a request runs on: one rule for every part of the engine (methods, audits, diffusion)."""

from __future__ import annotations

import torch

from workers.engine.errors import EngineError, InvalidInputError


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; explicit names are checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise EngineError("device 'cuda' was requested but no CUDA device is available to this worker")
        return "cuda"
    raise InvalidInputError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")


def torch_device(name: str) -> torch.device:
    """:func:`resolve_device` as a ``torch.device``."""
    return torch.device(resolve_device(name))


__all__ = ["resolve_device", "torch_device"]
