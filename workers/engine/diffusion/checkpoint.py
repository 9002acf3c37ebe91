"""Resumable step checkpoints of the diffusion loops, one blob each (workers.engine.checkpoints; no pickle).

A blob holds the live modules, the Adam states (flattened per parameter index), the EMA shadows and the
state of the loop's random generator, plus metadata (format, phase, seed, params JSON, completed steps,
history). Restoring it into freshly built objects continues the loop exactly where it stopped: on CPU the
resumed run ends with bit-identical weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from workers.engine import checkpoints
from workers.engine.diffusion.ema import EMA

CHECKPOINT_FORMAT = "lethe.diffusion-checkpoint/1"


def run_identity(params: BaseModel, config: BaseModel) -> str:
    """The JSON a checkpoint is matched against on resume: the loop's params and the model config."""
    return json.dumps({"params": params.model_dump(mode="json"), "config": config.model_dump(mode="json")})


@dataclass
class LoopState:
    """Everything a loop mutates; the names become key prefixes in the blob."""

    modules: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    emas: Mapping[str, EMA]
    generator: torch.Generator


def save(
    state: LoopState, *, phase: str, seed: int, params_json: str, step: int, history: list[dict[str, float]]
) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, module in state.modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module/{name}/{key}"] = value
    for name, optimizer in state.optimizers.items():
        optimizer_state = optimizer.state_dict()
        groups[name] = optimizer_state["param_groups"]
        for index, entries in optimizer_state["state"].items():
            for key, value in entries.items():
                tensors[f"optimizer/{name}/{index}/{key}"] = torch.as_tensor(value)
    for name, ema in state.emas.items():
        tensors[f"ema_updates/{name}"] = torch.tensor([ema.updates], dtype=torch.int64)
        for key, value in ema.shadow.items():
            tensors[f"ema/{name}/{key}"] = value
    tensors["rng/generator"] = state.generator.get_state()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "phase": phase,
        "seed": str(seed),
        "params": params_json,
        "step": str(step),
        "history": json.dumps(history),
        "param_groups": json.dumps(groups),
    }
    return checkpoints.pack(tensors, metadata)


def restore(
    blob: bytes, state: LoopState, *, phase: str, seed: int, params_json: str
) -> tuple[int, list[dict[str, float]]]:
    """Load a :func:`save` blob into ``state``; return (completed steps, history so far)."""
    tensors, metadata = checkpoints.unpack(
        blob,
        expected={"format": CHECKPOINT_FORMAT, "phase": phase, "seed": str(seed)},
        identity_key="params",
        identity=json.loads(params_json),
    )
    groups = json.loads(metadata["param_groups"])
    for name, module in state.modules.items():
        prefix = f"module/{name}/"
        device = next(module.parameters()).device
        module.load_state_dict(
            {
                key.removeprefix(prefix): value.to(device)
                for key, value in tensors.items()
                if key.startswith(prefix)
            },
            strict=True,
        )
    for name, optimizer in state.optimizers.items():
        prefix = f"optimizer/{name}/"
        entries: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key.removeprefix(prefix).split("/", 1)
                entries.setdefault(int(index), {})[field] = value
        # Adam keeps its per-parameter state on the parameter's device (its ``step`` stays on the CPU).
        optimizer.load_state_dict({"state": entries, "param_groups": groups[name]})
    for name, ema in state.emas.items():
        ema.updates = int(tensors[f"ema_updates/{name}"].item())
        prefix = f"ema/{name}/"
        for key in ema.shadow:
            ema.shadow[key].copy_(tensors[prefix + key])
    state.generator.set_state(tensors["rng/generator"])
    history: list[dict[str, float]] = json.loads(metadata["history"])
    return int(metadata["step"]), history
