"""``l1_sparse``: fine-tuning on the retain set with a decaying l1 penalty (the reference's ``FT_prune`` ->
``FT_l1``, "sparsity-aware unlearning"; optml.md §2.7).

Every minibatch minimises ``mean CE on D_r + gamma_t * ||theta||_1`` where ``||theta||_1`` sums |theta| over
ALL parameters (the reference's ``torch.linalg.norm(cat(params), ord=1)``; gradient ``gamma_t sign(theta)``)
and ``gamma_t`` follows the per-epoch linear decay of ``L1SparseParams.l1_gamma``. Weight decay stays on.
Each epoch's history record carries the ``l1_gamma`` used in it and the ``l1_norm`` at its end. Like the
reference, no pruning happens afterwards (the model stays dense). Batch size and augmentation are inherited
from the original model unless given or set by the 'reference' preset. Defaults: see ``L1SparseParams``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.engine.methods.base import (
    MethodContext,
    MethodOutput,
    inheritance_details,
    resolved_params,
    train_method,
)
from workers.engine.methods.params import L1SparseParams
from workers.engine.training import LOSSES, Segment


def l1_norm(parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([parameter.abs().sum() for parameter in parameters]).sum()


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, L1SparseParams)
    recipe, inherited = params.resolve_recipe(context.original_recipe)
    retain_inputs, retain_labels = context.data.retain()
    task_loss = LOSSES[context.task]
    parameters = list(context.model.parameters())

    def penalised_loss(outputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = task_loss(outputs, labels)
        gamma = params.l1_gamma(epoch)
        if gamma == 0.0:
            return loss
        return loss + gamma * l1_norm(parameters)

    def epoch_record(epoch: int) -> dict[str, float]:
        with torch.no_grad():
            return {"l1_gamma": params.l1_gamma(epoch), "l1_norm": float(l1_norm(parameters).item())}

    return train_method(
        context,
        [Segment(retain_inputs, retain_labels, loss=penalised_loss, name="retain")],
        recipe,
        resolved_params(params, inherited),
        epoch_record=epoch_record,
        details={
            "l1_gamma_schedule": [params.l1_gamma(epoch) for epoch in range(params.epochs)],
            **inheritance_details(inherited),
        },
    )
