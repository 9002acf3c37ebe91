"""``prune`` (job kind ``prune``): one-shot global unstructured magnitude pruning, OMP (optml.md §2.8).

Not an unlearning method: it turns a dense model into a sparse one that later jobs (unlearning, a sparse
retrain) run on with the mask enforced ("prune first, then unlearn", Unlearn-Sparse).

Prunable weights (Unlearn-Sparse pruner/utils.py ``pruning_model``): every ``nn.Conv2d`` weight; FC layers,
BatchNorm and biases are never pruned. A model without convolutions (the MLP) would have nothing to prune,
so there the hidden ``nn.Linear`` weights are pruned instead, never the classifier (the last Linear layer)
or any bias. The ``sparsity`` fraction of prunable entries with the smallest |w| is pruned globally across
layers (``global_unstructured(..., L1Unstructured)``): exactly ``round(sparsity * count)`` entries, ties
broken by position. Weights already pruned by an input mask are zero and therefore go first; the output
masks also keep any input mask on a parameter outside the prunable set. Then ``finetune_epochs`` epochs of
training on the full training set with the mask enforced after every step (deviation from the reference's
rewind to epoch 8 + 182 epochs: see ``PruneParams``).
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.errors import InvalidInputError
from workers.engine.masks import Masks, apply_masks, prunable_parameters, sparsity
from workers.engine.methods.base import MethodContext, MethodOutput, inheritance_details, resolved_params
from workers.engine.methods.params import PruneParams
from workers.engine.training import fit


@torch.no_grad()
def magnitude_masks(model: nn.Module, names: list[str], fraction: float, existing: Masks | None) -> Masks:
    """Global magnitude pruning of ``fraction`` of the entries of ``names`` (True = kept)."""
    parameters = dict(model.named_parameters())
    magnitudes = []
    for name in names:
        magnitude = parameters[name].detach().abs().flatten()
        if existing is not None and name in existing:
            # Already pruned: rank below every live weight, whatever value it drifted to.
            magnitude = torch.where(existing[name].flatten(), magnitude, torch.full_like(magnitude, -1.0))
        magnitudes.append(magnitude)
    flat = torch.cat(magnitudes)
    pruned_count = round(fraction * flat.numel())
    already_pruned = int((flat < 0).sum().item())
    if pruned_count < already_pruned:
        raise InvalidInputError(
            f"the model already has {already_pruned / flat.numel():.2%} of its prunable weights pruned; "
            f"a sparsity of {fraction} would revive some of them"
        )
    order = torch.sort(flat, stable=True).indices
    kept = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    kept[order[:pruned_count]] = False
    masks: Masks = {}
    offset = 0
    for name in names:
        size = parameters[name].numel()
        masks[name] = kept[offset : offset + size].view_as(parameters[name])
        offset += size
    return masks


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, PruneParams)
    names = prunable_parameters(context.model)
    if not names:
        raise InvalidInputError(
            "this model has nothing to prune: no Conv2d layers and no hidden Linear layers"
        )
    masks = {**(context.masks or {}), **magnitude_masks(context.model, names, params.sparsity, context.masks)}
    apply_masks(context.model, masks)
    pruned = {name: masks[name] for name in names}
    if context.hooks is not None:
        context.hooks.progress(f"{context.phase}-mask", 1, 1, {"sparsity": sparsity(pruned)})
    context.masks = masks  # enforce_constraints now keeps the new mask
    history: list[dict[str, float]] = []
    details: dict[str, object] = {
        "prunable_parameters": names,
        "prunable_count": sum(int(pruned[name].numel()) for name in names),
        "pruned_count": sum(int((~pruned[name]).sum().item()) for name in names),
        "prunable_sparsity": sparsity(pruned),
    }
    recipe, inherited = params.finetune_recipe(context.original_recipe)
    if params.finetune_epochs > 0:
        result = fit(
            context.model,
            context.data.x_train,
            context.data.y_train,
            recipe,
            seed=context.seed,
            phase=context.phase,
            hooks=context.hooks,
            resume=context.resume,
            task=context.task,
            after_step=context.enforce_constraints,
        )
        history = result.history
        details.update(augment_applied=result.augment_applied, resumed_from_epoch=result.resumed_from_epoch)
    details.update(inheritance_details(inherited))
    return MethodOutput(
        model=context.model,
        resolved_params=resolved_params(params, inherited),
        history=history,
        details=details,
        masks=masks,
    )
