"""The registered methods on real data (scikit-learn digits, tiny MLP, a few seconds in all)."""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.engine.datasets import ArrayDataset
from workers.engine.execute import EngineRequest, EngineResult, execute

# Agreement tolerances in accuracy points (digits has 359 test images: one image is 0.28 points).
TA_TOLERANCE = 3.0
UA_VS_TEST_ERROR_TOLERANCE = 5.0


def _request(digits: ArrayDataset, original: EngineResult, **overrides: Any) -> EngineRequest:
    """A retrain request for the same architecture and recipe as the session's original model."""
    fields: dict[str, Any] = {
        "kind": "retrain",
        "method": "retrain",
        "params": {},
        "seed": 0,
        "device": "cpu",
        "dataset": digits,
        "architecture": original.details["architecture"],
        "arch_config": original.details["arch_config"],
        "original_recipe": original.details["params"]["recipe"],
    }
    fields.update(overrides)
    return EngineRequest(**fields)


def _evaluate_original(digits: ArrayDataset, original: EngineResult, **forget: Any) -> EngineResult:
    return execute(
        _request(digits, original, kind="evaluate", method=None, weights=original.weights, **forget)
    )


def test_train_reaches_high_test_accuracy(original_digits_model: EngineResult) -> None:
    assert original_digits_model.metrics["test_accuracy"] > 90.0
    assert original_digits_model.metrics["train_accuracy"] > 95.0
    assert (
        len(original_digits_model.details["history"])
        == original_digits_model.details["params"]["recipe"]["epochs"]
    )


def test_retrain_on_a_class_forgets_it_completely(
    digits: ArrayDataset,
    class_forget_indices: np.ndarray,
    forget_class: int,
    original_digits_model: EngineResult,
) -> None:
    forget = {"forget_indices": class_forget_indices, "forget_class": forget_class}
    retrained = execute(_request(digits, original_digits_model, **forget))
    original = _evaluate_original(digits, original_digits_model, **forget)
    assert retrained.metrics["UA"] == 100.0
    assert retrained.metrics["MIA-Efficacy"] > 90.0  # never-seen class looks like non-members
    assert original.metrics["UA"] < 10.0  # the original still knows the class
    assert abs(retrained.metrics["TA"] - original.metrics["TA"]) <= TA_TOLERANCE
    assert retrained.details["counts"]["n_test_used"] == int(np.sum(digits.y_test != forget_class))
    assert retrained.details["params"]["recipe_source"] == "original"


def test_retrain_on_random_forget_set_has_ua_close_to_test_error(
    digits: ArrayDataset, random_forget_indices: np.ndarray, original_digits_model: EngineResult
) -> None:
    retrained = execute(_request(digits, original_digits_model, forget_indices=random_forget_indices))
    test_error = 100.0 - retrained.metrics["test_accuracy"]
    assert abs(retrained.metrics["UA"] - test_error) <= UA_VS_TEST_ERROR_TOLERANCE
    assert retrained.metrics["TA"] == retrained.metrics["test_accuracy"]  # no class filtering
    assert retrained.details["counts"]["n_forget"] == random_forget_indices.size


def test_retrain_with_explicit_recipe_overrides_the_original(
    digits: ArrayDataset, random_forget_indices: np.ndarray, original_digits_model: EngineResult
) -> None:
    recipe = {**original_digits_model.details["params"]["recipe"], "epochs": 2}
    result = execute(
        _request(
            digits, original_digits_model, params={"recipe": recipe}, forget_indices=random_forget_indices
        )
    )
    assert result.details["params"]["recipe_source"] == "params"
    assert result.details["params"]["recipe"]["epochs"] == 2
    assert len(result.details["history"]) == 2


def test_finetune_keeps_retain_accuracy_high(
    digits: ArrayDataset, random_forget_indices: np.ndarray, original_digits_model: EngineResult
) -> None:
    result = execute(
        _request(
            digits,
            original_digits_model,
            kind="unlearn",
            method="ft",
            params={"epochs": 3, "batch_size": 64},
            weights=original_digits_model.weights,
            forget_indices=random_forget_indices,
        )
    )
    assert result.metrics["RA"] > 95.0
    assert result.metrics["TA"] > 90.0
    assert result.details["params"]["lr"] == 0.01  # reference default filled in
    assert result.weights is not None and original_digits_model.weights is not None
    moved = [
        key
        for key in result.weights
        if not np.array_equal(result.weights[key], original_digits_model.weights[key])
    ]
    assert moved  # fine-tuning actually changed the model
