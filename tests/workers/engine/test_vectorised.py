"""Vectorised multi-model training: equality with sequential ``fit``, BatchNorm, idle models, prediction,
validation, progress and cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save
from sklearn.datasets import load_digits

from workers.engine import vectorised
from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, load_weights, state_to_numpy
from workers.engine.errors import InvalidInputError, JobCancelled
from workers.engine.execute import predict_logits
from workers.engine.methods.params import TrainRecipe
from workers.engine.training import batch_bounds, fit
from workers.engine.vectorised import predict_models, train_models

MLP_CONFIG: dict[str, Any] = {"input_shape": [1, 8, 8], "hidden": [32, 16], "num_classes": 10}
CNN_CONFIG: dict[str, Any] = {"in_channels": 1, "image_size": 8, "channels": [8, 16], "num_classes": 10}
RECIPE = TrainRecipe(epochs=2, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
# Unequal sizes: 5, 4, 3 and 2 steps per epoch (130 = 2 batches + a trailing 2; 129 would drop its last
# sample), so the smaller models sit idle at the end of every epoch.
SUBSET_SIZES = (300, 251, 130, 65)
SEEDS = (11, 12, 13, 14)
# Batched kernels sum in another order than the per-model ones: float rounding only (measured ~1e-8 for the
# MLP, ~5e-7 for the CNN with BatchNorm after two epochs).
MLP_ATOL = 1e-5
CNN_ATOL = 1e-4
PIXEL_NOISE = 0.05  # breaks the exact max-pool ties of digits' blank background (see _digits)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP oversubscription on a shared CPU (10x+ slower otherwise)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits in [0, 1] plus a little fixed noise: blank pixels are otherwise exactly equal,
    and a max-pool over exact ties routes its gradient by rounding noise, which makes any two
    implementations (or two thread counts) drift apart for reasons unrelated to what is tested here."""
    data = load_digits()
    noise = np.random.default_rng(0).random(data.images.shape) * PIXEL_NOISE
    images = (data.images / 16.0 + noise).astype(np.float32)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(data.target.astype(np.int64))


def _subsets(sample_count: int, sizes: tuple[int, ...] = SUBSET_SIZES) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [np.sort(rng.choice(sample_count, size=size, replace=False)).astype(np.int64) for size in sizes]


def _fit_state(
    architecture: str,
    config: dict[str, Any],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: np.ndarray,
    recipe: TrainRecipe,
    seed: int,
) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    model = build_model(architecture, config)
    index = torch.from_numpy(subset)
    fit(model, inputs[index], labels[index], recipe, seed=seed, phase="reference")
    return state_to_numpy(model)


def _assert_states_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float) -> None:
    assert list(actual) == list(expected)  # same keys in state_dict order
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
        if value.dtype.kind == "i":
            assert np.array_equal(actual[key], value), key
        else:
            np.testing.assert_allclose(actual[key], value, rtol=0, atol=atol, err_msg=key)


