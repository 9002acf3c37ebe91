"""WorstCaseSearchParams: defaults, ranges and the size/fraction rule (torch-free)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from workers.engine.methods import METHODS
from workers.engine.search.params import WorstCaseSearchParams


def test_defaults_are_the_reference_codes() -> None:
    params = WorstCaseSearchParams()
    assert (params.outer_iterations, params.lower_epochs) == (10, 10)
    assert (params.theta_lr, params.w_lr, params.gamma) == (0.01, 0.01, 0.0)
    assert (params.granularity, params.mode, params.lower_level, params.upper_pass) == (
        "data",
        "hardest",
        "ft",
        "eval",
    )
    assert (params.batch_size, params.augment, params.init, params.evaluate_selection) == (
        256,
        True,
        "random",
        True,
    )
    assert params.item_count(45_000) == 4_500  # the reference's 10 % of CIFAR-10's 45k split


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
