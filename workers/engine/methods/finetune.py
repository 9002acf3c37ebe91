"""``ft``: fine-tune the original model on the retain set (reference FT; optml.md §2.3).

Loss ``min_theta E_{D_r} CE(theta; x, y)`` from theta_o, in train mode with the recipe's augmentation, as
Unlearn-Sparse unlearn/FT.py ``FT_iter``; batch size and augmentation come from the original model's recipe
unless given (the 'lethe' preset) or set by the 'reference' preset. Defaults and deviations: see
``FinetuneParams``.
"""

from __future__ import annotations

from workers.engine.methods.base import (
    MethodContext,
    MethodOutput,
    fit_method,
    inheritance_details,
    resolved_params,
)
from workers.engine.methods.params import FinetuneParams


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, FinetuneParams)
    recipe, inherited = params.resolve_recipe(context.original_recipe)
    retain_inputs, retain_labels = context.data.retain()
    return fit_method(
        context,
        retain_inputs,
        retain_labels,
        recipe,
        resolved_params(params, inherited),
        inheritance_details(inherited),
    )
