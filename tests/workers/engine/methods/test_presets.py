"""Presets ('reference' = the reference code's values, 'lethe' = the default) and recipe inheritance of every
method's params, torch-free: what each preset resolves to, that explicit fields win, and where inherited
settings come from."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from workers.engine.methods import METHODS
from workers.engine.methods.params import (
    FinetuneParams,
    GradientAscentParams,
    L1SparseParams,
    PresetParams,
    PruneParams,
    RandomLabelParams,
    RetrainParams,
    SalUnParams,
    TrainParams,
    TrainRecipe,
)
from workers.engine.methods.params_distillation import (
    BadTeacherParams,
    BlindspotParams,
    IUParams,
    SCRUBParams,
)
from workers.engine.methods.params_regression import GaussianFinetuneParams
from workers.engine.presets import PRESET_KEY
from workers.engine.task_types import TaskType

# The documented values of each preset (the docstrings and field descriptions say the same). Reference
# values: optml.md §2.3-§2.7 and §6.2-§6.3 (Unlearn-WorstCase data-wise/arg_parser.py for SCRUB, whose
# m_steps 1 and decays [3, 5, 9] count epochs from 0), blindspot_sfd.md §1.3, §1.4, §1.8.
REFERENCE: dict[type[PresetParams], dict[str, Any]] = {
    FinetuneParams: {"epochs": 10, "lr": 0.01, "batch_size": 256, "augment": True, "schedule": "constant"},
    GradientAscentParams: {"epochs": 5, "lr": 1e-4, "batch_size": 256, "augment": True, "bn": "train"},
    RandomLabelParams: {"epochs": 10, "lr": 0.013, "batch_size": 256, "augment": True, "bn": "train"},
    SalUnParams: {"epochs": 10, "lr": 0.013, "mask_ratio": 0.5, "batch_size": 256, "bn": "train"},
    L1SparseParams: {"epochs": 10, "lr": 0.01, "alpha": 1e-4, "batch_size": 256, "augment": True},
    PruneParams: {"sparsity": 0.95, "finetune_epochs": 5, "batch_size": 256, "augment": True},
    IUParams: {"hvp": "reference", "step": "fixed", "alpha": None, "woodfisher_samples": 1000},
    BadTeacherParams: {"lr": 1e-4, "epochs": 1, "batch_size": 256, "retain_fraction": 0.3, "augment": False},
    SCRUBParams: {
        "schedule": "worstcase",
        "msteps": 2,
        "epochs": 10,
        "lr": 0.01,
        "max_lr": None,
        "lr_decay_epochs": [4, 6, 10],
        "lr_decay_rate": 0.1,
        "temperature": 4.0,
        "alpha": 0.001,
        "gamma": 0.99,
        "batch_size": 256,
        "forget_batch_size": None,
        "augment": True,
        "bn": "train",
    },
    BlindspotParams: {"epochs": 1, "lr": 1e-3, "batch_size": 256, "blindspot_batch_size": 256, "beta": 50.0},
    GaussianFinetuneParams: {"epochs": 1, "lr": 1e-3, "batch_size": 256, "augment": False},
}
LETHE: dict[type[PresetParams], dict[str, Any]] = {
    FinetuneParams: {"epochs": 10, "lr": 0.01, "batch_size": None, "augment": None},
    GradientAscentParams: {"epochs": 5, "lr": 5e-4, "batch_size": None, "augment": None, "bn": "frozen"},
    RandomLabelParams: {"lr": 0.013, "batch_size": None, "augment": None, "bn": "frozen"},
    SalUnParams: {"lr": 0.013, "mask_ratio": 0.5, "batch_size": None, "bn": "frozen"},
    L1SparseParams: {"lr": 0.01, "alpha": 1e-4, "batch_size": None, "augment": None},
    PruneParams: {"sparsity": 0.95, "batch_size": None, "augment": None},
    IUParams: {"step": "line_search", "line_search_margin": 2.0},
    BadTeacherParams: {"lr": 1e-3, "epochs": 5, "batch_size": None, "retain_fraction": 1.0, "augment": None},
    SCRUBParams: {"schedule": "original", "msteps": 2, "batch_size": None, "augment": None, "bn": "frozen"},
    BlindspotParams: {"batch_size": None, "blindspot_batch_size": None, "augment": None},
    GaussianFinetuneParams: {"batch_size": None, "augment": None},
}
ORIGINAL = TrainRecipe(epochs=20, batch_size=64, lr=0.1, augment=False)


def _unlearning_param_models() -> list[type[BaseModel]]:
    """Params of the classification/regression unlearn, prune and retrain methods (the generative methods'
    params live with the diffusion engine)."""
    return [
        spec.params_model
        for spec in METHODS
        if spec.job_kind in ("unlearn", "prune", "retrain") and TaskType.generative not in spec.task_types
    ]


@pytest.mark.parametrize("model", list(REFERENCE), ids=lambda model: model.__name__)
def test_presets_resolve_to_the_documented_values(model: type[PresetParams]) -> None:
    reference = model(preset="reference")
    assert {name: getattr(reference, name) for name in REFERENCE[model]} == REFERENCE[model]
    default = model()
    assert default.preset == "lethe"
    assert {name: getattr(default, name) for name in LETHE[model]} == LETHE[model]


@pytest.mark.parametrize("model", list(REFERENCE), ids=lambda model: model.__name__)
def test_every_preset_value_is_in_the_description_and_the_schema(model: type[PresetParams]) -> None:
    properties = model.model_json_schema()["properties"]
    assert properties["preset"]["default"] == "lethe"
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and PRESET_KEY in extra:
            assert "Presets: 'lethe' (default)" in (info.description or ""), name
            assert properties[name][PRESET_KEY] == extra[PRESET_KEY]


def test_explicit_fields_win_over_the_preset_and_resolution_is_stable() -> None:
    params = GradientAscentParams.model_validate({"preset": "reference", "lr": 1e-3, "bn": "frozen"})
    assert (params.lr, params.bn, params.batch_size, params.epochs) == (1e-3, "frozen", 256, 5)
    # An explicit null (inherit) wins over the reference preset's 256 as well.
    assert FinetuneParams.model_validate({"preset": "reference", "batch_size": None}).batch_size is None
    # What the API stores (the dump) validates back to the same values, whatever the preset.
    for model in REFERENCE:
        for preset in ("lethe", "reference"):
            dumped = model(preset=preset).model_dump(mode="json")
            assert model.model_validate(dumped).model_dump(mode="json") == dumped


def test_unknown_presets_are_rejected() -> None:
    with pytest.raises(ValidationError):
        FinetuneParams.model_validate({"preset": "paper"})


def test_every_registered_unlearning_method_has_a_preset() -> None:
    for model in _unlearning_param_models():
        if model.__name__ == "IdentityParams":
            continue  # the control takes no parameters
        assert issubclass(model, PresetParams), model.__name__
    assert issubclass(TrainParams, PresetParams)
    assert RetrainParams().recipe is None
    assert RetrainParams(preset="reference").recipe == TrainRecipe(epochs=160)


# ------------------------------------------------------------------------------------- recipe inheritance
def test_sgd_methods_inherit_batch_size_and_augmentation_from_the_original() -> None:
    recipe, inherited = FinetuneParams().resolve_recipe(ORIGINAL)
    assert (recipe.batch_size, recipe.augment, recipe.lr, recipe.epochs) == (64, False, 0.01, 10)
    assert inherited.sources["batch_size"] == {"value": 64, "source": "original"}
    assert inherited.sources["augment"] == {"value": False, "source": "original"}
    assert inherited.sources["optimizer"]["value"] == inherited.sources["optimizer"]["original"] == "sgd"
    augmented, _ = RandomLabelParams().resolve_recipe(ORIGINAL.model_copy(update={"augment": True}))
    assert augmented.augment is True


def test_explicit_recipe_fields_override_the_inherited_ones() -> None:
    recipe, inherited = FinetuneParams(augment=True, batch_size=32).resolve_recipe(ORIGINAL)
    assert (recipe.batch_size, recipe.augment) == (32, True)
    assert inherited.sources["augment"] == {"value": True, "source": "params"}
    # The reference preset sets them, so nothing is taken from the original.
    recipe, inherited = GradientAscentParams(preset="reference").resolve_recipe(ORIGINAL)
    assert (recipe.batch_size, recipe.augment) == (256, True)
    assert {source["source"] for name, source in inherited.sources.items() if name != "optimizer"} == {
        "params"
    }


def test_without_an_original_recipe_the_fallbacks_are_recorded() -> None:
    recipe, inherited = L1SparseParams().resolve_recipe(None)
    assert (recipe.batch_size, recipe.augment) == (256, False)
    assert inherited.sources["augment"]["source"].startswith("fallback")


def test_adam_methods_inherit_batches_but_keep_adam() -> None:
    inherited = BlindspotParams().resolve(ORIGINAL)
    assert inherited.values == {"augment": False, "batch_size": 64, "blindspot_batch_size": 64}
    assert inherited.sources["optimizer"]["value"] == "adam"
    assert inherited.sources["optimizer"]["original"] == "sgd"
    scrub = SCRUBParams(forget_batch_size=16).resolve(ORIGINAL)
    assert (scrub.values["batch_size"], scrub.values["forget_batch_size"]) == (64, 16)
    assert SCRUBParams().resolve(ORIGINAL).values["forget_batch_size"] == 64  # null = batch_size
    prune_recipe, _ = PruneParams().finetune_recipe(ORIGINAL)
    assert (prune_recipe.batch_size, prune_recipe.augment) == (64, False)


# ---------------------------------------------------------------------------------------- scrub schedule
def test_scrub_pass_schedules_and_learning_rate_decays() -> None:
    worstcase = SCRUBParams(schedule="worstcase", epochs=5, msteps=2, lr_decay_epochs=[2, 4])
    original = SCRUBParams(schedule="original", epochs=5, msteps=2, lr_decay_epochs=[2, 4])
    assert [worstcase.passes(epoch) for epoch in range(1, 6)] == [("max",)] * 2 + [("min",)] * 3
    assert [original.passes(epoch) for epoch in range(1, 6)] == [("max", "min")] * 2 + [("min",)] * 3
    rates = [worstcase.learning_rate(0.01, epoch) for epoch in range(1, 6)]
    assert rates == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4])
    with pytest.raises(ValidationError):
        SCRUBParams(msteps=3, epochs=2)
