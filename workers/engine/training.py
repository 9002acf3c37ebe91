"""Device-resident SGD training loop shared by every training-style method.

Design (after the fast loops in airbench / nanoGPT and /work/shared/anchors/gpu_anchor.py): the whole
dataset lives on the device as tensors; each epoch draws one permutation plus all augmentation offsets from
a seeded CPU ``torch.Generator`` and ships them to the device in one copy; crop + flip are batched gathers
(no per-sample Python); on CUDA the forward/backward runs under bf16 autocast with channels_last. On CPU
the loop is bit-for-bit deterministic, and an epoch checkpoint (safetensors: weights, momentum buffers,
RNG states, metadata) resumes to exactly the same final weights as an uninterrupted run.

Deviation from the reference loop (torch DataLoader, ``drop_last=False``): a trailing batch of a single
sample is skipped for that epoch (BatchNorm cannot normalise one sample); shuffling puts that sample in a
full batch in other epochs.

The speed-run fields of ``TrainRecipe`` (issue 20) plug in around the step and change nothing while off:
nesterov momentum (the optimiser), label smoothing (the task loss), the crop padding (``translate``), a
data-dependent first layer (``whiten``, before the first epoch of a fresh run) and :class:`Lookahead`
(after each optimiser step; its slow weights are checkpointed with the rest).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from workers.engine import checkpoints
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks, NullHooks
from workers.engine.methods.params import TrainRecipe
from workers.engine.task_types import TaskType

# Regression: L1 on the scalar output, the Deep Regression Unlearning reference's training loss for AgeDB
# (blindspot_sfd.md §1.2; its STS-B notebook uses MSE instead).
LOSSES: dict[TaskType, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    TaskType.classification: F.cross_entropy,
    TaskType.regression: F.l1_loss,
}
IMAGE_TENSOR_DIMS = 4  # N x C x H x W
MIN_AUGMENT_IMAGE_SIZE = 16
# Crop padding as a fraction of the image side: 32 px -> 4 px, the reference's RandomCrop(32, padding=4).
CROP_PADDING_DIVISOR = 8
FLIP_PROBABILITY = 0.5
CHECKPOINT_FORMAT = "lethe.fit-checkpoint/1"


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # one record per epoch: epoch/loss/lr/seconds
    augment_applied: bool = False
    steps_per_epoch: int = 0
    samples_per_epoch: int = 0
    resumed_from_epoch: int | None = None
    whitened: bool = False  # the recipe's whiten initialised the model's first layer from the inputs


def augmentation_applies(recipe: TrainRecipe, inputs: torch.Tensor) -> bool:
    """Crop/flip only makes sense for real images; tiny ones (8x8 digits) would lose too much."""
    return (
        recipe.augment
        and inputs.dim() == IMAGE_TENSOR_DIMS
        and min(inputs.shape[-2:]) >= MIN_AUGMENT_IMAGE_SIZE
    )


def crop_padding(recipe: TrainRecipe, inputs: torch.Tensor) -> int | None:
    """Pixels of the random crop's zero padding, or None when the recipe's augmentation does not apply."""
    if not augmentation_applies(recipe, inputs):
        return None
    if recipe.translate is not None:
        return recipe.translate
    return min(inputs.shape[-2:]) // CROP_PADDING_DIVISOR


def task_loss_of(task: TaskType, recipe: TrainRecipe) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The task's loss as the recipe asks for it (label smoothing applies to classification only)."""
    if task is TaskType.classification and recipe.label_smoothing > 0:
        return functools.partial(F.cross_entropy, label_smoothing=recipe.label_smoothing)
    return LOSSES[task]


@runtime_checkable
class InitialisesFromData(Protocol):
    """An architecture with a data-dependent initialisation (speedrun_cnn's whitening layer)."""

    def initialise_from_data(self, inputs: torch.Tensor) -> None: ...


def initialise_from_data(model: nn.Module, recipe: TrainRecipe, inputs: torch.Tensor) -> bool:
    """Apply the recipe's ``whiten`` to a model that supports it; return whether it was applied."""
    if not recipe.whiten or not isinstance(model, InitialisesFromData):
        return False
    model.initialise_from_data(inputs)
    return True


