from __future__ import annotations

import json
import math
from typing import Any

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from workers.engine.architectures.build import build_model
from workers.engine.checkpoints import metadata_of as checkpoint_metadata
from workers.engine.datasets import build_dataset
from workers.engine.errors import EngineError, InvalidInputError
from workers.engine.hooks import RecordingHooks
from workers.engine.methods.params import FinetuneParams, TrainRecipe
from workers.engine.training import (
    augmentation_applies,
    batch_bounds,
    crop_and_flip,
    fit,
    learning_rate,
)

EPOCHS = 3
IMAGE_RECIPE = TrainRecipe(epochs=EPOCHS, batch_size=16, lr=0.05, schedule="cosine", augment=True)
IMAGE_CONFIG = {"in_channels": 3, "image_size": 16, "channels": [8, 16], "num_classes": 4}
MLP_CONFIG = {"input_shape": [3, 16, 16], "hidden": [32], "num_classes": 4, "dropout": 0.3}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset("procedural", {"n_train": 70, "n_test": 10, "image_size": 16, "num_classes": 4})
    return torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)


def _fresh(name: str, config: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(123)
    return build_model(name, config)


def _assert_same_state(first: torch.nn.Module, second: torch.nn.Module) -> None:
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key in first_state:
        assert torch.equal(first_state[key], second_state[key]), key


def _without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


def test_batch_bounds() -> None:
    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4) == [(0, 4), (4, 8)]  # lone trailing sample skipped (BatchNorm)
    assert batch_bounds(1, 4) == [(0, 1)]
    assert batch_bounds(5, 5) == [(0, 5)]


def test_learning_rate_schedules() -> None:
    multistep = TrainRecipe()  # reference: x0.1 at epochs 91 and 136 of 182
    assert learning_rate(multistep, 90, 0, 1) == pytest.approx(0.1)
    assert learning_rate(multistep, 91, 0, 1) == pytest.approx(0.01)
    assert learning_rate(multistep, 136, 0, 1) == pytest.approx(0.001)
    cosine = TrainRecipe(schedule="cosine", lr=0.2)
    assert learning_rate(cosine, 0, 0, 100) == pytest.approx(0.2)
    assert learning_rate(cosine, 0, 50, 100) == pytest.approx(0.1)
    assert learning_rate(cosine, 0, 100, 100) == pytest.approx(0.0)
    assert learning_rate(FinetuneParams(), 9, 999, 1000) == 0.01


def _naive_crop_and_flip(
    images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, flips: torch.Tensor, padding: int
) -> torch.Tensor:
    height, width = images.shape[-2:]
    out = []
    for image, row, col, flip in zip(images, rows.tolist(), cols.tolist(), flips.tolist(), strict=True):
        crop = F.pad(image, (padding,) * 4)[:, row : row + height, col : col + width]
        out.append(crop.flip(2) if flip else crop)
    return torch.stack(out)


def test_batched_crop_and_flip_matches_per_sample_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(12, 3, 16, 20, generator=generator)
    padding = 2
    rows = torch.randint(0, 2 * padding + 1, (12,), generator=generator)
    cols = torch.randint(0, 2 * padding + 1, (12,), generator=generator)
    flips = torch.rand(12, generator=generator) < 0.5
    expected = _naive_crop_and_flip(batch, rows, cols, flips, padding)
    assert torch.equal(crop_and_flip(batch, rows, cols, flips, padding), expected)
    centre = torch.full((12,), padding)
    no_flip = torch.zeros(12, dtype=torch.bool)
    assert torch.equal(crop_and_flip(batch, centre, centre, no_flip, padding), batch)


def test_augmentation_only_for_large_enough_images() -> None:
    assert augmentation_applies(IMAGE_RECIPE, torch.zeros(2, 3, 16, 16))
    assert not augmentation_applies(IMAGE_RECIPE, torch.zeros(2, 1, 8, 8))
    assert not augmentation_applies(IMAGE_RECIPE, torch.zeros(2, 64))
    assert not augmentation_applies(
        IMAGE_RECIPE.model_copy(update={"augment": False}), torch.zeros(2, 3, 32, 32)
    )


