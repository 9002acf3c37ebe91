"""Relearning attacks: k optimiser steps on a copy of a model, and the data they relearn from.

The three sources (train-split indices, chosen once per job so that the audited model and its retrain
control relearn on the same samples in the same batch order):

- ``forget_subset``: a seeded random subset of the forget set, at most half of it. Every recovery curve is
  measured on the rest of the forget set (the held-out forget set), so that relearning a sample is never
  counted as recovering it.
- ``retain_neighbours``: the retain samples nearest to the forget set **in input space** (Euclidean distance
  of the model's inputs, as normalised on the device, to the nearest forget sample). Input space rather than
  a model's feature space because the audited model and its control would disagree on features, and the
  two must relearn the same samples.
- ``unrelated``: a seeded random draw from the retain samples whose distance to the forget set is above
  the median: data of the same task that is not near what was forgotten.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.engine.recovery.params import RelearnSource

DISTANCE_CHUNK = 1024
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The loss of one relearning step: (the model being relearned, a batch of inputs, their targets) -> scalar.
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Probe = Callable[[nn.Module], float]


def supervised(loss: Loss) -> Objective:
    """The objective of a predictor: ``loss`` of its outputs on the batch against the targets."""

    def objective(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(model(inputs).float(), targets)

    return objective


@dataclass(frozen=True)
class Sources:
    """Train-split indices of every relearning source and of the held-out forget set the curves read."""

    indices: dict[str, np.ndarray]
    held_out: np.ndarray


def nearest_forget_distance(inputs: torch.Tensor, retain: np.ndarray, forget: np.ndarray) -> np.ndarray:
    """For every retain sample, the Euclidean distance (flattened inputs) to its nearest forget sample."""
    flat = inputs.reshape(inputs.shape[0], -1).float()
    targets = flat[torch.from_numpy(forget).to(flat.device)]
    out = []
    for start in range(0, retain.size, DISTANCE_CHUNK):
        chunk = flat[torch.from_numpy(retain[start : start + DISTANCE_CHUNK]).to(flat.device)]
        out.append(torch.cdist(chunk, targets).amin(dim=1).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def choose_sources(
    inputs: torch.Tensor,
    forget: np.ndarray,
    retain: np.ndarray,
    wanted: Sequence[RelearnSource],
    samples: int,
    seed: int,
) -> Sources:
    rng = np.random.default_rng(seed)
    chosen: dict[str, np.ndarray] = {}
    subset_size = min(samples, forget.size // 2)
    subset = np.sort(rng.choice(forget, size=subset_size, replace=False)) if subset_size else forget[:0]
    held_out = np.setdiff1d(forget, subset)
    if "forget_subset" in wanted:
        chosen["forget_subset"] = subset
    else:
        held_out = forget
    if {"retain_neighbours", "unrelated"} & set(wanted):
        distance = nearest_forget_distance(inputs, retain, forget)
        # Stable order: ties keep the lower index, so the choice is the same on every device.
        by_distance = retain[np.argsort(distance, kind="stable")]
        if "retain_neighbours" in wanted:
            chosen["retain_neighbours"] = np.sort(by_distance[:samples])
        if "unrelated" in wanted:
            far = retain[distance > np.median(distance)]
            chosen["unrelated"] = np.sort(rng.choice(far, size=min(samples, far.size), replace=False))
    return Sources(indices=chosen, held_out=held_out)


@dataclass(frozen=True)
class Curve:
    steps: list[int]
    values: list[float]
    steps_taken: int


def relearn_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    probe: Probe,
    grid: Sequence[int],
    *,
    objective: Objective,
    lr: float,
    batch_size: int,
    seed: int,
) -> Curve:
    """Adam steps of ``objective`` on a deep copy of ``model`` over (inputs, targets), ``probe`` read after
    each step of ``grid`` (0: before any step). Batches cycle through seeded permutations of the data, the
    same for every model given the same seed; the global RNG is restored afterwards and ``model`` is left
    untouched."""
    grid = sorted(set(grid))
    wanted = set(grid)
    values: list[float] = []
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # dropout in the copy
        work = copy.deepcopy(model)
        work.requires_grad_(True)
        optimizer = torch.optim.Adam(work.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        order = torch.zeros(0, dtype=torch.long)
        position = 0
        steps = 0
        if 0 in wanted:
            values.append(probe(work))
        while steps < grid[-1]:
            if position >= order.numel():
                order, position = torch.randperm(inputs.shape[0], generator=generator), 0
            batch = order[position : position + batch_size].to(inputs.device)
            position += batch_size
            work.train()
            batch_loss = objective(work, inputs[batch], targets[batch])
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            steps += 1
            if steps in wanted:
                values.append(probe(work))
    return Curve(steps=grid, values=values, steps_taken=steps)