class Lookahead:
    """Slow copies of the model's floating-point state (parameters and BatchNorm statistics) that follow the
    trained ("fast") weights every ``recipe.lookahead_steps`` steps and at the last step: slow = d slow +
    (1 - d) fast, then fast = slow, with d = lookahead_decay * (step / total)^3 (the published speed run's
    ramp: no averaging early, strong averaging late). The state dict shares storage with the model, so the
    copy-back is in place and the optimiser keeps its references."""

    def __init__(self, model: nn.Module, recipe: TrainRecipe, total_steps: int) -> None:
        self.every, self.decay, self.total_steps = recipe.lookahead_steps, recipe.lookahead_decay, total_steps
        live = [value for value in model.state_dict().values() if value.is_floating_point()]
        self.pairs = [(value, value.detach().clone()) for value in live]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After global optimiser step ``step`` (1-based)."""
        if step % self.every != 0 and step != self.total_steps:
            return
        decay = self.decay * (step / self.total_steps) ** 3
        live, slow = [pair[0] for pair in self.pairs], self.slow_state()
        torch._foreach_lerp_(slow, live, 1.0 - decay)  # one kernel per op for all tensors on CUDA
        torch._foreach_copy_(live, slow)

    def slow_state(self) -> list[torch.Tensor]:
        return [slow for _, slow in self.pairs]


def batch_bounds(sample_count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of one epoch; a trailing single-sample batch is dropped (see module doc)."""
    bounds = [(start, min(start + batch_size, sample_count)) for start in range(0, sample_count, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def milestone_epoch(fraction: float, epochs: int) -> int:
    return round(fraction * epochs)


def learning_rate(recipe: TrainRecipe, epoch: int, step: int, total_steps: int) -> float:
    """LR of global ``step`` (0-based) in 0-based ``epoch``; a pure function, so resuming needs no state."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "multistep":
        drops = sum(epoch >= milestone_epoch(fraction, recipe.epochs) for fraction in recipe.milestones)
        return float(recipe.lr * recipe.gamma**drops)
    if recipe.schedule == "warmup_linear":
        # At the step's midpoint, so that neither the first nor the last step has a zero LR.
        position = (step + 0.5) / total_steps
        if position < recipe.warmup:
            return recipe.lr * position / recipe.warmup
        return recipe.lr * (1.0 - position) / (1.0 - recipe.warmup)
    return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / total_steps))


def crop_and_flip(
    images: torch.Tensor,
    row_offsets: torch.Tensor,
    col_offsets: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the original size at per-sample offsets in [0, 2 * padding],
    then mirror the samples where ``flips`` is set; all as batched gathers."""
    count, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    row_index = row_offsets.view(count, 1, 1, 1) + torch.arange(height, device=images.device).view(
        1, 1, height, 1
    )
    rows = padded.gather(2, row_index.expand(count, channels, height, width + 2 * padding))
    col_index = col_offsets.view(count, 1, 1, 1) + torch.arange(width, device=images.device).view(
        1, 1, 1, width
    )
    cropped = rows.gather(3, col_index.expand(count, channels, height, width))
    return torch.where(flips.view(count, 1, 1, 1), cropped.flip(3), cropped)


@dataclass
class EpochAugmentation:
    """Per-sample crop offsets and flip decisions for one epoch, indexed by position in the epoch order."""

    row_offsets: torch.Tensor
    col_offsets: torch.Tensor
    flips: torch.Tensor
    padding: int

    def apply(self, images: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return crop_and_flip(
            images,
            self.row_offsets[start:end],
            self.col_offsets[start:end],
            self.flips[start:end],
            self.padding,
        )


@dataclass
class EpochPlan:
    order: torch.Tensor
    augmentation: EpochAugmentation | None


def plan_epoch(
    sample_count: int, padding: int | None, generator: torch.Generator, device: torch.device
) -> EpochPlan:
    """All randomness of one epoch, drawn on the CPU generator (device-independent) and moved once."""
    order = torch.randperm(sample_count, generator=generator)
    if padding is None:
        return EpochPlan(order.to(device), None)
    offsets = torch.randint(0, 2 * padding + 1, (2, sample_count), generator=generator)
    flips = torch.rand(sample_count, generator=generator) < FLIP_PROBABILITY
    augmentation = EpochAugmentation(offsets[0].to(device), offsets[1].to(device), flips.to(device), padding)
    return EpochPlan(order.to(device), augmentation)


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turn torch's deterministic-algorithm check on for the block and restore the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@contextmanager
def reproducible(device: torch.device) -> Iterator[bool]:
    """Deterministic kernels on CPU (cheap there, and runs are then bit-for-bit repeatable); on CUDA favour
    speed with cuDNN autotuning. Yields whether the run is deterministic."""
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of GPU code); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Per-batch loss (outputs, labels, 0-based epoch) -> scalar; the epoch lets a loss follow a schedule.
BatchLoss = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# Redraws a segment's labels at the start of every epoch from the loop's seeded CPU generator.
Relabel = Callable[[torch.Generator], torch.Tensor]


@dataclass
class Segment:
    """One shuffled pass over ``inputs``/``labels`` inside every epoch. An epoch runs its segments in order
    (e.g. the forget set with random labels, then the retain set)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    loss: BatchLoss | None = None  # None: the task's loss (cross-entropy)
    relabel: Relabel | None = None  # None: the labels stay fixed
    name: str = "train"


Divergence = Literal["loss", "weights"]


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: TrainRecipe,
    *,
    seed: int,
    phase: str,
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
    task: TaskType = TaskType.classification,
    after_step: Callable[[], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``inputs``/``labels`` (already on the model's device) with ``recipe``.

    Calls ``hooks.progress`` after every step and at every epoch end (``info`` then holds ``epoch``,
    ``loss``, ``lr``, ``seconds`` and ``epoch_end=True``) and ``hooks.checkpoint`` with a safetensors blob at
    every epoch end. ``resume`` (such a blob) restores the state and continues with the next epoch.
    ``after_step`` runs after every optimiser step (constraints such as pruning masks).
    """
    return train_epochs(
        model,
        [Segment(inputs, labels)],
        recipe,
        seed=seed,
        phase=phase,
        hooks=hooks,
        resume=resume,
        task=task,
        after_step=None if after_step is None else (lambda _optimizer: after_step()),
    )


def train_epochs(
    model: nn.Module,
    segments: Sequence[Segment],
    recipe: TrainRecipe,
    *,
    seed: int,
    phase: str,
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
    task: TaskType = TaskType.classification,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    epoch_record: Callable[[int], dict[str, float]] | None = None,
    divergence: Divergence = "loss",
) -> FitResult:
    """The general loop behind :func:`fit`: every epoch makes one shuffled pass over each segment in turn.

    ``recipe`` gives the optimiser (SGD over all parameters), the LR schedule (its step count covers all
    segments), the batch size and augmentation; ``recipe.epochs`` epochs are run. ``after_step(optimizer)``
    runs after every optimiser step. ``epoch_record(epoch)`` adds fields to each epoch's history record.
    ``divergence`` says when to give up: ``"loss"`` raises :class:`InvalidInputError` when an epoch's mean
    loss is not finite; ``"weights"`` (for losses that are meant to grow, such as gradient ascent) only
    when a weight or buffer of the model is NaN/Inf. Progress, checkpoints and resume work as in :func:`fit`;
    every random draw (order, augmentation, relabelling) comes from one seeded CPU generator whose state is
    checkpointed, so a resumed run reproduces an uninterrupted one bit for bit on CPU.
    """
    if not segments:
        raise ValueError("train_epochs needs at least one segment")
    device = segments[0].inputs.device
    on_cuda = device.type == "cuda"
    progress = hooks or NullHooks()
    task_loss = task_loss_of(task, recipe)
    reference_inputs = segments[0].inputs
    padding = crop_padding(recipe, reference_inputs)
    segment_bounds = [batch_bounds(segment.inputs.shape[0], recipe.batch_size) for segment in segments]
    steps_per_epoch = sum(len(bounds) for bounds in segment_bounds)
    samples_per_epoch = sum(bounds[-1][1] for bounds in segment_bounds if bounds)
    total_steps = recipe.epochs * steps_per_epoch
    channels_last = on_cuda and reference_inputs.dim() == IMAGE_TENSOR_DIMS
    if channels_last:
        # Supported at runtime (nn.Module.to forwards memory_format) but missing from torch's type stubs.
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
    )
    generator = torch.Generator().manual_seed(seed)
    result = FitResult(
        augment_applied=padding is not None,
        steps_per_epoch=steps_per_epoch,
        samples_per_epoch=samples_per_epoch,
    )
    start_epoch = 0
    if resume is None:
        torch.manual_seed(seed)  # dropout and any other in-model randomness
        result.whitened = initialise_from_data(model, recipe, reference_inputs)
    lookahead = Lookahead(model, recipe, total_steps) if recipe.lookahead_steps > 0 else None
    if resume is not None:
        start_epoch, result.history = restore_checkpoint(
            resume, model, optimizer, generator, phase, recipe, seed, lookahead
        )
        result.resumed_from_epoch = start_epoch

    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        epoch_started = time.perf_counter()
        # Summed on device: no per-step host sync.
        segment_loss_sums = [torch.zeros((), device=device) for _ in segments]
        lr = recipe.lr
        step = epoch * steps_per_epoch
        for segment, bounds, loss_sum in zip(segments, segment_bounds, segment_loss_sums, strict=True):
            labels = segment.labels if segment.relabel is None else segment.relabel(generator)
            plan = plan_epoch(segment.inputs.shape[0], padding, generator, device)
            for start, end in bounds:
                lr = learning_rate(recipe, epoch, step, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                indices = plan.order[start:end]
                batch = segment.inputs[indices]
                if plan.augmentation is not None:
                    batch = plan.augmentation.apply(batch, start, end)
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on_cuda):
                    outputs = model(batch)
                    if segment.loss is None:
                        loss = task_loss(outputs, labels[indices])
                    else:
                        loss = segment.loss(outputs, labels[indices], epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if lookahead is not None:
                    lookahead.after_step(step + 1)
                if after_step is not None:
                    after_step(optimizer)
                loss_sum += loss.detach().float() * (end - start)
                step += 1
                progress.progress(phase, step, total_steps, {"epoch": epoch + 1, "lr": lr})

        segment_losses = [float(total.item()) for total in segment_loss_sums]
        epoch_loss = sum(segment_losses) / max(samples_per_epoch, 1)
        if divergence == "loss" and not math.isfinite(epoch_loss):
            raise InvalidInputError(
                f"{phase}: training diverged in epoch {epoch + 1} (loss is {epoch_loss}); "
                "lower the learning rate"
            )
        if divergence == "weights":
            broken = non_finite_state(model)
            if broken:
                raise InvalidInputError(
                    f"{phase}: the model's weights became non-finite (NaN/Inf) in epoch {epoch + 1} "
                    f"(first: {broken[0]}); lower the learning rate or the number of epochs"
                )
        record = {
            "epoch": epoch + 1,
            "loss": epoch_loss,
            "lr": lr,
            "seconds": time.perf_counter() - epoch_started,
        }
        if len(segments) > 1:  # each segment's own mean loss, e.g. forget_loss and retain_loss
            for segment, bounds, total in zip(segments, segment_bounds, segment_losses, strict=True):
                record[f"{segment.name}_loss"] = total / max(bounds[-1][1] if bounds else 0, 1)
        if epoch_record is not None:
            record.update(epoch_record(epoch))
        result.history.append(record)
        progress.progress(phase, (epoch + 1) * steps_per_epoch, total_steps, {**record, "epoch_end": True})
        if hooks is not None:
            blob = checkpoint_blob(
                model, optimizer, generator, phase, epoch + 1, recipe, seed, result.history, lookahead
            )
            hooks.checkpoint(phase, epoch + 1, blob)
    return result


@torch.no_grad()
def non_finite_state(model: nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding a NaN or Inf."""
    return [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


# ------------------------------------------------------------------------------------------- checkpoints
def checkpoint_blob(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    phase: str,
    completed_epochs: int,
    recipe: TrainRecipe,
    seed: int,
    history: list[dict[str, float]],
    lookahead: Lookahead | None = None,
) -> bytes:
    """Everything needed to continue after ``completed_epochs`` as one safetensors blob (no pickle)."""
    tensors = {f"model/{key}": value for key, value in model.state_dict().items()}
    for index, parameter in enumerate(_parameters(optimizer)):
        buffer = optimizer.state.get(parameter, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"optimizer/{index}/momentum_buffer"] = buffer
    if lookahead is not None:
        for index, slow in enumerate(lookahead.slow_state()):
            tensors[f"lookahead/{index}"] = slow
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/torch_cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "phase": phase,
        "epoch": str(completed_epochs),
        "seed": str(seed),
        "recipe": recipe.model_dump_json(),
        "history": json.dumps(history),
    }
    return checkpoints.pack(tensors, metadata)


def restore_checkpoint(
    blob: bytes,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    phase: str,
    recipe: TrainRecipe,
    seed: int,
    lookahead: Lookahead | None = None,
) -> tuple[int, list[dict[str, float]]]:
    """Load a :func:`checkpoint_blob` into the live objects; return (completed epochs, history so far)."""
    # Compare plain dicts: recipe subclasses (e.g. FinetuneParams) with equal fields are the same recipe.
    tensors, metadata = checkpoints.unpack(
        blob,
        expected={"format": CHECKPOINT_FORMAT, "phase": phase, "seed": str(seed)},
        identity_key="recipe",
        identity=recipe.model_dump(mode="json"),
    )
    device = next(model.parameters()).device
    model_state = {
        key.removeprefix("model/"): value for key, value in tensors.items() if key.startswith("model/")
    }
    model.load_state_dict(model_state, strict=True)
    for index, parameter in enumerate(_parameters(optimizer)):
        buffer = tensors.get(f"optimizer/{index}/momentum_buffer")
        if buffer is not None:
            optimizer.state[parameter]["momentum_buffer"] = buffer.to(device)
    if lookahead is not None:
        for index, slow in enumerate(lookahead.slow_state()):
            slow.copy_(tensors[f"lookahead/{index}"])
    generator.set_state(tensors["rng/generator"])
    torch.set_rng_state(tensors["rng/torch_cpu"])
    if "rng/torch_cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/torch_cuda"])
    history: list[dict[str, Any]] = json.loads(metadata["history"])
    return int(metadata["epoch"]), history


def _parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]
