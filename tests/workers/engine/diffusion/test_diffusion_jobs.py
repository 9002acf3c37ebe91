"""Generative requests through the engine's single entry point (``execute``): train a tiny DDPM teacher, then
the gold retrain, SFD, its distil-only control, evaluation and sampling, with the metric classifier cache.

The models are far too small and short-trained to forget anything; these tests check the wiring (what each
request runs, returns and records). That SFD forgets on real data is the slow digits test's job
(test_diffusion_sfd_digits.py)."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest

from workers.engine.datasets import build_dataset
from workers.engine.datasets.arrays import Normalization
from workers.engine.diffusion import api
from workers.engine.diffusion.job_params import GenerativeEvaluation
from workers.engine.diffusion.jobs import _classifier_from_bytes, _classifier_to_bytes, metric_classifier
from workers.engine.diffusion.params import ClassifierParams, DiffusionModelConfig, SampleParams
from workers.engine.errors import InvalidInputError
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.hooks import MemoryCache, RecordingHooks

FORGET_CLASS = 3
TINY = {"base_channels": 8, "channel_mults": [1, 2], "norm_groups": 4}
EVALUATION = {
    "samples": {"samples_per_class": 4, "forget_samples": 8},
    "sampler": {"steps": 4},
    "classifier": {"epochs": 2},
    "grid_per_class": 2,
}
SFD = {"steps": 3, "batch_size": 4, "evaluation": EVALUATION}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits() -> Any:
    return build_dataset("digits")


@pytest.fixture(scope="module")
def teacher(digits: Any) -> EngineResult:
    return execute(
        EngineRequest(
            kind="train",
            method=None,
            params={"steps": 12, "batch_size": 16, "checkpoint_every": 6},
            seed=1,
            device="cpu",
            dataset=digits,
            architecture="unet_ddpm",
            arch_config=TINY,
        ),
        RecordingHooks(),
    )


def request(digits: Any, teacher: EngineResult, **overrides: Any) -> EngineRequest:
    values: dict[str, Any] = {
        "kind": "evaluate",
        "method": None,
        "params": EVALUATION,
        "seed": 2,
        "device": "cpu",
        "dataset": digits,
        "architecture": "unet_ddpm",
        "arch_config": teacher.details["arch_config"],
        "weights": teacher.weights,
        "forget_indices": np.flatnonzero(digits.y_train == FORGET_CLASS).astype(np.int64),
        "forget_class": FORGET_CLASS,
        "original_recipe": teacher.details["params"]["recipe"],
        "dataset_sha256": "digits-test",
    }
    values.update(overrides)
    return EngineRequest(**values)


def test_train_runs_ddpm_and_records_its_recipe(teacher: EngineResult) -> None:
    assert teacher.details["method"] == "ddpm"
    assert teacher.architecture == "unet_ddpm"
    assert teacher.details["params"]["recipe"]["steps"] == 12
    assert teacher.details["params"]["recipe"]["exclude_classes"] == []
    assert np.isfinite(teacher.metrics["final_loss"])
    assert teacher.weights is not None and all(np.isfinite(w).all() for w in teacher.weights.values())
    assert teacher.pngs == {}  # a train job does not evaluate


def test_train_resumes_from_its_step_checkpoint_bit_for_bit(digits: Any, teacher: EngineResult) -> None:
    hooks = RecordingHooks()
    body = {"steps": 12, "batch_size": 16, "checkpoint_every": 6}
    execute(
        EngineRequest(
            kind="train", method=None, params=body, seed=1, device="cpu", dataset=digits,
            architecture="unet_ddpm", arch_config=TINY,
        ),
        hooks,
    )  # fmt: skip
    blob = hooks.checkpoints[("ddpm_train", 6)]
    resumed = execute(
        EngineRequest(
            kind="train", method=None, params=body, seed=1, device="cpu", dataset=digits,
            architecture="unet_ddpm", arch_config=TINY, resume=blob,
        )
    )  # fmt: skip
    assert resumed.details["resumed_from_step"] == 6
    assert resumed.weights is not None and teacher.weights is not None
    for key, value in teacher.weights.items():
        np.testing.assert_array_equal(resumed.weights[key], value)


def test_gold_retrain_excludes_the_forget_class_and_is_scored(digits: Any, teacher: EngineResult) -> None:
    cache = MemoryCache()
    gold = execute(request(digits, teacher, kind="retrain", params={"evaluation": EVALUATION}, cache=cache))
    assert gold.details["method"] == "ddpm_retrain"
    assert gold.details["params"]["recipe"]["exclude_classes"] == [FORGET_CLASS]
    assert gold.details["params"]["recipe"]["steps"] == 12  # the teacher's recipe
    assert gold.architecture == "unet_ddpm"
    for key in ("ua", "forget_generation_rate", "retain_accuracy", "fd_retain", "nfe_per_sample"):
        assert key in gold.metrics, key
    assert gold.metrics["nfe_per_sample"] == 4.0  # 4 DDPM steps, no guidance
    assert gold.metrics["ua"] == pytest.approx(1.0 - gold.metrics["forget_generation_rate"])
    assert gold.pngs["samples"].startswith(PNG_SIGNATURE)
    assert gold.details["metric_classifier_reused"] is False
    assert gold.details["metric_classifier_key"] in cache.entries


def test_sfd_and_its_control_make_one_step_generators(digits: Any, teacher: EngineResult) -> None:
    cache = MemoryCache()
    sfd = execute(request(digits, teacher, kind="unlearn", method="sfd", params=SFD, cache=cache))
    control = execute(request(digits, teacher, kind="unlearn", method="sfd_control", params=SFD, cache=cache))
    for result, is_control in ((sfd, False), (control, True)):
        assert result.architecture == "unet_one_step"
        assert result.arch_config is not None and result.arch_config["t_init"] == 440
        assert result.details["control"] is is_control and result.details["data_free"] is True
        assert result.details["params"]["forget_class"] == FORGET_CLASS  # taken from the forget set
        assert result.metrics["nfe_per_sample"] == 1.0
        assert "override_rate" in result.metrics
    assert sfd.details["params"]["generator_forget_coef"] > 0
    assert control.details["params"]["generator_forget_coef"] == 0
    assert control.metrics["final_generator_forget_loss"] == 0.0
    assert sfd.metrics["final_generator_forget_loss"] != 0.0
    # The second evaluation reused the classifier the first one trained.
    assert cache.hits == 1 and control.details["metric_classifier_reused"] is True


def test_evaluation_is_deterministic_and_samples_generators(digits: Any, teacher: EngineResult) -> None:
    first = execute(request(digits, teacher))
    second = execute(request(digits, teacher))
    assert first.weights is None and first.metrics == second.metrics
    assert first.pngs["samples"] == second.pngs["samples"]
    generator = execute(request(digits, teacher, kind="unlearn", method="sfd", params=SFD))
    drawn = execute(
        request(
            digits,
            teacher,
            kind="sample",
            params={"classes": [4, 1], "n_per_class": 3},
            architecture=generator.architecture,
            arch_config=generator.arch_config,
            weights=generator.weights,
            forget_indices=None,
            forget_class=None,
        )
    )
    images, labels = drawn.arrays["images"], drawn.arrays["labels"]
    assert images.dtype == np.uint8 and images.shape == (6, 1, 8, 8)
    assert labels.tolist() == [4, 4, 4, 1, 1, 1]
    assert drawn.metrics["nfe_per_sample"] == 1.0 and drawn.metrics["n_samples"] == 6.0
    assert drawn.pngs["samples"].startswith(PNG_SIGNATURE)
    buffer = io.BytesIO()
    np.savez(buffer, **drawn.arrays)
    assert buffer.tell() > 0


def test_service_evaluation_draws_exactly_the_engine_apis_samples(digits: Any, teacher: EngineResult) -> None:
    # The figures of bench/diffusion_sfd.py (engine API) must be the figures an evaluate job reports.
    served = execute(request(digits, teacher))
    evaluation = GenerativeEvaluation.model_validate(EVALUATION)
    config = DiffusionModelConfig.model_validate(teacher.details["arch_config"])
    classifier, _ = metric_classifier(
        digits, evaluation.classifier, device="cpu", cache=None, dataset_sha256=None, hooks=RecordingHooks()
    )
    samples = api.sample_for_evaluation(
        teacher.weights,
        config,
        evaluation.samples,
        forget_class=FORGET_CLASS,
        sample_params=evaluation.sampler,
        seed=evaluation.seed,
    )
    direct = api.evaluate_generative(
        samples, classifier, digits.x_train, digits.y_train, forget_class=FORGET_CLASS, override_class=None
    )
    direct.pop("seconds_per_sample")
    assert {key: served.metrics[key] for key in direct} == direct


def test_a_class_draws_the_same_images_whichever_classes_share_the_call(teacher: EngineResult) -> None:
    config = DiffusionModelConfig.model_validate(teacher.details["arch_config"])
    sampler = SampleParams(steps=3)
    both = api.draw_per_class(teacher.weights, config, [2, 5], 3, t_init=None, sampler=sampler, seed=4)
    alone = api.draw_per_class(teacher.weights, config, [5], 3, t_init=None, sampler=sampler, seed=4)
    assert np.array_equal(both.images[both.labels == 5], alone.images)
    chunks: list[tuple[int, int, int]] = []
    api.draw_per_class(
        teacher.weights,
        config,
        [2, 5],
        3,
        t_init=None,
        sampler=sampler,
        seed=4,
        on_chunk=lambda *c: chunks.append(c),
    )
    assert chunks == [(1, 2, 2), (2, 2, 5)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "unlearn", "method": "sfd", "params": SFD, "forget_class": None}, "kind 'class'"),
        ({"kind": "unlearn", "method": "sfd", "params": SFD, "forget_indices": np.array([0, 5])}, "every"),
        ({"kind": "unlearn", "method": "sfd", "params": {**SFD, "forget_class": 4}}, "differs"),
        ({"kind": "unlearn", "method": "sfd", "params": {**SFD, "override_class": 3}}, "override_class"),
        ({"kind": "unlearn", "method": "ft", "params": {}}, "does not support generative"),
        ({"kind": "prune", "method": "prune", "params": {}}, "do not run prune"),
        ({"kind": "sample", "params": {"classes": [12]}, "forget_class": None, "forget_indices": None}, "12"),
        ({"kind": "evaluate", "params": {"bogus": 1}}, "invalid parameters"),
    ],
)
def test_bad_generative_requests_are_refused(
    digits: Any, teacher: EngineResult, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        execute(request(digits, teacher, **overrides))


def test_sfd_needs_a_multi_step_teacher(digits: Any, teacher: EngineResult) -> None:
    generator = execute(request(digits, teacher, kind="unlearn", method="sfd", params=SFD))
    with pytest.raises(InvalidInputError, match="multi-step teacher"):
        execute(
            request(
                digits,
                teacher,
                kind="unlearn",
                method="sfd",
                params=SFD,
                architecture=generator.architecture,
                arch_config=generator.arch_config,
                weights=generator.weights,
            )
        )


def test_metric_classifier_round_trips_through_its_cache_bytes(digits: Any) -> None:
    cache = MemoryCache()
    params = ClassifierParams(epochs=1)
    trained, info = metric_classifier(digits, params, device="cpu", cache=cache, dataset_sha256="d")
    again, info_again = metric_classifier(digits, params, device="cpu", cache=cache, dataset_sha256="d")
    assert info["metric_classifier_reused"] is False and info_again["metric_classifier_reused"] is True
    assert again.test_accuracy == trained.test_accuracy and again.hidden == trained.hidden
    for key, value in trained.weights.items():
        np.testing.assert_array_equal(again.weights[key], value)
    decoded = _classifier_from_bytes(_classifier_to_bytes(trained))
    assert decoded.num_classes == 10 and decoded.channels == 1
    # Another dataset hash or other params: another cache entry.
    metric_classifier(digits, params, device="cpu", cache=cache, dataset_sha256="other")
    assert len(cache.entries) == 2


def test_a_procedural_colour_image_set_trains_and_samples() -> None:
    """The other bundled image set: 3 channels, 16 x 16, 4 classes (a 3-level U-Net)."""
    procedural = build_dataset(
        "procedural", {"n_train": 64, "n_test": 16, "num_classes": 4, "channels": 3, "image_size": 16}
    )
    config = {**TINY, "channel_mults": [1, 2, 2], "num_classes": 4, "image_channels": 3, "image_size": 16}
    teacher = execute(
        EngineRequest(
            kind="train", method=None, params={"steps": 3, "batch_size": 8}, seed=0, device="cpu",
            dataset=procedural, architecture="unet_ddpm", arch_config=config,
        )
    )  # fmt: skip
    drawn = execute(
        EngineRequest(
            kind="sample", method=None, params={"n_per_class": 2, "sampler": {"steps": 3}}, seed=0,
            device="cpu", dataset=procedural, architecture="unet_ddpm", arch_config=config,
            weights=teacher.weights,
        )
    )  # fmt: skip
    assert drawn.arrays["images"].shape == (8, 3, 16, 16)
    assert drawn.metrics["nfe_per_sample"] == 3.0
    with pytest.raises(InvalidInputError, match="shape"):
        execute(
            EngineRequest(
                kind="train", method=None, params={"steps": 1}, seed=0, device="cpu", dataset=procedural,
                architecture="unet_ddpm", arch_config=TINY,  # 1 x 8 x 8, 10 classes: not this dataset
            )
        )  # fmt: skip


def test_uint8_images_reach_diffusion_in_the_unit_range(digits: Any, teacher: EngineResult) -> None:
    # A data_root dataset keeps uint8 pixels (and may carry a classifier normalisation): the generative
    # path scales them to [0, 1] and drops the normalisation, so it scores exactly as the float copy.
    pixels = np.rint(digits.x_train * 255).astype(np.uint8)
    test_pixels = np.rint(digits.x_test * 255).astype(np.uint8)
    as_uint8 = dataclasses.replace(
        digits,
        x_train=pixels,
        x_test=test_pixels,
        normalization=Normalization(mean=(0.5,), std=(0.25,)),
    )
    as_float = dataclasses.replace(
        digits,
        x_train=pixels.astype(np.float32) * np.float32(1 / 255),
        x_test=test_pixels.astype(np.float32) * np.float32(1 / 255),
    )
    served = execute(request(as_uint8, teacher, dataset_sha256=None))
    reference = execute(request(as_float, teacher, dataset_sha256=None))
    assert served.metrics == reference.metrics
