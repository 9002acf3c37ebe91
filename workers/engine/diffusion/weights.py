"""Weights in and out of the engine as ``dict[str, np.ndarray]`` (CPU float32, safetensors-ready)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from workers.engine.errors import InvalidInputError

Weights = dict[str, np.ndarray]


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> Weights:
    """Detached, contiguous CPU float32 copies of every tensor (integer buffers keep their dtype)."""
    return {
        name: np.ascontiguousarray(
            value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype).numpy()
        ).copy()
        for name, value in state.items()
    }


def module_weights(module: nn.Module) -> Weights:
    return state_to_numpy(module.state_dict())


def load_weights(module: nn.Module, weights: Mapping[str, np.ndarray], what: str) -> None:
    """Load ``weights`` into ``module`` (on its device), raising :class:`InvalidInputError` with the missing,
    unexpected or mis-shaped keys when they do not belong to this architecture, or on non-finite values."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(
        name
        for name in set(expected) & set(weights)
        if tuple(np.shape(weights[name])) != tuple(expected[name].shape)
    )
    if missing or unexpected or mismatched:
        details = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if names:
                details.append(f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        raise InvalidInputError(f"{what} weights do not match the model config ({'; '.join(details)})")
    non_finite = sorted(name for name in expected if not np.all(np.isfinite(np.asarray(weights[name]))))
    if non_finite:
        raise InvalidInputError(f"{what} weights hold NaN/Inf values (first: {non_finite[0]})")
    device = next(iter(expected.values())).device
    state = {
        name: torch.as_tensor(np.asarray(weights[name]), dtype=expected[name].dtype).to(device)
        for name in expected
    }
    module.load_state_dict(state, strict=True)
