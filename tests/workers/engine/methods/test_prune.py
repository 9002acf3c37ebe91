"""``prune`` (job kind "prune"): exact one-shot magnitude sparsity, and the mask surviving later jobs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model
from workers.engine.datasets import ArrayDataset
from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.methods.prune import prunable_parameters

SPARSITY = 0.9
HIDDEN_WEIGHT = "layers.0.weight"  # the digits MLP's only hidden Linear layer (128 x 64)


def _request(digits: ArrayDataset, original: EngineResult, **overrides: Any) -> EngineRequest:
    fields: dict[str, Any] = {
        "kind": "prune",
        "method": "prune",
        "params": {"sparsity": SPARSITY, "finetune_epochs": 0},
        "seed": 0,
        "device": "cpu",
        "dataset": digits,
        "architecture": original.details["architecture"],
        "arch_config": original.details["arch_config"],
        "weights": original.weights,
    }
    fields.update(overrides)
    return EngineRequest(**fields)


@pytest.fixture(scope="module")
def pruned(digits: ArrayDataset, original_digits_model: EngineResult) -> EngineResult:
    return execute(_request(digits, original_digits_model))


def _assert_pruned_zero(result: EngineResult, masks: dict[str, np.ndarray]) -> None:
    assert result.weights is not None and result.masks is not None
    for name, mask in masks.items():
        assert np.array_equal(result.masks[name], mask)
        assert np.all(result.weights[name][mask == 0] == 0.0), name


def test_prune_hits_the_requested_sparsity_exactly(pruned: EngineResult, original_digits_model) -> None:
    assert pruned.masks is not None and pruned.weights is not None
    assert set(pruned.masks) == {HIDDEN_WEIGHT}  # the classifier and biases are never pruned
    mask = pruned.masks[HIDDEN_WEIGHT]
    pruned_count = round(SPARSITY * mask.size)
    assert int(np.sum(mask == 0)) == pruned_count
    assert np.all(pruned.weights[HIDDEN_WEIGHT][mask == 0] == 0.0)
    # Magnitude pruning: every pruned weight was no larger than every kept one.
    before = np.abs(original_digits_model.weights[HIDDEN_WEIGHT])
    assert before[mask == 0].max() <= before[mask == 1].min()
    assert np.array_equal(
        pruned.weights[HIDDEN_WEIGHT][mask == 1], original_digits_model.weights[HIDDEN_WEIGHT][mask == 1]
    )
    assert np.array_equal(pruned.weights["head.weight"], original_digits_model.weights["head.weight"])
    # A prune job has no forget set: train/test accuracy, the collapse metric and the sparsity only.
    assert set(pruned.metrics) == {"train_accuracy", "test_accuracy", "max_class_fraction", "sparsity"}
    assert pruned.metrics["sparsity"] == pytest.approx(100.0 * pruned_count / mask.size)
    assert pruned.details["pruned_count"] == pruned_count
    assert pruned.details["history"] == []


def test_prune_with_finetuning_recovers_and_stays_sparse(digits, original_digits_model) -> None:
    params = {"sparsity": 0.95, "finetune_epochs": 3, "batch_size": 64}
    result = execute(_request(digits, original_digits_model, params=params))
    assert result.masks is not None
    mask = result.masks[HIDDEN_WEIGHT]
    assert int(np.sum(mask == 0)) == round(0.95 * mask.size)
    _assert_pruned_zero(result, result.masks)
    assert len(result.details["history"]) == 3
    assert result.details["params"]["lr"] == 0.01
    assert result.metrics["test_accuracy"] > 85.0


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ft", {"epochs": 2, "batch_size": 64}),
        ("ga", {"lr": 0.004, "batch_size": 32}),
        ("rl", {"epochs": 2, "batch_size": 64}),
        ("salun", {"epochs": 2, "batch_size": 64}),
        ("l1_sparse", {"epochs": 2, "batch_size": 64}),
    ],
)
def test_unlearning_a_pruned_model_keeps_pruned_weights_zero(
    digits, original_digits_model, pruned, class_forget_indices, method, params
) -> None:
    assert pruned.masks is not None
    result = execute(
        _request(
            digits,
            pruned,
            kind="unlearn",
            method=method,
            params=params,
            weights=pruned.weights,
            masks=pruned.masks,
            forget_indices=class_forget_indices,
        )
    )
    _assert_pruned_zero(result, pruned.masks)
    assert result.metrics["sparsity"] == pruned.metrics["sparsity"]
    assert result.weights is not None and pruned.weights is not None
    assert not np.array_equal(result.weights[HIDDEN_WEIGHT], pruned.weights[HIDDEN_WEIGHT])


def test_retrain_with_the_mask_keeps_pruned_weights_zero(
    digits, original_digits_model, pruned, class_forget_indices
) -> None:
    assert pruned.masks is not None
    result = execute(
        _request(
            digits,
            pruned,
            kind="retrain",
            method="retrain",
            params={"recipe": {**original_digits_model.details["params"]["recipe"], "epochs": 2}},
            weights=None,
            masks=pruned.masks,
            forget_indices=class_forget_indices,
        )
    )
    _assert_pruned_zero(result, pruned.masks)


def test_pruning_a_pruned_model_keeps_its_pruned_weights(digits, pruned) -> None:
    assert pruned.masks is not None
    sparser = execute(
        _request(digits, pruned, params={"sparsity": 0.95, "finetune_epochs": 0}, masks=pruned.masks)
    )
    assert sparser.masks is not None
    old, new = pruned.masks[HIDDEN_WEIGHT], sparser.masks[HIDDEN_WEIGHT]
    assert np.all(new[old == 0] == 0)
    assert int(np.sum(new == 0)) == round(0.95 * new.size)
    with pytest.raises(InvalidInputError, match="would revive"):
        execute(_request(digits, pruned, params={"sparsity": 0.5}, masks=pruned.masks))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"forget_indices": np.arange(5, dtype=np.int64)}, "takes no forget set"),
        ({"forget_class": 3}, "takes no forget set"),
        ({"weights": None}, "needs the input model's weights"),
        ({"params": {"sparsity": 1.0}}, "sparsity"),
        ({"kind": "unlearn"}, "is a prune method, not a unlearn method"),
        ({"arch_config": {"input_shape": [1, 8, 8], "hidden": []}, "weights": None}, "nothing to prune"),
    ],
)
def test_bad_prune_requests(digits, original_digits_model, overrides, message) -> None:
    request = _request(digits, original_digits_model, **overrides)
    if request.weights is None and request.arch_config.get("hidden") == []:
        request.weights = {
            key: np.zeros(shape, dtype=np.float32)
            for key, (shape, _) in ARCHITECTURES.get("mlp").expected_state(request.arch_config).items()
        }
    with pytest.raises(InvalidInputError, match=message):
        execute(request)


@pytest.mark.parametrize(
    ("architecture", "config"),
    [("small_cnn", {}), ("resnet18", {"width": 8})],
)
def test_convolutional_models_prune_only_conv_weights(architecture: str, config: dict[str, Any]) -> None:
    spec = ARCHITECTURES.get(architecture)
    model = build_model(architecture, spec.parse_config(config))
    names = prunable_parameters(model)
    conv_names = {
        f"{name}.weight" for name, module in model.named_modules() if type(module).__name__ == "Conv2d"
    }
    assert names and set(names) == conv_names
    assert not any("bn" in name or name.startswith("head") or name.startswith("fc") for name in names)
