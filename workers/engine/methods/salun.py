"""``salun``: Saliency Unlearning (SalUn, ICLR'24; optml.md §6.1-§6.2).

1. Saliency mask at theta_o (SalUn Classification/generate_mask.py): in eval mode, accumulate the batch-mean
   gradients of the forgetting loss -CE over the forget set (batches of ``batch_size``, the recipe's
   augmentation), take |g| and mark the top ``mask_ratio`` fraction of ALL parameter entries salient, ranked
   globally across every parameter tensor (conv, linear, BN affine, biases) as the reference does; exactly
   ``round(mask_ratio * count)`` entries, ties broken by position (stable sort). A pruned weight gets zero
   gradient (as the reference's ``weight_orig`` behind its prune mask does), so it is never ranked above an
   unpruned one with a nonzero gradient.
2. The ``rl`` loss (random labels on the forget set + true labels on the retain set), updating only the
   salient weights: after every optimiser step the non-salient weights are restored to theta_o and their
   momentum buffers zeroed, so they stay bit-identical (the reference's behaviour since PR #33; before it,
   weight decay and momentum leaked into the "frozen" weights, SalUn#32). Pruning masks are enforced after
   the restore, so a pruned weight stays exactly zero.

BatchNorm running statistics are buffers: ``bn`` decides whether the forget-only passes update them (see
``rl``). Defaults and deviations: see ``SalUnParams``.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.engine.methods.base import MethodContext, MethodOutput
from workers.engine.methods.params import SalUnParams, TrainRecipe
from workers.engine.methods.random_labels import run_relabel
from workers.engine.training import CROP_PADDING_DIVISOR, LOSSES, augmentation_applies, plan_epoch

Saliency = dict[str, torch.Tensor]


def forget_gradient_magnitude(context: MethodContext, recipe: TrainRecipe) -> dict[str, torch.Tensor]:
    """|sum over forget batches of grad(-mean CE)| per parameter, at the current weights, in eval mode, with
    the resolved recipe's batch size and augmentation."""
    model = context.model
    forget_inputs, forget_labels = context.data.forget()
    task_loss = LOSSES[context.task]
    augment = augmentation_applies(recipe, forget_inputs)
    padding = min(forget_inputs.shape[-2:]) // CROP_PADDING_DIVISOR if augment else None
    count = int(forget_inputs.shape[0])
    plan = plan_epoch(count, padding, torch.Generator().manual_seed(context.seed), forget_inputs.device)
    starts = range(0, count, recipe.batch_size)
    phase = f"{context.phase}-mask"
    hooks = context.hooks
    model.eval()
    model.zero_grad(set_to_none=True)
    for step, start in enumerate(starts, 1):
        end = min(start + recipe.batch_size, count)
        indices = plan.order[start:end]
        batch = forget_inputs[indices]
        if plan.augmentation is not None:
            batch = plan.augmentation.apply(batch, start, end)
        loss = -task_loss(model(batch), forget_labels[indices])
        loss.backward()  # gradients accumulate: the sum of batch-mean gradients
        if hooks is not None:
            hooks.progress(phase, step, len(starts), {"batches": len(starts)})
    magnitudes = {}
    masks = context.masks or {}
    for name, parameter in model.named_parameters():
        gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        magnitude = gradient.detach().abs()
        if name in masks:
            magnitude = magnitude * masks[name].to(magnitude.dtype)
        magnitudes[name] = magnitude
    model.zero_grad(set_to_none=True)
    return magnitudes


def saliency_mask(magnitudes: dict[str, torch.Tensor], ratio: float) -> tuple[Saliency, float | None]:
    """Global top-``ratio`` mask over all entries (True = salient) and the smallest salient magnitude."""
    names = list(magnitudes)
    flat = torch.cat([magnitudes[name].flatten() for name in names])
    keep = round(ratio * flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices
    salient = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    salient[order[:keep]] = True
    threshold = float(flat[order[keep - 1]].item()) if keep > 0 else None
    masks: Saliency = {}
    offset = 0
    for name in names:
        size = magnitudes[name].numel()
        masks[name] = salient[offset : offset + size].view_as(magnitudes[name])
        offset += size
    return masks, threshold


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, SalUnParams)
    recipe, inherited = params.resolve_recipe(context.original_recipe)
    magnitudes = forget_gradient_magnitude(context, recipe)
    salient, threshold = saliency_mask(magnitudes, params.mask_ratio)
    parameters = dict(context.model.named_parameters())
    # (parameter, salient entries, theta_o) for every tensor with at least one non-salient entry.
    frozen = [
        (parameters[name], mask, parameters[name].detach().clone())
        for name, mask in salient.items()
        if not bool(mask.all())
    ]

    @torch.no_grad()
    def keep_non_salient(optimizer: torch.optim.Optimizer) -> None:
        for parameter, mask, original in frozen:
            parameter.copy_(torch.where(mask, parameter, original))
            buffer = optimizer.state.get(parameter, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.masked_fill_(~mask, 0.0)
        context.enforce_constraints()

    salient_count = sum(int(mask.sum().item()) for mask in salient.values())
    total = sum(mask.numel() for mask in salient.values())
    details: dict[str, Any] = {
        "saliency": {
            "mask_ratio": params.mask_ratio,
            "salient": salient_count,
            "parameters": total,
            "threshold": threshold,
            "ranking": "global",
            "salient_fraction_per_parameter": {
                name: float(mask.float().mean().item()) for name, mask in salient.items()
            },
        }
    }
    return run_relabel(context, params, recipe, inherited, after_step=keep_non_salient, details=details)
