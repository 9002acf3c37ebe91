"""Building blocks shared by the teacher-student methods (``bad_teacher``, ``scrub``, ``blindspot``).

Frozen teachers, seeded re-initialisation, temperature KL, attention transfer (Zagoruyko & Komodakis, p = 2)
and a small device-resident training pass that reuses ``workers.engine.training``'s epoch planning (seeded
permutation + batched crop/flip), batch bounds and divergence message. Methods built on these loops write
no epoch checkpoints: a retried job starts again from the original model (they run for a few epochs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.training import (
    CROP_PADDING_DIVISOR,
    IMAGE_TENSOR_DIMS,
    MIN_AUGMENT_IMAGE_SIZE,
    batch_bounds,
    plan_epoch,
)

# Offsets added to the job seed for the independent random streams of a method, so e.g. the incompetent
# teacher's initialisation never coincides with the batch order.
TEACHER_INIT_SEED_OFFSET = 1_000_003
SUBSET_SEED_OFFSET = 2_000_003
ATTENTION_MIN_DIMS = 3  # (N, C, ...) activations; 2-D ones have no spatial/temporal axis
TOKEN_DIMS = 3  # a ViT block's output: batch x tokens x features


# ---------------------------------------------------------------------------------------------- models
def frozen_copy(model: nn.Module) -> nn.Module:
    """An independent copy in eval mode with gradients switched off (a teacher)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with a fresh default initialisation drawn from ``seed``.

    Every submodule with ``reset_parameters`` (Linear, Conv, BatchNorm: also resets running stats) is reset
    on the CPU under a forked, seeded RNG, so the draw is device-independent and leaves the global RNG alone.
    """
    device = next(model.parameters()).device
    fresh = copy.deepcopy(model).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh.to(device)


# ---------------------------------------------------------------------------------------------- losses
KLReduction = Literal["mean", "batchmean"]


def kl_to_target(
    student_logits: torch.Tensor,
    target_probabilities: torch.Tensor,
    temperature: float,
    reduction: KLReduction = "batchmean",
) -> torch.Tensor:
    """KL(target || softmax(student / T)); 'mean' divides the sum by batch x classes (torch's default),
    'batchmean' by the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    summed = F.kl_div(log_student, target_probabilities, reduction="sum")
    return summed / (student_logits.numel() if reduction == "mean" else student_logits.shape[0])


def distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """SCRUB's ``DistillKL``: KL(softmax(t / T) || softmax(s / T)) summed over classes, averaged over the
    batch and multiplied by T^2 (Hinton et al.'s gradient-scale correction)."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    return kl_to_target(student_logits, target, temperature, "batchmean") * temperature**2


def attention_map(activation: torch.Tensor) -> torch.Tensor | None:
    """Zagoruyko-Komodakis attention (p = 2): mean over channels (dim 1) of the squared activation, flattened
    per sample and L2-normalised. ``None`` for 2-D (batch x features) activations, whose map would be the
    constant 1 (one positive number per sample, normalised), so they carry no attention information.
    3-D activations are token sequences (batch x tokens x features, a ViT block's output): their channels
    are the last axis, so the map is per token."""
    if activation.dim() < ATTENTION_MIN_DIMS:
        return None
    channel_dim = -1 if activation.dim() == TOKEN_DIMS else 1
    return F.normalize(activation.pow(2).mean(dim=channel_dim).flatten(1), dim=1)


def attention_transfer(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean over batch x positions of the squared attention-map difference; exactly 0 for 2-D inputs."""
    first_map, second_map = attention_map(first), attention_map(second)
    if first_map is None or second_map is None:
        return first.new_zeros(())
    return (first_map - second_map).pow(2).mean()


# ------------------------------------------------------------------------------------------ training pass
class StepProgress:
    """One progress counter over every step of a method phase (the total is known up front)."""

    def __init__(self, hooks: EngineHooks | None, phase: str, total: int) -> None:
        self.hooks = hooks or NullHooks()
        self.phase, self.total, self.done = phase, total, 0

    def step(self, info: dict[str, Any]) -> None:
        self.done += 1
        self.hooks.progress(self.phase, self.done, self.total, info)

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.hooks.progress(self.phase, self.done, self.total, {**record, "epoch_end": True})


def augmentation_padding(inputs: torch.Tensor, augment: bool) -> int | None:
    """Crop padding when crop/flip applies to ``inputs`` (same rule as the ``fit`` loop), else None."""
    if augment and inputs.dim() == IMAGE_TENSOR_DIMS and min(inputs.shape[-2:]) >= MIN_AUGMENT_IMAGE_SIZE:
        return min(inputs.shape[-2:]) // CROP_PADDING_DIVISOR
    return None


def pass_steps(sample_count: int, batch_size: int) -> int:
    return len(batch_bounds(sample_count, batch_size)) if sample_count else 0


@dataclass
class TrainingPass:
    """One epoch over ``inputs`` with seeded order (and crop/flip when ``padding`` is set).

    ``batch_loss(batch_inputs, indices)`` gets the (augmented) inputs and their row indices into ``inputs``
    and returns the loss to minimise; ``after_step`` runs after every optimiser step (pruning masks).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    batch_size: int
    padding: int | None
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    after_step: Callable[[], None]

    def run(self, generator: torch.Generator, progress: StepProgress, info: dict[str, Any]) -> float:
        """Train for one pass; return the sample-weighted mean loss."""
        count = self.inputs.shape[0]
        bounds = batch_bounds(count, self.batch_size) if count else []
        plan = plan_epoch(count, self.padding, generator, self.inputs.device)
        loss_sum = torch.zeros((), device=self.inputs.device)
        self.model.train()
        for start, end in bounds:
            indices = plan.order[start:end]
            batch = self.inputs[indices]
            if plan.augmentation is not None:
                batch = plan.augmentation.apply(batch, start, end)
            loss = self.batch_loss(batch, indices)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.after_step()
            loss_sum += loss.detach().float() * (end - start)
            progress.step(info)
        samples = bounds[-1][1] if bounds else 0
        mean_loss = loss_sum.item() / max(samples, 1)
        if not math.isfinite(mean_loss):
            raise InvalidInputError(
                f"{progress.phase}: training diverged ({info}; loss is {mean_loss}); lower the learning rate"
            )
        return mean_loss


@dataclass
class AdamRun:
    """What :func:`train_with_adam` did: the per-epoch history and the pass it ran."""

    history: list[dict[str, float]]
    training: TrainingPass


def train_with_adam(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    augment: bool,
    generator: torch.Generator,
    hooks: EngineHooks | None,
    phase: str,
    after_step: Callable[[], None],
) -> AdamRun:
    """``epochs`` seeded passes of :class:`TrainingPass` with Adam at a constant ``lr`` (the loop of the
    Adam-trained methods: blindspot and its blindspot model, bad teaching, Gaussian fine-tuning)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    training = TrainingPass(
        model, optimizer, inputs, batch_size, augmentation_padding(inputs, augment), batch_loss, after_step
    )
    progress = StepProgress(hooks, phase, epochs * pass_steps(inputs.shape[0], batch_size))
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        loss = training.run(generator, progress, {"epoch": epoch, "lr": lr})
        record = {"epoch": epoch, "loss": loss, "lr": lr}
        history.append(record)
        progress.epoch_end(record)
    return AdamRun(history=history, training=training)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seeded_subset(count: int, fraction: float, seed: int, device: torch.device) -> torch.Tensor:
    """Sorted random subset of ``round(fraction * count)`` (at least 1) positions in ``range(count)``."""
    size = min(count, max(1, round(fraction * count)))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:size].sort().values.to(device)
