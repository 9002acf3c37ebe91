"""``train`` (the original model) and ``retrain`` (exact unlearning, optml.md §2.2)."""

from __future__ import annotations

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import MethodContext, MethodOutput
from workers.engine.methods.params import RetrainParams, TrainParams, TrainRecipe
from workers.engine.training import fit


def run_train(context: MethodContext) -> MethodOutput:
    """Train the freshly initialised model on the whole training split."""
    params = context.params
    assert isinstance(params, TrainParams)
    result = fit(
        context.model,
        context.data.x_train,
        context.data.y_train,
        params.recipe,
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


def resolve_retrain_recipe(
    params: RetrainParams, original_recipe: TrainRecipe | None
) -> tuple[TrainRecipe, str]:
    if params.recipe is not None:
        return params.recipe, "params"
    if original_recipe is not None:
        return original_recipe, "original"
    raise InvalidInputError(
        "retrain needs a training recipe: the original model's recipe is unknown, so pass params.recipe"
    )


def run_retrain(context: MethodContext) -> MethodOutput:
    """Train the freshly initialised model on the retain set only, with the original model's recipe.

    Reference: Unlearn-Sparse unlearn/retrain.py. The reference's sparse-mask reuse does not apply (Lethe
    models are dense).
    """
    params = context.params
    assert isinstance(params, RetrainParams)
    recipe, source = resolve_retrain_recipe(params, context.original_recipe)
    retain_inputs, retain_labels = context.data.retain()
    result = fit(
        context.model,
        retain_inputs,
        retain_labels,
        recipe,
        seed=context.seed,
        phase=context.phase,
        hooks=context.hooks,
        resume=context.resume,
        task=context.task,
    )
    return MethodOutput(
        model=context.model,
        resolved_params={"recipe": recipe.model_dump(mode="json"), "recipe_source": source},
        history=result.history,
        details={"augment_applied": result.augment_applied, "resumed_from_epoch": result.resumed_from_epoch},
    )
