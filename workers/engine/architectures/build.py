"""Torch side of the architecture catalog: build models and move weights in and out of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from workers.engine.architectures import ARCHITECTURES, FLOAT32, INT64, ShapeDict
from workers.engine.errors import InvalidInputError
from workers.engine.imports import import_by_path

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {FLOAT32: np.dtype(np.float32), INT64: np.dtype(np.int64)}
# How many offending keys an error message spells out before summarising the rest as a count.
MAX_KEYS_IN_MESSAGE = 5


def build_model(name: str, config: BaseModel | Mapping[str, Any]) -> nn.Module:
    """Validate ``config`` against architecture ``name`` and build a freshly initialised model.

    Initialisation draws from torch's global RNG, so seed it first for reproducible weights.
    """
    spec = ARCHITECTURES.get(name)
    parsed = spec.parse_config(config)
    builder = import_by_path(spec.builder)
    model: nn.Module = builder(parsed, *spec.builder_args)
    return model


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    hidden = len(keys) - MAX_KEYS_IN_MESSAGE
    return f"{shown} (and {hidden} more)" if hidden > 0 else shown


def check_weights(weights: Mapping[str, np.ndarray], expected: ShapeDict) -> dict[str, np.ndarray]:
    """Check names, shapes, dtype kinds and finiteness; return arrays converted to the expected dtypes."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys: {_key_list(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} keys: {_key_list(unexpected)}")
        raise InvalidInputError("weights do not match the architecture: " + "; ".join(problems))
    converted: dict[str, np.ndarray] = {}
    for key, (shape, dtype_name) in expected.items():
        array = np.asarray(weights[key])
        if tuple(array.shape) != shape:
            raise InvalidInputError(f"weight {key!r} has shape {list(array.shape)}, expected {list(shape)}")
        target = NUMPY_DTYPES[dtype_name]
        if target.kind == "f" and array.dtype.kind != "f":
            raise InvalidInputError(f"weight {key!r} must be floating point, got {array.dtype}")
        if target.kind == "i" and array.dtype.kind not in "iu":
            raise InvalidInputError(f"weight {key!r} must be an integer, got {array.dtype}")
        if target.kind == "f" and not np.all(np.isfinite(array)):
            raise InvalidInputError(f"weight {key!r} contains NaN or infinite values")
        converted[key] = np.ascontiguousarray(array, dtype=target)
    return converted


def load_weights(model: nn.Module, weights: Mapping[str, np.ndarray], expected: ShapeDict) -> None:
    """Copy ``weights`` into ``model`` after a strict key/shape/dtype check against ``expected``."""
    checked = check_weights(weights, expected)
    model.load_state_dict({key: torch.from_numpy(array) for key, array in checked.items()}, strict=True)


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's full state_dict as CPU numpy arrays (float32 parameters/buffers, int64 counters)."""
    return {
        key: value.detach().to("cpu").contiguous().numpy().copy() for key, value in model.state_dict().items()
    }
