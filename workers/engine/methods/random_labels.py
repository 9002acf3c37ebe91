"""``rl``: random labelling (the RL baseline shipped by SalUn and Unlearn-WorstCase; optml.md §6.2-§6.3).

From theta_o, every epoch trains on the forget set with random labels and on the retain set with the true
labels (CE, weight 1 each). ``mode="sequential"`` (default, the reference's CIFAR-10/SVHN path) makes one
pass over the forget set, then one over the retain set, as separate SGD steps; ``mode="shuffled"`` (the
reference's CIFAR-100/TinyImageNet path) mixes both into common shuffled batches. Random labels are redrawn
every epoch from the run's seeded generator: uniformly from all C classes as the reference code does (the
true label survives with probability 1/C; the paper writes y' != y), or from the C - 1 wrong classes with
``exclude_true_label``. :func:`run_relabel` is shared with ``salun``, which adds a saliency constraint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import MethodContext, MethodOutput, train_method
from workers.engine.methods.params import RandomLabelParams
from workers.engine.training import Segment

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


def relabel_segments(context: MethodContext, params: RandomLabelParams) -> list[Segment]:
    forget_inputs, forget_labels = context.data.forget()
    retain_inputs, retain_labels = context.data.retain()
    if params.exclude_true_label and context.num_classes < MIN_CLASSES_FOR_WRONG_LABELS:
        raise InvalidInputError("exclude_true_label needs at least two classes")
    draw = random_label_sampler(forget_labels, context.num_classes, params.exclude_true_label)
    if params.mode == "sequential":
        return [
            Segment(forget_inputs, forget_labels, relabel=draw, name="forget"),
            Segment(retain_inputs, retain_labels, name="retain"),
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
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    details: dict[str, object] | None = None,
) -> MethodOutput:
    """The random-label loop; ``after_step`` defaults to the pruning-mask constraint."""
    return train_method(
        context,
        relabel_segments(context, params),
        params,
        params.model_dump(mode="json"),
        after_step=after_step,
        details=details,
    )


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, RandomLabelParams)
    return run_relabel(context, params)
