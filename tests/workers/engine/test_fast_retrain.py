"""The speed-run recipe and architecture (issue 20): recipe fields that leave every existing recipe alone,
the whitening initialisation, exact retraining (bit for bit against a run on the retain set alone),
determinism, resumption with lookahead, and the audits' shadow training with it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load

from workers.engine.architectures.build import build_model, state_to_numpy
from workers.engine.architectures.speedrun import SpeedrunCNN
from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.hooks import RecordingHooks
from workers.engine.methods.params import SPEEDRUN_RECIPE, TrainParams, TrainRecipe
from workers.engine.task_types import TaskType
from workers.engine.training import crop_padding, fit, learning_rate, task_loss_of
from workers.engine.vectorised import train_models

# Scaled down for a CPU: 16 x 16 images, narrow blocks, a few epochs (the recipe is otherwise the base's).
CONFIG: dict[str, Any] = {"widths": [8, 16, 16]}
RECIPE: dict[str, Any] = {"base": "speedrun", "epochs": 3, "batch_size": 64, "lr": 0.1}
SEED = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def images() -> ArrayDataset:
    return build_dataset("procedural", {"n_train": 240, "n_test": 60, "image_size": 16})


@pytest.fixture(scope="module")
def forget() -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(240, size=24, replace=False)).astype(np.int64)


def _request(dataset: ArrayDataset, **overrides: Any) -> EngineRequest:
    fields: dict[str, Any] = {
        "kind": "train",
        "method": "train",
        "params": {"recipe": RECIPE},
        "seed": SEED,
        "device": "cpu",
        "dataset": dataset,
        "architecture": "speedrun_cnn",
        "arch_config": CONFIG,
    }
    return EngineRequest(**{**fields, **overrides})


def _retain_only(dataset: ArrayDataset, forget: np.ndarray) -> ArrayDataset:
    keep = np.setdiff1d(np.arange(dataset.n_train), forget)
    return dataclasses.replace(dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep])


def _same_weights(first: EngineResult, second: EngineResult) -> bool:
    assert first.weights is not None and second.weights is not None
    return first.weights.keys() == second.weights.keys() and all(
        np.array_equal(first.weights[key], second.weights[key]) for key in first.weights
    )


# ------------------------------------------------------------------------------------------------ recipe
def test_existing_recipes_dump_exactly_as_before() -> None:
    # Recipes feed content hashes (retrain cache, shadow keys) and checkpoints: their JSON must not change.
    assert TrainRecipe().model_dump(mode="json") == {
        "epochs": 182,
        "batch_size": 256,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "multistep",
        "milestones": [0.5, 0.75],
        "gamma": 0.1,
        "augment": True,
        "optimizer": "sgd",
    }
    assert TrainRecipe().loop_extensions() == []


def test_the_speedrun_base_expands_and_round_trips() -> None:
    recipe = TrainRecipe.model_validate({"base": "speedrun", "epochs": 4})
    dumped = recipe.model_dump(mode="json")
    assert dumped == {**TrainRecipe().model_dump(mode="json"), **SPEEDRUN_RECIPE, "epochs": 4}
    assert "base" not in dumped and TrainRecipe.model_validate(dumped) == recipe
    assert TrainParams.model_validate({"recipe": {"base": "speedrun"}}).recipe.whiten is True
    with pytest.raises(ValidationError, match="unknown recipe base"):
        TrainRecipe.model_validate({"base": "fastest"})
    with pytest.raises(ValidationError, match="nesterov needs momentum"):
        TrainRecipe(nesterov=True, momentum=0.0)
    with pytest.raises(ValidationError, match="label_smoothing"):
        TrainRecipe(label_smoothing=1.0)


def test_warmup_linear_schedule_rises_then_falls_to_zero() -> None:
    recipe = TrainRecipe(schedule="warmup_linear", warmup=0.25, lr=2.0, epochs=1)
    rates = [learning_rate(recipe, 0, step, 100) for step in range(100)]
    peak = int(np.argmax(rates))
    assert peak in (24, 25) and max(rates) == pytest.approx(2.0, rel=0.03)
    assert all(np.diff(rates[: peak + 1]) > 0) and all(np.diff(rates[peak:]) < 0)
    assert 0.0 < rates[0] < 0.05 and 0.0 < rates[-1] < 0.02


def test_translate_label_smoothing_and_nesterov_reach_the_loop() -> None:
    inputs = torch.zeros(4, 3, 32, 32)
    assert crop_padding(TrainRecipe(), inputs) == 4  # the reference's size / 8
    assert crop_padding(TrainRecipe(translate=2), inputs) == 2
    assert crop_padding(TrainRecipe(translate=2, augment=False), inputs) is None
    logits, labels = torch.randn(5, 10), torch.arange(5)
    classification, regression = TaskType.classification, TaskType.regression
    smoothed = task_loss_of(classification, TrainRecipe(label_smoothing=0.2))(logits, labels)
    assert torch.equal(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert torch.equal(
        task_loss_of(classification, TrainRecipe())(logits, labels), F.cross_entropy(logits, labels)
    )
    assert task_loss_of(regression, TrainRecipe(label_smoothing=0.2)) is F.l1_loss


# ------------------------------------------------------------------------------------------- architecture
def test_whitening_makes_the_training_patches_white(images: ArrayDataset) -> None:
    torch.manual_seed(0)
    model = build_model("speedrun_cnn", CONFIG)
    assert isinstance(model, SpeedrunCNN)
    inputs = torch.from_numpy(images.x_train)
    model.initialise_from_data(inputs)
    with torch.no_grad():
        outputs = model.whiten(inputs)  # [N, 24, H - 1, W - 1]: 12 directions and their negations
    directions = outputs[:, :12].transpose(0, 1).reshape(12, -1).double()
    assert torch.allclose(outputs[:, 12:], -outputs[:, :12], atol=1e-4)
    assert torch.allclose(directions.mean(dim=1), torch.zeros(12, dtype=torch.float64), atol=1e-4)
    # Unit variance up to the eps added to every eigenvalue (5e-4 of the mean one).
    assert torch.allclose(torch.cov(directions), torch.eye(12, dtype=torch.float64), atol=0.05)


def test_eval_mode_averages_the_logits_of_each_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = build_model("speedrun_cnn", CONFIG).eval()
    inputs = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        logits = model(inputs)
        model.tta_flip = False
        plain, mirrored = model(inputs), model(inputs.flip(-1))
    assert torch.allclose(logits, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(plain, mirrored)


# ------------------------------------------------------------------------------------------- exactness
def test_retrain_equals_training_on_the_retain_set_alone_bit_for_bit(
    images: ArrayDataset, forget: np.ndarray
) -> None:
    original = execute(_request(images))
    retrain = _request(
        images,
        kind="retrain",
        method="retrain",
        params={},
        original_recipe=original.details["params"]["recipe"],
        forget_indices=forget,
    )
    retrained = execute(retrain)
    assert retrained.details["params"]["recipe_source"] == "original"
    assert retrained.details["params"]["recipe"]["whiten"] is True and retrained.details["whitened"] is True
    alone = execute(_request(_retain_only(images, forget)))
    assert _same_weights(retrained, alone)
    # Nothing of the forget set is read: replacing its images and labels (which would move the whitening,
    # the batches and so the weights) leaves the retrain's weights unchanged.
    images_changed, labels_changed = images.x_train.copy(), images.y_train.copy()
    images_changed[forget] = 1e3
    labels_changed[forget] = (labels_changed[forget] + 1) % images.num_classes
    corrupted = dataclasses.replace(images, x_train=images_changed, y_train=labels_changed)
    assert _same_weights(execute(dataclasses.replace(retrain, dataset=corrupted)), retrained)


def test_same_seed_same_weights_and_metrics_other_seed_other_weights(images: ArrayDataset) -> None:
    first, second = execute(_request(images)), execute(_request(images))
    assert _same_weights(first, second) and first.metrics == second.metrics
    assert first.details["whitened"] is True and first.details["augment_applied"] is True
    other = execute(_request(images, seed=SEED + 1))
    assert other.weights is not None and first.weights is not None
    assert not np.array_equal(other.weights["head.weight"], first.weights["head.weight"])


def test_resuming_with_lookahead_gives_the_uninterrupted_weights(images: ArrayDataset) -> None:
    recipe = TrainRecipe.model_validate({**RECIPE, "lookahead_steps": 3})
    inputs, labels = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(SEED)
        return build_model("speedrun_cnn", CONFIG)

    uninterrupted, hooks = fresh(), RecordingHooks()
    fit(uninterrupted, inputs, labels, recipe, seed=SEED, phase="train", hooks=hooks)
    resumed = fresh()
    result = fit(
        resumed, inputs, labels, recipe, seed=SEED, phase="train", resume=hooks.checkpoints[("train", 1)]
    )
    assert result.resumed_from_epoch == 1 and not result.whitened  # the checkpoint holds the whitening
    expected, actual = uninterrupted.state_dict(), resumed.state_dict()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_lookahead_changes_the_result_and_is_checkpointed(images: ArrayDataset) -> None:
    inputs, labels = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    states = []
    for steps in (0, 3):
        torch.manual_seed(SEED)
        model = build_model("speedrun_cnn", CONFIG)
        hooks = RecordingHooks()
        recipe = TrainRecipe.model_validate({**RECIPE, "lookahead_steps": steps})
        fit(model, inputs, labels, recipe, seed=SEED, phase="train", hooks=hooks)
        states.append(model.state_dict()["head.weight"])
        saved = load(hooks.checkpoints[("train", recipe.epochs)])
        assert any(key.startswith("lookahead/") for key in saved) == (steps > 0)
    assert not torch.equal(states[0], states[1])


# ------------------------------------------------------------------------------------- audit shadows
def test_shadow_training_with_the_fast_recipe_is_sequential_fit_bit_for_bit(images: ArrayDataset) -> None:
    inputs, labels = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    recipe = TrainRecipe.model_validate({**RECIPE, "epochs": 2})
    subsets = [np.arange(0, 200, dtype=np.int64), np.arange(40, 240, 2, dtype=np.int64)]
    calls: list[tuple[int, int]] = []
    states = train_models(
        "speedrun_cnn",
        CONFIG,
        inputs,
        labels,
        subsets,
        recipe,
        [7, 8],
        progress=lambda done, total: calls.append((done, total)),
    )
    for subset, seed, state in zip(subsets, (7, 8), states, strict=True):
        torch.manual_seed(seed)
        model = build_model("speedrun_cnn", CONFIG)
        rows = torch.from_numpy(subset)
        fit(model, inputs[rows], labels[rows], recipe, seed=seed, phase="shadow")
        expected = state_to_numpy(model)
        assert all(np.array_equal(expected[key], state[key]) for key in expected)
    assert calls[-1][0] == calls[-1][1] == 2 * (4 + 2)  # (4 + 2 batches of 64) x 2 epochs, all counted


def test_plain_recipes_on_the_speedrun_network_stay_vectorised(images: ArrayDataset) -> None:
    inputs, labels = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    recipe = TrainRecipe(epochs=1, batch_size=64, lr=0.05, schedule="warmup_linear", translate=2)
    subsets = [np.arange(0, 128, dtype=np.int64), np.arange(100, 228, dtype=np.int64)]
    states = train_models("speedrun_cnn", CONFIG, inputs, labels, subsets, recipe, [1, 2])
    for subset, seed, state in zip(subsets, (1, 2), states, strict=True):
        torch.manual_seed(seed)
        model = build_model("speedrun_cnn", CONFIG)
        rows = torch.from_numpy(subset)
        fit(model, inputs[rows], labels[rows], recipe, seed=seed, phase="shadow")
        expected = state_to_numpy(model)
        # The batched (vmap) step: equal up to float rounding, not bit for bit.
        assert all(np.allclose(expected[key], state[key], atol=1e-4) for key in expected)
