"""``ga``: gradient ascent on the forget set (reference GA; optml.md §2.4).

Loss ``min_theta -E_{D_f} CE(theta; x, y)`` from theta_o with SGD (momentum, weight decay) over all
parameters, in train mode, with the recipe's augmentation, no clipping and no retain term, as
Unlearn-Sparse unlearn/GA.py. The loss is unbounded below, so a large learning rate destroys the model:
that is not an error (the service's guardrails flag the degenerate result, e.g. through
``max_class_fraction``); only non-finite weights fail the job, with an
:class:`~workers.engine.errors.InvalidInputError`. BatchNorm: with ``bn='train'`` (the reference) the running
statistics are updated from the forget batches only, with ``bn='frozen'`` (the 'lethe' preset) they are
restored to the original's after every step. Defaults and deviations: see ``GradientAscentParams``.
"""

from __future__ import annotations

import torch

from workers.engine.methods.base import (
    BatchNormStatistics,
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
    train_method,
)
from workers.engine.methods.params import GradientAscentParams
from workers.engine.training import LOSSES, Segment


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, GradientAscentParams)
    recipe, inherited = params.resolve_recipe(context.original_recipe)
    forget_inputs, forget_labels = context.data.forget()
    task_loss = LOSSES[context.task]
    # Every GA batch is forget-only, so 'frozen' restores the original's statistics after every step.
    statistics = BatchNormStatistics(context.model) if params.bn == "frozen" else None

    def ascent_loss(outputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return -task_loss(outputs, labels)

    def after_step(_optimizer: torch.optim.Optimizer) -> None:
        if statistics is not None:
            statistics.restore()
        context.enforce_constraints()

    return train_method(
        context,
        [Segment(forget_inputs, forget_labels, loss=ascent_loss, name="forget")],
        recipe,
        resolved_params(params, inherited),
        after_step=after_step,
        details=inheritance_details(inherited),
        divergence="weights",
    )
