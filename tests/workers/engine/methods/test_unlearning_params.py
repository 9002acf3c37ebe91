"""Parameter models of ga, rl, salun, l1_sparse and prune: reference defaults and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from workers.engine.methods import METHODS
from workers.engine.methods.params import (
    GradientAscentParams,
    L1SparseParams,
    PruneParams,
    RandomLabelParams,
    SalUnParams,
)

UNLEARNING_MODELS: list[type[BaseModel]] = [
    GradientAscentParams,
    RandomLabelParams,
    SalUnParams,
    L1SparseParams,
]
ALL_MODELS: list[type[BaseModel]] = [*UNLEARNING_MODELS, PruneParams]


def test_reference_preset() -> None:
    ga = GradientAscentParams(preset="reference")
    assert (ga.lr, ga.epochs, ga.batch_size, ga.momentum, ga.weight_decay, ga.schedule) == (
        1e-4,
        5,
        256,
        0.9,
        5e-4,
        "constant",
    )
    assert ga.bn == "train" and ga.augment is True
    for model in (RandomLabelParams, SalUnParams):
        params = model(preset="reference")
        assert (params.lr, params.epochs, params.batch_size, params.weight_decay) == (0.013, 10, 256, 5e-4)
        assert params.mode == "sequential" and params.exclude_true_label is False
    assert SalUnParams().mask_ratio == 0.5
    l1 = L1SparseParams(preset="reference")
    assert (l1.lr, l1.epochs, l1.alpha, l1.no_l1_epochs, l1.weight_decay) == (0.01, 10, 1e-4, 0, 5e-4)
    prune = PruneParams(preset="reference")
    assert (prune.sparsity, prune.finetune_epochs, prune.lr, prune.batch_size) == (0.95, 5, 0.01, 256)
    recipe, _ = PruneParams(preset="reference", finetune_epochs=7).finetune_recipe()
    assert (recipe.epochs, recipe.lr, recipe.momentum, recipe.weight_decay, recipe.schedule) == (
        7,
        0.01,
        0.9,
        5e-4,
        "constant",
    )


def test_methods_are_registered_with_their_params() -> None:
    expected = {
        "ga": ("unlearn", GradientAscentParams),
        "rl": ("unlearn", RandomLabelParams),
        "salun": ("unlearn", SalUnParams),
        "l1_sparse": ("unlearn", L1SparseParams),
        "prune": ("prune", PruneParams),
    }
    for name, (kind, model) in expected.items():
        spec = METHODS.get(name)
        assert (spec.job_kind, spec.params_model) == (kind, model)


@pytest.mark.parametrize("model", UNLEARNING_MODELS)
@pytest.mark.parametrize(
    "bad",
    [
        {"lr": math.nan},
        {"lr": math.inf},
        {"lr": -0.1},
        {"epochs": -1},
        {"epochs": 0},
        {"batch_size": 0},
        {"x": 1},
    ],
)
def test_bad_training_values_are_rejected(model: type[BaseModel], bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(bad)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_mask_ratio_out_of_range_is_rejected(ratio: float) -> None:
    with pytest.raises(ValidationError, match="mask_ratio"):
        SalUnParams.model_validate({"mask_ratio": ratio})
    assert SalUnParams(mask_ratio=1.0).mask_ratio == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": -1e-4},
        {"alpha": math.nan},
        {"no_l1_epochs": -1},
        {"epochs": 5, "no_l1_epochs": 6},
    ],
)
def test_bad_l1_values_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        L1SparseParams.model_validate(bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"sparsity": 0.0},
        {"sparsity": 1.0},
        {"sparsity": math.nan},
        {"finetune_epochs": -1},
        {"lr": math.nan},
        {"milestones": [0.75, 0.5]},
        {"epochs": 3},
    ],
)
def test_bad_prune_values_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PruneParams.model_validate(bad)


@pytest.mark.parametrize("bad", [{"mode": "mixed"}, {"exclude_true_label": "sometimes"}])
def test_bad_relabel_options_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RandomLabelParams.model_validate(bad)


def test_max_class_fraction_by_hand() -> None:
    from workers.engine.execute import max_class_fraction

    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # class 0
            [0.2, 0.7, 0.1],  # class 1
            [0.6, 0.3, 0.1],  # class 0
            [0.1, 0.1, 0.8],  # class 2
            [0.5, 0.4, 0.1],  # class 0
        ]
    )
    assert max_class_fraction(probabilities) == 60.0
    assert max_class_fraction(np.tile([0.0, 1.0, 0.0], (4, 1))) == 100.0  # one class: collapse
    assert max_class_fraction(np.eye(4)) == 25.0