def test_fit_reports_progress_every_step_and_checkpoints_every_epoch(
    images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    inputs, labels = images
    hooks = RecordingHooks()
    result = fit(
        _fresh("small_cnn", IMAGE_CONFIG), inputs, labels, IMAGE_RECIPE, seed=0, phase="train", hooks=hooks
    )
    steps_per_epoch = len(batch_bounds(inputs.shape[0], IMAGE_RECIPE.batch_size))
    total = EPOCHS * steps_per_epoch
    step_calls = [call for call in hooks.progress_calls if not call[3].get("epoch_end")]
    epoch_calls = [call for call in hooks.progress_calls if call[3].get("epoch_end")]
    assert [call[1] for call in step_calls] == list(range(1, total + 1))
    assert all(call[0] == "train" and call[2] == total for call in hooks.progress_calls)
    assert [call[3]["epoch"] for call in epoch_calls] == [1, 2, 3]
    assert all({"loss", "lr", "seconds"} <= set(call[3]) for call in epoch_calls)
    assert sorted(hooks.checkpoints) == [("train", 1), ("train", 2), ("train", 3)]
    assert result.augment_applied and result.steps_per_epoch == steps_per_epoch
    assert [record["epoch"] for record in result.history] == [1, 2, 3]
    assert all(math.isfinite(record["loss"]) for record in result.history)


def test_checkpoint_is_safetensors_with_metadata(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = images
    hooks = RecordingHooks()
    fit(_fresh("small_cnn", IMAGE_CONFIG), inputs, labels, IMAGE_RECIPE, seed=0, phase="train", hooks=hooks)
    blob = hooks.checkpoints[("train", 2)]
    tensors = safetensors.torch.load(blob)  # no pickle anywhere
    assert "model/blocks.0.bn.running_mean" in tensors and "model/head.weight" in tensors
    assert any(key.endswith("momentum_buffer") for key in tensors)
    assert {"rng/generator", "rng/torch_cpu"} <= set(tensors)
    metadata = checkpoint_metadata(blob)
    assert metadata["phase"] == "train" and metadata["epoch"] == "2" and metadata["seed"] == "0"
    assert len(json.loads(metadata["history"])) == 2
    assert TrainRecipe.model_validate_json(metadata["recipe"]) == IMAGE_RECIPE


@pytest.mark.parametrize(
    ("name", "config", "recipe"),
    [
        ("small_cnn", IMAGE_CONFIG, IMAGE_RECIPE),  # augmentation RNG, BN buffers, momentum
        (
            "mlp",
            MLP_CONFIG,
            IMAGE_RECIPE.model_copy(update={"schedule": "multistep", "milestones": [0.5]}),
        ),  # dropout
    ],
)
@pytest.mark.parametrize("resume_epoch", [1, 2])
def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(
    images: tuple[torch.Tensor, torch.Tensor],
    name: str,
    config: dict[str, Any],
    recipe: TrainRecipe,
    resume_epoch: int,
) -> None:
    inputs, labels = images
    hooks = RecordingHooks()
    uninterrupted = _fresh(name, config)
    full = fit(uninterrupted, inputs, labels, recipe, seed=5, phase="train", hooks=hooks)

    torch.manual_seed(999)  # the global RNG state at resume time must not matter
    resumed = _fresh(name, config)
    partial = fit(
        resumed,
        inputs,
        labels,
        recipe,
        seed=5,
        phase="train",
        hooks=RecordingHooks(),
        resume=hooks.checkpoints[("train", resume_epoch)],
    )
    _assert_same_state(uninterrupted, resumed)
    assert partial.resumed_from_epoch == resume_epoch
    assert _without_timing(partial.history) == _without_timing(full.history)


def test_resuming_from_the_last_epoch_just_restores(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = images
    hooks = RecordingHooks()
    trained = _fresh("small_cnn", IMAGE_CONFIG)
    fit(trained, inputs, labels, IMAGE_RECIPE, seed=1, phase="train", hooks=hooks)
    restored = _fresh("small_cnn", IMAGE_CONFIG)
    result = fit(
        restored, inputs, labels, IMAGE_RECIPE, seed=1, phase="train", resume=hooks.checkpoints[("train", 3)]
    )
    _assert_same_state(trained, restored)
    assert len(result.history) == EPOCHS


def test_resume_rejects_a_checkpoint_from_another_run(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = images
    hooks = RecordingHooks()
    fit(_fresh("small_cnn", IMAGE_CONFIG), inputs, labels, IMAGE_RECIPE, seed=1, phase="train", hooks=hooks)
    blob = hooks.checkpoints[("train", 1)]
    other_recipe = IMAGE_RECIPE.model_copy(update={"lr": 0.01})
    with pytest.raises(EngineError, match="recipe"):
        fit(
            _fresh("small_cnn", IMAGE_CONFIG),
            inputs,
            labels,
            other_recipe,
            seed=1,
            phase="train",
            resume=blob,
        )
    with pytest.raises(EngineError, match="phase"):
        fit(_fresh("small_cnn", IMAGE_CONFIG), inputs, labels, IMAGE_RECIPE, seed=1, phase="ft", resume=blob)
    with pytest.raises(EngineError, match="seed"):
        fit(
            _fresh("small_cnn", IMAGE_CONFIG),
            inputs,
            labels,
            IMAGE_RECIPE,
            seed=2,
            phase="train",
            resume=blob,
        )


def test_same_seed_same_weights_other_seed_other_weights(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = images
    runs = []
    for seed in (3, 3, 4):
        model = _fresh("small_cnn", IMAGE_CONFIG)
        fit(model, inputs, labels, IMAGE_RECIPE.model_copy(update={"epochs": 1}), seed=seed, phase="train")
        runs.append(model)
    _assert_same_state(runs[0], runs[1])
    assert not torch.equal(runs[0].state_dict()["head.weight"], runs[2].state_dict()["head.weight"])


def test_training_reduces_loss(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = images
    recipe = IMAGE_RECIPE.model_copy(update={"epochs": 8, "augment": False})
    result = fit(_fresh("small_cnn", IMAGE_CONFIG), inputs, labels, recipe, seed=0, phase="train")
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]


def test_divergence_is_reported_as_a_user_error() -> None:
    inputs = torch.full((8, 4), 1e30)
    labels = torch.tensor([0, 1] * 4)
    model = _fresh("mlp", {"input_shape": [4], "hidden": [], "num_classes": 2})
    recipe = TrainRecipe(epochs=2, batch_size=4, lr=10.0, schedule="constant")
    with pytest.raises(InvalidInputError, match="diverged"):
        fit(model, inputs, labels, recipe, seed=0, phase="train")