# ------------------------------------------------------------------------------- equality with fit
def test_mlps_with_unequal_subsets_match_fit(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    subsets = _subsets(len(labels))
    states = train_models("mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, SEEDS)
    assert len(states) == len(SEEDS)
    # The smaller models are idle in the last steps of epoch 1; any update then (momentum decay, weight
    # decay) would show in epoch 2, so equality with fit also checks that idle models stay untouched.
    for subset, seed, state in zip(subsets, SEEDS, states, strict=True):
        _assert_states_close(
            state, _fit_state("mlp", MLP_CONFIG, inputs, labels, subset, RECIPE, seed), MLP_ATOL
        )


def test_chunks_give_the_same_models(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    subsets = _subsets(len(labels))[:3]
    together = train_models("mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, SEEDS[:3])
    chunked = train_models("mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, SEEDS[:3], chunk_size=2)
    for first, second in zip(together, chunked, strict=True):
        _assert_states_close(first, second, MLP_ATOL)


def test_augmented_mlps_match_fit() -> None:
    """Crop + flip (16 x 16 images) through the same plan_epoch draws as fit; multistep schedule, no WD."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(90, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 4, (90,), generator=generator)
    config = {"input_shape": [3, 16, 16], "hidden": [24], "num_classes": 4}
    recipe = TrainRecipe(
        epochs=2,
        batch_size=16,
        lr=0.05,
        weight_decay=0.0,
        schedule="multistep",
        milestones=[0.5],
        augment=True,
    )
    subsets = [np.arange(0, 70), np.arange(20, 90, 2)]
    states = train_models("mlp", config, inputs, labels, subsets, recipe, [3, 4])
    for subset, seed, state in zip(subsets, [3, 4], states, strict=True):
        _assert_states_close(state, _fit_state("mlp", config, inputs, labels, subset, recipe, seed), MLP_ATOL)


@pytest.mark.parametrize("hand_batched", [True, False], ids=["hand-batched", "vmap"])
def test_batchnorm_cnns_match_fit(
    digits: tuple[torch.Tensor, torch.Tensor], hand_batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """small_cnn (BatchNorm) through the hand-batched path and through the generic vmap path (the one
    resnet18 takes): weights, running statistics, num_batches_tracked and eval predictions."""
    monkeypatch.setattr(vectorised, "HAND_BATCHED", hand_batched)
    inputs, labels = digits
    subsets = _subsets(len(labels))
    states = train_models("small_cnn", CNN_CONFIG, inputs, labels, subsets, RECIPE, SEEDS)
    predictions = predict_models("small_cnn", CNN_CONFIG, states, inputs[:200])
    for index, (subset, seed, state) in enumerate(zip(subsets, SEEDS, states, strict=True)):
        expected = _fit_state("small_cnn", CNN_CONFIG, inputs, labels, subset, RECIPE, seed)
        # Idle steps must not count as BatchNorm batches either: fit's count is epochs x own steps.
        steps = RECIPE.epochs * len(batch_bounds(len(subset), RECIPE.batch_size))
        assert int(state["blocks.0.bn.num_batches_tracked"]) == steps
        # The shadow store saves these with safetensors, which needs arrays (a 0-d one here), not scalars.
        assert all(isinstance(value, np.ndarray) for value in state.values())
        save(state)
        _assert_states_close(state, expected, CNN_ATOL)
        reference = build_model("small_cnn", CNN_CONFIG)
        reference.load_state_dict({key: torch.from_numpy(value) for key, value in expected.items()})
        np.testing.assert_allclose(predictions[index], predict_logits(reference, inputs[:200]), atol=CNN_ATOL)


def test_dropout_masks_differ_per_model_and_runs_are_reproducible(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    inputs, labels = digits
    config = {**MLP_CONFIG, "dropout": 0.5}
    subset = _subsets(len(labels))[0]
    recipe = RECIPE.model_copy(update={"epochs": 1})
    # Same seed and subset twice: identical init and batch order, so only the dropout masks can differ.
    first, second = train_models("mlp", config, inputs, labels, [subset, subset], recipe, [5, 5])
    assert not np.array_equal(first["head.weight"], second["head.weight"])
    again = train_models("mlp", config, inputs, labels, [subset, subset], recipe, [5, 5])
    _assert_states_close(again[0], first, atol=0.0)


def test_cuda_image_layout_keeps_the_values() -> None:
    """The vmap path's CUDA layout (stored [W, H, W, K, C]) is a pure memory-order change."""
    batch = torch.arange(2 * 3 * 4 * 5 * 6, dtype=torch.float32).view(2 * 3, 4, 5, 6)
    plain = vectorised._vmap_layout(batch, 2, channels_last=False)
    stored = vectorised._vmap_layout(batch, 2, channels_last=True)
    assert plain.shape == stored.shape == (2, 3, 4, 5, 6) and torch.equal(plain, stored)
    # Folding the model dim into the channels, as vmap's conv rule does, is a view in channels_last order.
    folded = stored.permute(1, 0, 2, 3, 4).reshape(3, 2 * 4, 5, 6)
    assert folded.is_contiguous(memory_format=torch.channels_last)
    assert folded.data_ptr() == stored.data_ptr()


# -------------------------------------------------------------------------------------- prediction
def test_predict_models_equals_per_model_eval_predictions(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    recipe = RECIPE.model_copy(update={"epochs": 1})
    states = train_models(
        "small_cnn", CNN_CONFIG, inputs, labels, _subsets(len(labels))[:3], recipe, SEEDS[:3]
    )
    outputs = predict_models("small_cnn", CNN_CONFIG, states, inputs[:130], batch_size=50, chunk_size=2)
    assert outputs.shape == (3, 130, 10) and outputs.dtype == np.float64
    expected_shapes = ARCHITECTURES.get("small_cnn").expected_state(CNN_CONFIG)
    for state, output in zip(states, outputs, strict=True):
        model = build_model("small_cnn", CNN_CONFIG)
        load_weights(model, state, expected_shapes)  # the returned format is what load_weights takes
        np.testing.assert_allclose(output, predict_logits(model, inputs[:130]), rtol=0, atol=1e-5)
    assert predict_models("small_cnn", CNN_CONFIG, [], inputs[:7]).shape == (0, 7, 10)


def test_predict_models_rejects_foreign_weights(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.manual_seed(0)
    state = state_to_numpy(build_model("mlp", MLP_CONFIG))
    with pytest.raises(InvalidInputError, match="weights do not match"):
        predict_models("small_cnn", CNN_CONFIG, [state], digits[0][:4])


# -------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("subsets", "seeds", "message"),
    [
        ([np.arange(10)], [1, 2], "one seed per model"),
        ([np.arange(10), np.array([], dtype=np.int64)], [1, 2], "subset 1 has 0 samples"),
        ([np.array([0, 5, 1797])], [1], "outside"),
        ([np.array([-1, 3])], [1], "outside"),
        ([np.arange(10).reshape(2, 5)], [1], "1-D array of integer"),
        ([np.linspace(0, 9, 10)], [1], "1-D array of integer"),
    ],
)
def test_bad_inputs_are_rejected(
    digits: tuple[torch.Tensor, torch.Tensor], subsets: list[np.ndarray], seeds: list[int], message: str
) -> None:
    inputs, labels = digits
    with pytest.raises(InvalidInputError, match=message):
        train_models("mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, seeds)


def test_other_bad_arguments_are_rejected(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    subsets, seeds = [np.arange(10)], [1]
    with pytest.raises(InvalidInputError, match="chunk_size"):
        train_models("mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, seeds, chunk_size=0)
    with pytest.raises(InvalidInputError, match="labels hold"):
        train_models("mlp", MLP_CONFIG, inputs, labels[:-1], subsets, RECIPE, seeds)
    with pytest.raises(InvalidInputError, match="BatchNorm needs two samples"):
        train_models("small_cnn", CNN_CONFIG, inputs, labels, [np.array([4])], RECIPE, seeds)
    with pytest.raises(InvalidInputError, match="invalid mlp config"):
        train_models("mlp", {"hidden": [4]}, inputs, labels, subsets, RECIPE, seeds)
    assert train_models("mlp", MLP_CONFIG, inputs, labels, [], RECIPE, []) == []


def test_divergence_is_reported(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    recipe = TrainRecipe(epochs=2, batch_size=32, lr=10.0, momentum=0.9, schedule="constant", augment=False)
    with pytest.raises(InvalidInputError, match="diverged in epoch"):
        train_models("mlp", MLP_CONFIG, inputs * 1e4, labels, _subsets(len(labels))[:2], recipe, SEEDS[:2])


# ----------------------------------------------------------------------------- progress and cancel
def test_progress_reports_every_step_over_all_chunks(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    subsets = _subsets(len(labels))  # 5, 4, 3, 2 steps per epoch
    calls: list[tuple[int, int]] = []
    train_models(
        "mlp", MLP_CONFIG, inputs, labels, subsets, RECIPE, SEEDS, chunk_size=2,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    total = RECIPE.epochs * (5 + 3)  # chunk 1 steps as its 5-step member, chunk 2 as its 3-step one
    assert calls == [(step, total) for step in range(1, total + 1)]


def test_an_exception_from_progress_stops_training(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    inputs, labels = digits
    calls: list[int] = []

    def cancel_at_third(done: int, total: int) -> None:
        calls.append(done)
        if done == 3:
            raise JobCancelled("stop")

    with pytest.raises(JobCancelled):
        train_models(
            "mlp", MLP_CONFIG, inputs, labels, _subsets(len(labels)), RECIPE, SEEDS, progress=cancel_at_third
        )
    assert calls == [1, 2, 3]
