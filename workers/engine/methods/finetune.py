"""``ft``: fine-tune the original model on the retain set (reference FT; optml.md §2.3).

Loss ``min_theta E_{D_r} CE(theta; x, y)`` from theta_o, in train mode with the recipe's augmentation, as
Unlearn-Sparse unlearn/FT.py ``FT_iter``. Defaults and deviations: see ``FinetuneParams``.
"""

from __future__ import annotations

from workers.engine.methods.base import MethodContext, MethodOutput
from workers.engine.methods.params import FinetuneParams
from workers.engine.training import fit


def run(context: MethodContext) -> MethodOutput:
    params = context.params
    assert isinstance(params, FinetuneParams)
    retain_inputs, retain_labels = context.data.retain()
    result = fit(
        context.model,
        retain_inputs,
        retain_labels,
        params,
        seed=context.seed,
        phase=context.phase,
        hooks=context.hooks,
        resume=context.resume,
        task=context.task,
    )
    return MethodOutput(
        model=context.model,
        resolved_params=params.model_dump(mode="json"),
        history=result.history,
        details={"augment_applied": result.augment_applied, "resumed_from_epoch": result.resumed_from_epoch},
    )
