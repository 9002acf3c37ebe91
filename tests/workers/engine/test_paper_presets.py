"""Paper-scale presets: every entry validates with the engine's own schemas and holds the published values."""

from __future__ import annotations

import pytest

from app.schemas.campaigns import ForgetSetRef
from app.schemas.resources import DataRootDatasetCreate
from workers.engine.architectures import ARCHITECTURES
from workers.engine.methods import METHODS
from workers.engine.methods.params import TrainRecipe
from workers.engine.paper_presets import PAPER_PRESETS

PRESETS = PAPER_PRESETS.names()


@pytest.mark.parametrize("name", PRESETS)
def test_every_part_of_a_preset_validates(name: str) -> None:
    preset = PAPER_PRESETS.get(name)
    ARCHITECTURES.get(preset.architecture).parse_config(preset.arch_config)
    DataRootDatasetCreate.model_validate(preset.dataset)
    TrainRecipe.model_validate(preset.train_recipe)
    METHODS.get("retrain").params_model.model_validate(preset.retrain_params)
    for method, params in preset.methods.items():
        METHODS.get(method).params_model.model_validate(params)
    for entry in preset.forget_sets:
        ForgetSetRef.model_validate(entry)


def test_optml_preset_is_the_published_cifar10_experiment() -> None:
    """optml.md: the original trains 182 epochs (SGD 0.1, momentum 0.9, wd 5e-4, batch 256, x0.1 at 91 and
    136, crop + flip); the README's retrain is 160 epochs at lr 0.1; FT lr 0.01 x 10; GA lr 1e-4 x 5; 10 %
    random forgetting (4,500 of 45,000)."""
    preset = PAPER_PRESETS.get("optml-cifar10-resnet18")
    recipe = TrainRecipe.model_validate({"base": preset.name})
    assert (recipe.epochs, recipe.lr, recipe.momentum, recipe.weight_decay, recipe.batch_size) == (
        182, 0.1, 0.9, 5e-4, 256,
    )  # fmt: skip
    assert (recipe.schedule, recipe.milestones, recipe.gamma, recipe.augment) == (
        "multistep",
        [0.5, 0.75],
        0.1,
        True,
    )
    retrain = METHODS.get("retrain").params_model.model_validate(preset.retrain_params)
    assert retrain.recipe is not None and (retrain.recipe.epochs, retrain.recipe.lr) == (160, 0.1)
    ft = METHODS.get("ft").params_model.model_validate(preset.methods["ft"])
    ga = METHODS.get("ga").params_model.model_validate(preset.methods["ga"])
    assert (ft.lr, ft.epochs, ga.lr, ga.epochs) == (0.01, 10, 1e-4, 5)
    assert preset.forget_sets == [
        {"spec": {"kind": "random", "fraction": 0.1, "seed": 0}, "name": "random-10pct"}
    ]
    assert preset.architecture == "resnet18" and preset.arch_config["width"] == 64


def test_a_recipe_base_names_a_preset_and_given_fields_win() -> None:
    recipe = TrainRecipe.model_validate({"base": "salun-cifar10-resnet18", "epochs": 3, "lr": 0.05})
    assert (recipe.epochs, recipe.lr, recipe.milestones) == (3, 0.05, [0.5, 0.75])
    with pytest.raises(ValueError, match="unknown recipe base 'cifar10'; available: speedrun, optml-cifar10"):
        TrainRecipe.model_validate({"base": "cifar10"})
