from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from workers.engine.methods import METHODS
from workers.engine.methods.params import MAX_EPOCHS, FinetuneParams, RetrainParams, TrainParams, TrainRecipe


def test_train_recipe_defaults_are_the_reference_original_recipe() -> None:
    recipe = TrainRecipe()
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.momentum, recipe.weight_decay) == (
        182,
        256,
        0.1,
        0.9,
        5e-4,
    )
    assert recipe.schedule == "multistep" and recipe.gamma == 0.1 and recipe.augment
    # Reference milestones are epochs 91 and 136 of 182.
    assert [round(fraction * 182) for fraction in recipe.milestones] == [91, 136]


def test_finetune_reference_preset_is_reference_ft() -> None:
    params = FinetuneParams(preset="reference")
    assert (params.epochs, params.batch_size, params.lr, params.momentum, params.weight_decay) == (
        10,
        256,
        0.01,
        0.9,
        5e-4,
    )
    assert params.schedule == "constant" and params.augment is True
    recipe, _ = params.resolve_recipe(None)
    assert isinstance(recipe, TrainRecipe) and recipe.batch_size == 256 and recipe.augment


def test_retrain_recipe_defaults_to_none_and_accepts_a_recipe() -> None:
    assert RetrainParams().recipe is None
    assert RetrainParams.model_validate({"recipe": {"epochs": 3}}).recipe == TrainRecipe(epochs=3)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": math.nan},
        {"lr": math.inf},
        {"lr": 0.0},
        {"epochs": MAX_EPOCHS + 1},
        {"epochs": 0},
        {"batch_size": 0},
        {"momentum": 1.0},
        {"milestones": [0.75, 0.5]},
        {"milestones": [1.5]},
        {"schedule": "linear"},
        {"optimizer": "adam"},
        {"unexpected": 1},
    ],
)
def test_invalid_recipes_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TrainRecipe.model_validate(bad)
    with pytest.raises(ValidationError):
        FinetuneParams.model_validate(bad)


def test_nested_recipe_is_validated_and_extra_keys_forbidden() -> None:
    with pytest.raises(ValidationError):
        TrainParams.model_validate({"recipe": {"lr": "fast"}})
    with pytest.raises(ValidationError):
        TrainParams.model_validate({"epochs": 3})


def _models_reachable_from(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for info in model.model_fields.values():
        for candidate in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += _models_reachable_from(candidate)
    return found


def test_every_parameter_is_documented_and_extra_keys_forbidden() -> None:
    for spec in METHODS:
        for model in _models_reachable_from(spec.params_model):
            assert model.model_config.get("extra") == "forbid", model.__name__
            for name, info in model.model_fields.items():
                assert info.description, f"{model.__name__}.{name} has no description"
