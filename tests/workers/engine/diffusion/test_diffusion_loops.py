"""Training loops and entry points: determinism on CPU, progress / cancel, checkpoint resume, shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.diffusion import api
from workers.engine.diffusion.params import (
    ClassifierParams,
    DDPMTrainParams,
    DiffusionModelConfig,
    GenerativeEvalParams,
    SampleParams,
    SFDParams,
)
from workers.engine.errors import EngineError, InvalidInputError, JobCancelled
from workers.engine.hooks import RecordingHooks

TINY_DDPM = DDPMTrainParams(steps=6, batch_size=8, checkpoint_every=3)
TINY_SFD = SFDParams(steps=4, batch_size=4, checkpoint_every=2)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def tiny_teacher(digits: ArrayDataset, tiny_config: DiffusionModelConfig) -> api.DDPMTrainResult:
    return api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=0)


def test_ddpm_training_is_deterministic_on_cpu(
    digits: ArrayDataset, tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult
) -> None:
    again = api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=0)
    assert _same(again.weights, tiny_teacher.weights)
    assert _same(again.raw_weights, tiny_teacher.raw_weights)
    other = api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=1)
    assert not _same(other.weights, tiny_teacher.weights)
    # EMA (the released teacher) and the optimised weights differ.
    assert not _same(tiny_teacher.weights, tiny_teacher.raw_weights)


def test_ddpm_resume_reproduces_the_uninterrupted_run(
    digits: ArrayDataset, tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult
) -> None:
    hooks = RecordingHooks()
    api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=0, hooks=hooks)
    assert set(hooks.checkpoints) == {("ddpm_train", 3), ("ddpm_train", 6)}
    steps = [call[1] for call in hooks.progress_calls]
    assert steps == list(range(1, 7)) and all(call[2] == 6 for call in hooks.progress_calls)
    resumed = api.train_ddpm(
        digits, TINY_DDPM, config=tiny_config, seed=0, resume=hooks.checkpoints[("ddpm_train", 3)]
    )
    assert resumed.resumed_from_step == 3
    assert _same(resumed.weights, tiny_teacher.weights)
    assert _same(resumed.raw_weights, tiny_teacher.raw_weights)
    blob = hooks.checkpoints[("ddpm_train", 3)]
    with pytest.raises(EngineError, match="does not belong"):
        api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=1, resume=blob)
    wider = tiny_config.model_copy(update={"base_channels": 16})
    with pytest.raises(EngineError, match="does not belong"):
        api.train_ddpm(digits, TINY_DDPM, config=wider, seed=0, resume=blob)


class CancelAt(RecordingHooks):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        super().progress(phase, step, total, info)
        if step == self.step:
            raise JobCancelled("cancelled by the user")


def test_progress_hook_cancels_training_and_sfd(
    digits: ArrayDataset, tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult
) -> None:
    hooks = CancelAt(2)
    with pytest.raises(JobCancelled):
        api.train_ddpm(digits, TINY_DDPM, config=tiny_config, seed=0, hooks=hooks)
    assert len(hooks.progress_calls) == 2
    hooks = CancelAt(1)
    with pytest.raises(JobCancelled):
        api.run_sfd(tiny_teacher.weights, tiny_config, TINY_SFD, digits.y_train, seed=0, hooks=hooks)
    assert [call[0] for call in hooks.progress_calls] == ["sfd"]


def test_sfd_is_deterministic_and_resumable(
    digits: ArrayDataset, tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult
) -> None:
    hooks = RecordingHooks()
    first = api.run_sfd(tiny_teacher.weights, tiny_config, TINY_SFD, digits.y_train, seed=0, hooks=hooks)
    again = api.run_sfd(tiny_teacher.weights, tiny_config, TINY_SFD, digits.y_train, seed=0)
    assert _same(first.weights, again.weights) and _same(first.fake_weights, again.fake_weights)
    resumed = api.run_sfd(
        tiny_teacher.weights,
        tiny_config,
        TINY_SFD,
        digits.y_train,
        seed=0,
        resume=hooks.checkpoints[("sfd", 2)],
    )
    assert _same(resumed.weights, first.weights)
    assert _same(resumed.raw_weights, first.raw_weights)
    assert _same(resumed.fake_weights, first.fake_weights)
    record = first.history[-1]
    assert record["step"] == 4
    assert {"fake_remain_loss", "fake_forget_loss", "generator_remain_loss", "generator_forget_loss"} <= set(
        record
    )
    # The control runs through the same loop and never computes a forget term.
    control = api.run_sfd(tiny_teacher.weights, tiny_config, TINY_SFD.distill_only(), digits.y_train, seed=0)
    assert (
        control.history[-1]["fake_forget_loss"] == 0.0 and control.history[-1]["generator_forget_loss"] == 0.0
    )
    assert not _same(control.weights, first.weights)


def test_gold_teacher_never_sees_the_excluded_class(
    digits: ArrayDataset, tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult
) -> None:
    gold_params = TINY_DDPM.model_copy(update={"exclude_classes": [0]})
    gold = api.train_ddpm(digits, gold_params, config=tiny_config, seed=0)
    without_zero = ArrayDataset(
        x_train=digits.x_train[digits.y_train != 0],
        y_train=digits.y_train[digits.y_train != 0],
        x_test=digits.x_test,
        y_test=digits.y_test,
        num_classes=digits.num_classes,
        task=digits.task,
        input_shape=digits.input_shape,
    )
    explicit = api.train_ddpm(without_zero, TINY_DDPM, config=tiny_config, seed=0)
    assert _same(gold.weights, explicit.weights)
    assert not _same(gold.weights, tiny_teacher.weights)


def test_sampling_entry_points(tiny_config: DiffusionModelConfig, tiny_teacher: api.DDPMTrainResult) -> None:
    params = SampleParams(steps=4, guidance_scale=0.5)
    samples = api.sample_images(tiny_teacher.weights, tiny_config, [3, 5], 2, params, seed=0)
    assert samples.images.shape == (4, 1, 8, 8) and samples.images.dtype == np.float32
    assert samples.labels.tolist() == [3, 3, 5, 5]
    assert samples.nfe_per_sample == 8
    assert samples.images.min() >= 0.0 and samples.images.max() <= 1.0
    again = api.sample_images(tiny_teacher.weights, tiny_config, [3, 5], 2, params, seed=0)
    np.testing.assert_array_equal(samples.images, again.images)
    one_step = api.sample_generator(tiny_teacher.weights, tiny_config, [1], 3, seed=0)
    assert one_step.images.shape == (3, 1, 8, 8) and one_step.nfe_per_sample == 1
    with pytest.raises(InvalidInputError):
        api.sample_images(tiny_teacher.weights, tiny_config, [10], 1, params, seed=0)


def test_default_model_configs_for_procedural_images() -> None:
    dataset = build_dataset(
        "procedural", {"n_train": 40, "n_test": 10, "image_size": 16, "channels": 3, "num_classes": 4}
    )
    config = api.default_model_config(dataset, base_channels=8, norm_groups=4)
    assert (config.image_channels, config.image_size, config.num_classes) == (3, 16, 4)
    assert config.channel_mults == [1, 2, 2]
    result = api.train_ddpm(dataset, DDPMTrainParams(steps=2, batch_size=4), config=config, seed=0)
    samples = api.sample_images(result.weights, config, [0, 3], 1, SampleParams(steps=2), seed=0)
    assert samples.images.shape == (2, 3, 16, 16)
    png = api.grid_png(samples.images, 1)
    assert png.startswith(b"\x89PNG")
    with pytest.raises(InvalidInputError, match="does not match"):
        api.train_ddpm(dataset, DDPMTrainParams(steps=1), config=DiffusionModelConfig(), seed=0)


def test_evaluation_pipeline_on_the_teacher(digits: ArrayDataset, tiny_teacher: api.DDPMTrainResult) -> None:
    classifier = api.train_metric_classifier(digits, ClassifierParams(epochs=1), seed=0)
    samples = api.sample_for_evaluation(
        tiny_teacher.weights,
        tiny_teacher.config,
        GenerativeEvalParams(samples_per_class=3, forget_samples=5),
        forget_class=0,
        t_init=440,
        seed=0,
    )
    assert np.sum(samples.labels == 0) == 5 and samples.labels.shape == (9 * 3 + 5,)
    metrics = api.evaluate_generative(
        samples, classifier, digits.x_train, digits.y_train, forget_class=0, override_class=1
    )
    assert metrics["nfe_per_sample"] == 1.0
    assert metrics["ua"] == pytest.approx(1.0 - metrics["forget_generation_rate"])
    assert {f"fd.{cls}" for cls in range(1, 10)} <= set(metrics)
    assert all(np.isfinite(value) for value in metrics.values())
