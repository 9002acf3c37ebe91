"""``gaussian_ft``: Gaussian fine-tuning ("Gaussian amnesiac"; Deep Regression Unlearning, blindspot_sfd.md
§1.4), the regression analogue of random-label unlearning.

1. mu and sigma of ALL training targets (forget samples included; sigma is the population standard
   deviation, ddof = 0 - the reference's numbers come from 12,208 targets, where ddof does not matter);
2. every forget sample's target is replaced by an independent draw from N(mu, sigma^2) (drawn once, from a
   generator seeded by the job seed);
3. the original model is fine-tuned on the whole relabelled training set (retain samples keep their true
   targets) with Adam at a constant learning rate, in train mode, shuffled each epoch.

Like the other Adam-based methods (``blindspot``), it writes no epoch checkpoints: a retried job starts
again from the original model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import MethodContext, MethodOutput, inheritance_details, resolved_params
from workers.engine.methods.distillation import SUBSET_SEED_OFFSET, train_with_adam
from workers.engine.methods.params_regression import GaussianFinetuneParams
from workers.engine.task_types import TaskType

REGRESSION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def gaussian_targets(
    targets: torch.Tensor, forget_indices: torch.Tensor, seed: int
) -> tuple[torch.Tensor, float, float]:
    """A copy of ``targets`` with its forget entries drawn from N(mu, sigma^2) of all targets; (mu, sigma)."""
    values = targets.detach().to("cpu", torch.float64)
    mu = float(values.mean())
    sigma = float(values.std(unbiased=False))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(forget_indices.shape[0], generator=generator, dtype=torch.float64) * sigma + mu
    relabelled = targets.clone()
    relabelled[forget_indices] = draws.to(targets.device, targets.dtype)
    return relabelled, mu, sigma


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, GaussianFinetuneParams)
    if context.task is not TaskType.regression:
        raise InvalidInputError("gaussian_ft needs a regression task (continuous targets)")
    inherited = params.resolve(context.original_recipe)
    model = context.model
    inputs = context.data.x_train
    targets, mu, sigma = gaussian_targets(
        context.data.y_train, context.data.forget_indices, context.seed + SUBSET_SEED_OFFSET
    )
    loss_function = REGRESSION_LOSSES[params.loss]
    generator = torch.Generator().manual_seed(context.seed)
    torch.manual_seed(context.seed)  # dropout

    def batch_loss(batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return loss_function(model(batch), targets[indices])

    run = train_with_adam(
        model,
        inputs,
        batch_loss,
        epochs=params.epochs,
        batch_size=inherited.values["batch_size"],
        lr=params.lr,
        augment=inherited.values["augment"],
        generator=generator,
        hooks=context.hooks,
        phase=context.phase,
        after_step=context.enforce_constraints,
    )
    return MethodOutput(
        model=model,
        resolved_params=resolved_params(params, inherited),
        history=run.history,
        details={
            "gaussian_mu": mu,
            "gaussian_sigma": sigma,
            "augment_applied": run.training.padding is not None,
            **inheritance_details(inherited),
        },
    )
