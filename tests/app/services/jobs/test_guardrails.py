from __future__ import annotations

import pytest

from app.schemas.campaigns import MethodEntry
from app.services.jobs.campaigns import candidates
from app.services.jobs.guardrails import Guardrails, guardrail_flags

ORIGINAL = {"UA": 0.0, "RA": 99.0, "TA": 97.0, "MIA-Efficacy": 1.0}
RETRAIN = {"UA": 3.0, "RA": 99.5, "TA": 96.0, "MIA-Efficacy": 8.0}


def test_a_sane_result_has_no_flags() -> None:
    result = {"UA": 4.0, "RA": 98.0, "TA": 95.5, "MIA-Efficacy": 10.0, "max_class_fraction": 11.0}
    assert guardrail_flags(result, ORIGINAL, RETRAIN, Guardrails()) == []


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"RA": 93.9}, "ra-collapse"),  # 99 - 5 = 94
        ({"TA": 91.9}, "ta-collapse"),  # 97 - 5 = 92
        ({"UA": 13.1}, "ua-overshoot"),  # 3 + 10 = 13
        ({"MIA-Efficacy": 18.5}, "mia-overshoot"),  # 8 + 10 = 18
        ({"max_class_fraction": 90.0}, "single-class"),
    ],
)
def test_each_rule_at_its_margin(change: dict[str, float], flag: str) -> None:
    result = {"UA": 3.0, "RA": 99.0, "TA": 97.0, "MIA-Efficacy": 8.0, "max_class_fraction": 10.0, **change}
    assert guardrail_flags(result, ORIGINAL, RETRAIN, Guardrails()) == [flag]


def test_values_just_inside_the_margins_pass() -> None:
    result = {"UA": 13.0, "RA": 94.0, "TA": 92.0, "MIA-Efficacy": 18.0, "max_class_fraction": 89.9}
    assert guardrail_flags(result, ORIGINAL, RETRAIN, Guardrails()) == []


def test_margins_are_configurable_and_missing_references_skip_rules() -> None:
    result = {"UA": 50.0, "RA": 50.0, "TA": 50.0, "MIA-Efficacy": 50.0}
    assert guardrail_flags(result, None, None, Guardrails()) == []
    loose = Guardrails(max_ra_drop=60, max_ta_drop=60, max_ua_overshoot=60, max_mia_overshoot=60)
    assert guardrail_flags(result, ORIGINAL, RETRAIN, loose) == []
    assert set(guardrail_flags(result, ORIGINAL, RETRAIN, Guardrails())) == {
        "ra-collapse",
        "ta-collapse",
        "ua-overshoot",
        "mia-overshoot",
    }


def test_grid_candidates_are_the_product_over_the_params() -> None:
    entry = MethodEntry(method="ga", params={"epochs": 2}, grid={"lr": [0.1, 0.01], "batch_size": [32, 64]})
    assert candidates(entry) == [
        {"epochs": 2, "batch_size": 32, "lr": 0.1},
        {"epochs": 2, "batch_size": 32, "lr": 0.01},
        {"epochs": 2, "batch_size": 64, "lr": 0.1},
        {"epochs": 2, "batch_size": 64, "lr": 0.01},
    ]
    assert candidates(MethodEntry(method="ft", params={"epochs": 1})) == [{"epochs": 1}]


REGRESSION_ORIGINAL = {"retain_mae": 40.0, "test_mae": 50.0, "forget_mae": 30.0}
REGRESSION_RETRAIN = {"retain_mae": 39.0, "test_mae": 51.0, "forget_mae": 70.0}


@pytest.mark.parametrize(
    ("change", "flags"),
    [
        ({}, []),
        ({"retain_mae": 48.0, "test_mae": 60.0, "forget_mae": 105.0}, []),  # exactly at the margins
        ({"retain_mae": 48.1}, ["retain-mae-rise"]),  # 40 * 1.2 = 48
        ({"test_mae": 60.1}, ["test-mae-rise"]),  # 50 * 1.2 = 60
        ({"forget_mae": 105.1}, ["forget-mae-overshoot"]),  # 70 * 1.5 = 105
    ],
)
def test_regression_rules_are_relative_to_the_original_and_the_retrain(
    change: dict[str, float], flags: list[str]
) -> None:
    result = {"retain_mae": 41.0, "test_mae": 52.0, "forget_mae": 65.0, **change}
    assert guardrail_flags(result, REGRESSION_ORIGINAL, REGRESSION_RETRAIN, Guardrails()) == flags
    loose = Guardrails(max_mae_rise_percent=1000, max_forget_mae_overshoot_percent=1000)
    assert guardrail_flags(result, REGRESSION_ORIGINAL, REGRESSION_RETRAIN, loose) == []


def test_generative_retained_accuracy_collapse_against_the_teacher() -> None:
    teacher = {"ua": 0.05, "retain_accuracy": 0.93}
    assert guardrail_flags({"ua": 0.99, "retain_accuracy": 0.84}, teacher, None, Guardrails()) == []
    flags = guardrail_flags({"ua": 0.99, "retain_accuracy": 0.82}, teacher, None, Guardrails())
    assert flags == ["retain-accuracy-collapse"]
