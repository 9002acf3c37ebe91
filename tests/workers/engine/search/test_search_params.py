"""WorstCaseSearchParams: defaults, ranges and the size/fraction rule (torch-free)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from workers.engine.methods import METHODS
from workers.engine.search.params import WorstCaseSearchParams

# The reference code's data-wise defaults (Unlearn-WorstCase data-wise/arg_parser.py; optml.md §5.3) and the
# 'lethe' preset's values, as the field descriptions document them.
REFERENCE: dict[str, Any] = {
    "outer_iterations": 10,
    "lower_epochs": 10,
    "theta_lr": 0.01,
    "w_lr": 0.01,
    "w_step": "fixed",
    "gamma": 0.0,
    "upper_pass": "train",
    "batch_size": 256,
    "augment": True,
}
LETHE: dict[str, Any] = {
    "outer_iterations": 10,
    "lower_epochs": 5,
    "theta_lr": 1e-3,
    "w_lr": 0.2,
    "w_step": "normalized",
    "gamma": 0.0,
    "upper_pass": "eval",
    "batch_size": None,
    "augment": None,
}
COMMON: dict[str, Any] = {
    "granularity": "data",
    "mode": "hardest",
    "lower_level": "ft",
    "init": "random",
    "evaluate_selection": True,
}


def _values(params: WorstCaseSearchParams, names: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(params, name) for name in names}


def test_the_reference_preset_is_the_reference_codes_defaults() -> None:
    params = WorstCaseSearchParams(preset="reference")
    assert _values(params, REFERENCE) == REFERENCE
    assert _values(params, COMMON) == COMMON
    assert params.item_count(45_000) == 4_500  # the reference's 10 % of CIFAR-10's 45k split


def test_the_default_is_the_lethe_preset() -> None:
    params = WorstCaseSearchParams()
    assert params.preset == "lethe"
    assert _values(params, LETHE) == LETHE
    assert _values(params, COMMON) == COMMON
    assert WorstCaseSearchParams.preset_values("lethe") == LETHE
    assert WorstCaseSearchParams.preset_values("reference") == REFERENCE


def test_explicit_fields_win_and_the_dump_validates_back() -> None:
    params = WorstCaseSearchParams.model_validate(
        {"preset": "reference", "w_step": "normalized", "w_lr": 0.5}
    )
    assert (params.w_step, params.w_lr) == ("normalized", 0.5)
    assert (params.theta_lr, params.upper_pass) == (0.01, "train")  # the rest from the preset
    # An explicit null (inherit from the original) wins over the reference preset's 256 too.
    inherit = WorstCaseSearchParams.model_validate({"preset": "reference", "batch_size": None})
    assert inherit.batch_size is None
    for preset in ("lethe", "reference"):
        dumped = WorstCaseSearchParams(preset=preset).model_dump(mode="json")
        assert WorstCaseSearchParams.model_validate(dumped).model_dump(mode="json") == dumped


def test_every_preset_value_is_in_the_description_and_the_schema() -> None:
    properties = WorstCaseSearchParams.model_json_schema()["properties"]
    assert properties["preset"]["default"] == "lethe"
    assert set(properties["preset"]["enum"]) == {"lethe", "reference"}
    for name in REFERENCE:
        description = properties[name]["description"]
        assert f"'reference' {json.dumps(REFERENCE[name])}" in description, name
        assert "Presets: 'lethe' (default)" in description, name
        assert properties[name]["presets"] == {"lethe": LETHE[name], "reference": REFERENCE[name]}


def test_the_papers_settings_are_accepted() -> None:
    params = WorstCaseSearchParams.model_validate(
        {"outer_iterations": 20, "lower_epochs": 10, "theta_lr": 1e-3, "w_lr": 1e-3, "gamma": 1e-4}
    )
    assert params.outer_iterations == 20 and params.gamma == 1e-4


def test_size_and_fraction() -> None:
    assert WorstCaseSearchParams(size=7).item_count(100) == 7
    assert WorstCaseSearchParams(fraction=0.25).item_count(10) == 3  # 2.5 rounds half up
    assert WorstCaseSearchParams(fraction=0.01).item_count(10) == 1  # at least one item
    with pytest.raises(ValidationError, match="not both"):
        WorstCaseSearchParams(size=3, fraction=0.1)
    with pytest.raises(ValueError, match="must be smaller"):
        WorstCaseSearchParams(size=10).item_count(10)
    with pytest.raises(ValueError, match="must be smaller"):
        WorstCaseSearchParams(fraction=0.99).item_count(10)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 0},
        {"fraction": 0.0},
        {"fraction": 1.0},
        {"fraction": math.nan},
        {"outer_iterations": 0},
        {"lower_epochs": 0},
        {"theta_lr": 0.0},
        {"theta_lr": math.inf},
        {"w_lr": -1.0},
        {"w_lr": math.nan},
        {"gamma": -1e-4},
        {"alpha": 2.0},
        {"batch_size": 0},
        {"granularity": "prompt"},
        {"mode": "re_optm"},
        {"lower_level": "rl"},
        {"upper_pass": "test"},
        {"init": "ones"},
        {"select_epochs": 10},  # unknown (reference) names are rejected, not ignored
        {"preset": "paper"},
        {"w_step": "sign"},
    ],
)
def test_invalid_values_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WorstCaseSearchParams.model_validate(bad)


def test_l1_alpha_decays_linearly_over_the_lower_epochs() -> None:
    params = WorstCaseSearchParams(lower_level="l1_sparse", alpha=1e-3, lower_epochs=4)
    assert [params.l1_alpha(epoch) for epoch in range(4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert WorstCaseSearchParams(alpha=1e-3).l1_alpha(0) == 0.0  # the 'ft' lower level has no l1 term


def test_registered_as_a_search_method() -> None:
    spec = METHODS.get("worst_case_search")
    assert spec.job_kind == "search"
    assert spec.params_model is WorstCaseSearchParams
    assert spec.impl == "workers.engine.search.worst_case:run"
    schema = WorstCaseSearchParams.model_json_schema()
    assert all(schema["properties"][name].get("description") for name in ("size", "w_lr", "upper_pass"))
