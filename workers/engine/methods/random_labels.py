"""``rl``: random labelling (the RL baseline shipped by SalUn and Unlearn-WorstCase; optml.md §6.2-§6.3).

From theta_o, every epoch trains on the forget set with random labels and on the retain set with the true
labels (CE, weight 1 each). ``mode="sequential"`` (default, the reference's CIFAR-10/SVHN path) makes one
pass over the forget set, then one over the retain set, as separate SGD steps; ``mode="shuffled"`` (the
reference's CIFAR-100/TinyImageNet path) mixes both into common shuffled batches. Random labels are redrawn
every epoch from the run's seeded generator: uniformly from all C classes as the reference code does (the
true label survives with probability 1/C; the paper writes y' != y), or from the C - 1 wrong classes with
``exclude_true_label``. :func:`run_relabel` is shared with ``salun``, which adds a saliency constraint.
BatchNorm: ``bn='frozen'`` (the 'lethe' preset) keeps the running statistics through the forget-only passes
of the 'sequential' mode; ``bn='train'`` (the reference) lets those passes update them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import (
    BatchNormStatistics,
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
    train_method,
)
from workers.engine.methods.params import Inherited, RandomLabelParams, TrainRecipe
from workers.engine.training import LOSSES, BatchLoss, Segment

MIN_CLASSES_FOR_WRONG_LABELS = 2


def random_label_sampler(
    true_labels: torch.Tensor, num_classes: int, exclude_true_label: bool
) -> Callable[[torch.Generator], torch.Tensor]:
    """A function drawing one uniformly random label per sample from a CPU generator (device-independent
    draws), returned on the labels' device."""
    cpu_labels = true_labels.detach().to("cpu")
    count = int(cpu_labels.shape[0])

    def draw(generator: torch.Generator) -> torch.Tensor:
        if exclude_true_label:
            # y + U{1..C-1} mod C is uniform over the C - 1 classes other than y.
            shift = torch.randint(1, num_classes, (count,), generator=generator)
            labels = (cpu_labels + shift) % num_classes
        else:
            labels = torch.randint(0, num_classes, (count,), generator=generator)
        return labels.to(device=true_labels.device, dtype=true_labels.dtype)

    return draw


class ForgetPassTracker:
    """Knows whether the step just taken was on a forget-only batch (the 'sequential' mode's forget
    segment): its segment's loss marks it, so ``after_step`` can restore the BatchNorm statistics
    (``bn='frozen'``) after forget steps only."""

    def __init__(self, task_loss: BatchLoss) -> None:
        self.task_loss = task_loss
        self.on_forget = False

    def forget_loss(self, outputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        self.on_forget = True
        return self.task_loss(outputs, labels, epoch)

    def retain_loss(self, outputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        self.on_forget = False
        return self.task_loss(outputs, labels, epoch)


def relabel_segments(
    context: MethodContext, params: RandomLabelParams, tracker: ForgetPassTracker | None = None
) -> list[Segment]:
    forget_inputs, forget_labels = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    if params.exclude_true_label and context.num_classes < MIN_CLASSES_FOR_WRONG_LABELS:
        raise InvalidInputError("exclude_true_label needs at least two classes")
    draw = random_label_sampler(forget_labels, context.num_classes, params.exclude_true_label)
    if params.mode == "sequential":
        return [
            Segment(
                forget_inputs,
                forget_labels,
                loss=tracker.forget_loss if tracker is not None else None,
                relabel=draw,
                name="forget",
            ),
            Segment(
                retain_inputs,
                retain_labels,
                loss=tracker.retain_loss if tracker is not None else None,
                name="retain",
            ),
        ]

    def draw_mixed(generator: torch.Generator) -> torch.Tensor:
        return torch.cat([draw(generator), retain_labels])

    return [
        Segment(
            torch.cat([forget_inputs, retain_inputs]),
            torch.cat([forget_labels, retain_labels]),
            relabel=draw_mixed,
            name="mixed",
        )
    ]


def run_relabel(
    context: MethodContext,
    params: RandomLabelParams,
    recipe: TrainRecipe,
    inherited: Inherited,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    details: dict[str, object] | None = None,
) -> MethodOutput:
    """The random-label loop with the resolved ``recipe``; ``after_step`` defaults to the pruning-mask
    constraint. With ``bn='frozen'`` in 'sequential' mode, the BatchNorm statistics are restored after
    every forget-segment step, before ``after_step``."""
    tracker = None
    statistics = None
    if params.bn == "frozen" and params.mode == "sequential":
        task_loss = LOSSES[context.task]
        tracker = ForgetPassTracker(lambda outputs, labels, epoch: task_loss(outputs, labels))
        statistics = BatchNormStatistics(context.model)
    constraint = after_step or (lambda _optimizer: context.enforce_constraints())

    def step_done(optimizer: torch.optim.Optimizer) -> None:
        if statistics is not None and tracker is not None and tracker.on_forget:
            statistics.restore()
        constraint(optimizer)

    return train_method(
        context,
        relabel_segments(context, params, tracker),
        recipe,
        resolved_params(params, inherited),
        after_step=step_done,
        details={**(details or {}), **inheritance_details(inherited)},
    )


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, RandomLabelParams)
    recipe, inherited = params.resolve_recipe(context.original_recipe)
    return run_relabel(context, params, recipe, inherited)
