"""``ga``: gradient ascent on the forget set (reference GA; optml.md §2.4).

Loss ``min_theta -E_{D_f} CE(theta; x, y)`` from theta_o with SGD (momentum, weight decay) over all
parameters, in train mode (BatchNorm statistics are updated on the forget set only), with the recipe's
augmentation, no clipping and no retain term, as Unlearn-Sparse unlearn/GA.py. The loss is unbounded below,
so a large learning rate destroys the model: that is not an error (the service's guardrails flag the
degenerate result, e.g. through ``max_class_fraction``); only non-finite weights fail the job, with an
:class:`~workers.engine.errors.InvalidInputError`. Defaults and deviations: see ``GradientAscentParams``.
"""

from __future__ import annotations

import torch

from workers.engine.methods.base import MethodContext, MethodOutput, train_method
from workers.engine.methods.params import GradientAscentParams
from workers.engine.training import LOSSES, Segment


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, GradientAscentParams)
    forget_inputs, forget_labels = context.data.forget()
    task_loss = LOSSES[context.task]

    def ascent_loss(outputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return -task_loss(outputs, labels)

    return train_method(
        context,
        [Segment(forget_inputs, forget_labels, loss=ascent_loss, name="forget")],
        params,
        params.model_dump(mode="json"),
        divergence="weights",
    )
