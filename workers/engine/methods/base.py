"""The torch-side interface every method implementation follows.

An implementation is ``run(context: MethodContext) -> MethodOutput``. It receives the model already built,
placed on the device and initialised (seeded random init for ``train``/``retrain``, the original weights for
``unlearn`` methods) and returns the model it produced; the engine does timing, evaluation and export.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from workers.engine.hooks import EngineHooks
from workers.engine.masks import Masks, apply_masks
from workers.engine.methods.params import Inherited, TrainRecipe
from workers.engine.task_types import TaskType
from workers.engine.training import Segment, train_epochs


@dataclass
class DeviceSplits:
    """The dataset on the compute device. ``forget_indices``/``retain_indices`` index the train split and
    are sorted ascending (empty forget set for plain training)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    forget_indices: torch.Tensor
    retain_indices: torch.Tensor

    def retain(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train[self.retain_indices], self.y_train[self.retain_indices]

    def forget(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train[self.forget_indices], self.y_train[self.forget_indices]


@dataclass
class MethodContext:
    model: nn.Module
    params: BaseModel  # an instance of the method's params_model
    data: DeviceSplits
    seed: int
    phase: str  # progress/checkpoint phase name (the method name)
    hooks: EngineHooks | None
    task: TaskType
    num_classes: int
    resume: bytes | None = None
    original_recipe: TrainRecipe | None = None  # how the original model was trained, when known
    masks: Masks | None = None  # a pruned model's sparsity masks (bool, on the device)

    def enforce_constraints(self) -> None:
        """Call after every optimiser step: keeps pruned weights at exactly zero."""
        apply_masks(self.model, self.masks)


@dataclass
class MethodOutput:
    model: nn.Module
    resolved_params: dict[str, Any]  # JSON-able params actually used, defaults filled in
    history: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    masks: Masks | None = None  # new sparsity masks (prune); None keeps the input model's masks


def train_method(
    context: MethodContext,
    segments: Sequence[Segment],
    recipe: TrainRecipe,
    resolved_params: dict[str, Any],
    *,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    details: dict[str, Any] | None = None,
    **options: Any,
) -> MethodOutput:
    """Run ``train_epochs`` on ``context.model`` with the context's seed, phase, hooks and resume state: the
    body of every training-style method. ``after_step`` defaults to the pruning-mask constraint; ``options``
    go to ``train_epochs`` (e.g. ``epoch_record``, ``divergence``)."""
    result = train_epochs(
        context.model,
        segments,
        recipe,
        seed=context.seed,
        phase=context.phase,
        hooks=context.hooks,
        resume=context.resume,
        task=context.task,
        after_step=after_step or (lambda _optimizer: context.enforce_constraints()),
        **options,
    )
    return MethodOutput(
        model=context.model,
        resolved_params=resolved_params,
        history=result.history,
        details={
            "augment_applied": result.augment_applied,
            "resumed_from_epoch": result.resumed_from_epoch,
            # Only recipes with ``whiten`` report it, so every other result's details stay as they were.
            **({"whitened": result.whitened} if recipe.whiten else {}),
            **(details or {}),
        },
    )


def fit_method(
    context: MethodContext,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: TrainRecipe,
    resolved_params: dict[str, Any],
    details: dict[str, Any] | None = None,
) -> MethodOutput:
    """Train ``context.model`` on (inputs, labels) with ``recipe`` and the task's loss."""
    return train_method(context, [Segment(inputs, labels)], recipe, resolved_params, details=details)


def resolved_params(params: BaseModel, inherited: Inherited) -> dict[str, Any]:
    """The params as run (recorded in the result): the validated values, preset applied, with every
    inherited field replaced by the value actually used."""
    return {**params.model_dump(mode="json"), **inherited.values}


def inheritance_details(inherited: Inherited) -> dict[str, Any]:
    """``details.inherited``: each inherited setting's value and source (params, original or fallback)."""
    return {"inherited": inherited.sources}


BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchNormStatistics:
    """The running statistics of every BatchNorm layer of a model at construction time; :meth:`restore`
    puts them back. Used for ``bn='frozen'``: restoring after each forget-only step leaves the statistics
    exactly as they were while the forward pass keeps normalising with batch statistics (train mode)."""

    def __init__(self, model: nn.Module) -> None:
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for module in model.modules():
            if isinstance(module, BATCH_NORM_TYPES):
                for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                    if buffer is not None:
                        self.saved.append((buffer, buffer.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for buffer, value in self.saved:
            buffer.copy_(value)
