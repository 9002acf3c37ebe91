"""Audit parameters: the audited method and its params are validated up front."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.engine.audit.params import ALL_ATTACKS, AuditParams


def test_defaults_fill_the_method_params_and_run_every_attack() -> None:
    params = AuditParams(method="ft")
    assert params.shadows == 16 and params.forget_sets_per_shadow == 1
    assert params.method_params["epochs"] == 10  # the reference FT default, resolved
    assert tuple(params.attacks) == ALL_ATTACKS
    assert params.needs_pool_shadows


def test_retrain_is_auditable_as_the_control() -> None:
    assert AuditParams(method="retrain").method == "retrain"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "train"}, "is a train method"),
        ({"method": "prune"}, "is a prune method"),
        ({"method": "ft", "method_params": {"lr": -1}}, "invalid method_params for ft: lr"),
        ({"method": "ft", "shadows": 2}, "greater than or equal to 3"),
        ({"method": "ft", "attacks": []}, "at least 1"),
        ({"method": "ft", "attacks": ["magic"]}, "ulira"),
        ({"method": "ft", "alphas": [1.5]}, "less than 1"),
        ({"method": "ft", "surprise": 1}, "Extra inputs"),
    ],
)
def test_bad_parameters_are_rejected_with_a_reason(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuditParams.model_validate(body)


def test_attacks_are_deduplicated_in_canonical_order() -> None:
    params = AuditParams(method="ft", attacks=["rmia", "ulira", "rmia"])
    assert params.attacks == ["ulira", "rmia"]
    assert AuditParams(method="ft", attacks=["kaggle"]).needs_pool_shadows is False


def test_kaggle_protocol_decides_which_models_the_audit_needs() -> None:
    released = AuditParams(method="ft", attacks=["kaggle"])
    assert released.kaggle_protocol == "released" and released.kaggle_calibration
    assert released.needs_released_unlearning and released.needs_kaggle_calibration
    assert not released.needs_pipelines and released.needs_retrains
    pipelines = AuditParams(
        method="ft", attacks=["kaggle"], kaggle_protocol="pipelines", kaggle_calibration=False
    )
    assert pipelines.needs_pipelines and not pipelines.needs_released_unlearning
    assert not pipelines.needs_kaggle_calibration
    assert AuditParams(method="ft", attacks=["lira"]).needs_pipelines
    with pytest.raises(ValidationError):
        AuditParams(method="ft", kaggle_protocol="kaggle")
