"""``train`` (the original model) and ``retrain`` (exact unlearning, optml.md §2.2)."""

from __future__ import annotations

from workers.engine.errors import InvalidInputError
from workers.engine.methods.base import MethodContext, MethodOutput, fit_method
from workers.engine.methods.params import RetrainParams, TrainParams, TrainRecipe


def run_train(context: MethodContext) -> MethodOutput:
    """Train the freshly initialised model on the whole training split."""
    params = context.params
    assert isinstance(params, TrainParams)
    return fit_method(
        context, context.data.x_train, context.data.y_train, params.recipe, params.model_dump(mode="json")
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
    resolved = {"recipe": recipe.model_dump(mode="json"), "recipe_source": source}
    return fit_method(context, retain_inputs, retain_labels, recipe, resolved)
