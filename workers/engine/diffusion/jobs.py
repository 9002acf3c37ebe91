"""Generative jobs: the engine request of a ``unet_ddpm`` / ``unet_one_step`` model, run end to end.

:func:`workers.engine.execute.run_method_request` hands a request on a generative architecture to its kind's
``generative_run`` (a field of the kind's registry entry, ``workers.engine.job_kinds``), one of:

- :func:`run_method` (``train`` / ``retrain`` / ``unlearn``): the registered method (``ddpm``,
  ``ddpm_retrain``, ``sfd``, ``sfd_control``: one ``run(context)`` function each below, registered in
  ``workers.engine.methods``), then, when the method asks for it, :func:`evaluate_model` on its output;
- :func:`run_evaluate`: :func:`evaluate_model` on the input model;
- :func:`run_sample`: images (npz arrays) and a PNG grid.

Generative unlearning forgets a class: those jobs need a class forget set. SFD is data-free: it receives the
training labels (for the retained classes' frequencies), never the images. The metric classifier behind the
generative metrics is trained on the real training split with a fixed seed and cached (when the request
brings a cache) under the content hash of the dataset and its params, so every row of a comparison is
scored by the same classifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from workers.engine.architectures import ARCHITECTURES, ArchitectureSpec
from workers.engine.datasets import ArrayDataset
from workers.engine.diffusion import api
from workers.engine.diffusion import sfd as sfd_module
from workers.engine.diffusion.job_params import (
    GENERATOR,
    METRIC_CLASSIFIER_SEED,
    TEACHER,
    DDPMRetrainParams,
    DDPMTrainParams,
    GenerativeEvaluation,
    OneStepGeneratorConfig,
    SampleJobParams,
    SFDJobParams,
)
from workers.engine.diffusion.params import ClassifierParams, DiffusionModelConfig
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import ArtifactCache, EngineHooks, NullHooks
from workers.engine.imports import import_by_path
from workers.engine.job_kinds.spec import JobKindSpec, Presence
from workers.engine.methods import METHODS, MethodSpec
from workers.engine.task_types import TaskType

EVALUATE_PHASE = "evaluate"
SAMPLE_PHASE = "sample"
# The grid is drawn with its own noise, offset from the evaluation's so that it is not a subset of it.
GRID_SEED_OFFSET = 7919
# Bumped when the metric classifier's training changes, so that cached classifiers are not reused.
METRIC_CLASSIFIER_VERSION = 1
UINT8_MAX = 255.0


@dataclass
class GenerativeContext:
    """What a generative method receives (the counterpart of ``methods.base.MethodContext``)."""

    dataset: ArrayDataset
    config: DiffusionModelConfig
    params: BaseModel
    seed: int
    device: str
    hooks: EngineHooks
    weights: dict[str, np.ndarray] | None  # the input model (teacher) for retrain / unlearn
    forget_class: int | None
    original_recipe: dict[str, Any] | None
    resume: bytes | None


@dataclass
class GenerativeOutput:
    weights: dict[str, np.ndarray]
    architecture: str
    config: DiffusionModelConfig
    t_init: int | None  # set for one-step generators
    evaluation: GenerativeEvaluation | None  # how to score the output (None: not scored by this job)
    override_class: int | None = None
    resolved_params: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Scored:
    metrics: dict[str, float]
    details: dict[str, Any]
    grid: bytes


# ------------------------------------------------------------------------------------------ the methods
def _train_teacher(
    context: GenerativeContext, recipe: DDPMTrainParams, evaluation: GenerativeEvaluation | None
) -> GenerativeOutput:
    """A DDPM teacher trained with ``recipe`` (scored with ``evaluation`` unless None)."""
    result = api.train_ddpm(
        context.dataset,
        recipe,
        config=context.config,
        seed=context.seed,
        device=context.device,
        hooks=context.hooks,
        resume=context.resume,
    )
    resolved: dict[str, Any] = {"recipe": recipe.model_dump(mode="json")}
    if evaluation is not None:
        resolved["evaluation"] = evaluation.model_dump(mode="json")
    return GenerativeOutput(
        weights=result.weights,
        architecture=TEACHER,
        config=result.config,
        t_init=None,
        evaluation=evaluation,
        resolved_params=resolved,
        history=result.history,
        details={"resumed_from_step": result.resumed_from_step},
        metrics=_final_losses(result.history, ("loss",)),
    )


def run_train(context: GenerativeContext) -> GenerativeOutput:
    params = context.params
    assert isinstance(params, DDPMTrainParams)
    return _train_teacher(context, params, None)


def run_retrain(context: GenerativeContext) -> GenerativeOutput:
    params = context.params
    assert isinstance(params, DDPMRetrainParams)
    assert context.forget_class is not None
    recipe = params.recipe
    if recipe is None:
        if context.original_recipe is None:
            raise InvalidInputError("the teacher has no recorded training recipe: pass params.recipe")
        try:
            recipe = DDPMTrainParams.model_validate(context.original_recipe)
        except ValidationError as error:
            raise InvalidInputError(f"the teacher's recorded recipe is not a DDPM recipe: {error}") from None
    recipe = recipe.model_copy(
        update={"exclude_classes": sorted({*recipe.exclude_classes, context.forget_class})}
    )
    return _train_teacher(context, recipe, params.evaluation)


def _run_sfd(context: GenerativeContext, *, control: bool) -> GenerativeOutput:
    params = context.params
    assert isinstance(params, SFDJobParams)
    assert context.forget_class is not None and context.weights is not None
    try:
        engine_params = params.engine_params(context.forget_class, control=control)
    except (ValueError, ValidationError) as error:
        raise InvalidInputError(str(error)) from None
    # Data-free: the labels are the only part of the dataset SFD sees.
    result = api.run_sfd(
        context.weights,
        context.config,
        engine_params,
        context.dataset.y_train,
        seed=context.seed,
        device=context.device,
        hooks=context.hooks,
        resume=context.resume,
    )
    generator_config = OneStepGeneratorConfig.model_validate(
        {**context.config.model_dump(), "t_init": result.t_init}
    )
    return GenerativeOutput(
        weights=result.weights,
        architecture=GENERATOR,
        config=generator_config,
        t_init=result.t_init,
        evaluation=params.evaluation,
        override_class=engine_params.override_class,
        resolved_params={
            **engine_params.model_dump(mode="json"),
            "evaluation": params.evaluation.model_dump(),
        },
        history=result.history,
        details={"resumed_from_step": result.resumed_from_step, "control": control, "data_free": True},
        metrics=_final_losses(result.history, sfd_module.LOSS_NAMES),
    )


def run_sfd(context: GenerativeContext) -> GenerativeOutput:
    return _run_sfd(context, control=False)


def run_sfd_control(context: GenerativeContext) -> GenerativeOutput:
    return _run_sfd(context, control=True)


def _final_losses(history: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each loss (the history logs window means)."""
    if not history:
        return {}
    last = history[-1]
    return {f"final_{name}": float(last[name]) for name in names if name in last}


# --------------------------------------------------------------------------------------------- scoring
def _classifier_cache_name(
    dataset: ArrayDataset, dataset_sha256: str | None, params: ClassifierParams
) -> str:
    if dataset_sha256 is None:
        digest = hashlib.sha256()
        for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
            digest.update(np.ascontiguousarray(array).tobytes())
        dataset_sha256 = digest.hexdigest()
    material = {
        "dataset": dataset_sha256,
        "params": params.model_dump(mode="json"),
        "seed": METRIC_CLASSIFIER_SEED,
        "version": METRIC_CLASSIFIER_VERSION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _classifier_to_bytes(result: api.ClassifierResult) -> bytes:
    metadata = {
        "channels": str(result.channels),
        "num_classes": str(result.num_classes),
        "hidden": str(result.hidden),
        "test_accuracy": repr(result.test_accuracy),
    }
    return save_safetensors(dict(result.weights), metadata=metadata)


def _classifier_from_bytes(data: bytes) -> api.ClassifierResult:
    # safetensors: an 8-byte little-endian header length, then the JSON header with the metadata.
    header_length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__", {})
    return api.ClassifierResult(
        weights=load_safetensors(data),
        channels=int(metadata["channels"]),
        num_classes=int(metadata["num_classes"]),
        hidden=int(metadata["hidden"]),
        test_accuracy=float(metadata["test_accuracy"]),
    )


def metric_classifier(
    dataset: ArrayDataset,
    params: ClassifierParams,
    *,
    device: str,
    cache: ArtifactCache | None,
    dataset_sha256: str | None,
    hooks: EngineHooks | None = None,
) -> tuple[api.ClassifierResult, dict[str, Any]]:
    """The metric classifier for ``dataset`` (from the cache when it holds one) and how it was obtained."""
    name = _classifier_cache_name(dataset, dataset_sha256, params)
    cached = cache.get(name) if cache is not None else None
    if cached is not None:
        result = _classifier_from_bytes(cached)
        reused = True
    else:
        result = api.train_metric_classifier(
            dataset, params, seed=METRIC_CLASSIFIER_SEED, device=device, hooks=hooks
        )
        if cache is not None:
            cache.put(name, _classifier_to_bytes(result))
        reused = False
    key = cache.key(name) if cache is not None else None
    info = {
        "metric_classifier_key": key,
        "metric_classifier_reused": reused,
        "metric_classifier_test_accuracy": result.test_accuracy,
        "metric_classifier_params": params.model_dump(mode="json"),
    }
    return result, info


def evaluate_model(
    weights: dict[str, np.ndarray],
    config: DiffusionModelConfig,
    t_init: int | None,
    evaluation: GenerativeEvaluation,
    *,
    dataset: ArrayDataset,
    forget_class: int | None,
    override_class: int | None,
    device: str,
    hooks: EngineHooks,
    cache: ArtifactCache | None,
    dataset_sha256: str | None,
) -> Scored:
    """UA, override rate and entropy of the forgotten class's samples; retained-class accuracy and Frechet
    distances (overall, per class); NFE and time per sample; and a grid of every class."""
    classifier, classifier_info = metric_classifier(
        dataset, evaluation.classifier, device=device, cache=cache, dataset_sha256=dataset_sha256, hooks=hooks
    )
    samples = api.sample_for_evaluation(
        weights,
        config,
        evaluation.samples,
        forget_class=forget_class,
        t_init=t_init,
        sample_params=evaluation.sampler,
        seed=evaluation.seed,
        device=device,
        on_chunk=lambda done, total, cls: hooks.progress(EVALUATE_PHASE, done, total, {"class": cls}),
    )
    metrics = api.evaluate_generative(
        samples,
        classifier,
        dataset.x_train,
        dataset.y_train,
        forget_class=forget_class,
        override_class=override_class,
        device=device,
    )
    # Wall-clock time is not a metric (metrics are bit-identical for a seed on CPU): it goes to the timings.
    seconds_per_sample = metrics.pop("seconds_per_sample")
    grid_samples = api.draw_per_class(
        weights,
        config,
        list(range(config.num_classes)),
        evaluation.grid_per_class,
        t_init=t_init,
        sampler=evaluation.sampler,
        seed=evaluation.seed + GRID_SEED_OFFSET,
        device=device,
        on_chunk=lambda done, total, cls: hooks.progress("grid", done, total, {"class": cls}),
    )
    details = {
        **classifier_info,
        "seconds_per_sample": seconds_per_sample,
        "evaluation": evaluation.model_dump(mode="json"),
        "sampler": "one_step" if t_init is not None else evaluation.sampler.sampler,
        "n_generated": int(samples.labels.shape[0]),
        "forget_class": forget_class,
        "override_class": override_class,
        "grid": {"rows": "classes 0..K-1 in order", "per_class": evaluation.grid_per_class},
    }
    return Scored(
        metrics=metrics, details=details, grid=api.grid_png(grid_samples.images, evaluation.grid_per_class)
    )


# ------------------------------------------------------------------------------------------ the request
@dataclass
class GenerativeResult:
    weights: dict[str, np.ndarray] | None
    architecture: str | None
    arch_config: dict[str, Any] | None
    metrics: dict[str, float]
    details: dict[str, Any]
    method_seconds: float
    eval_seconds: float
    pngs: dict[str, bytes]
    arrays: dict[str, np.ndarray]
    # Timings besides method_s / eval_s (a recovery audit's transforms_s and relearn_s).
    timings: dict[str, float] = field(default_factory=dict)


def _generative_architecture(name: str) -> ArchitectureSpec:
    spec = ARCHITECTURES.get(name)
    if TaskType.generative not in spec.task_types:
        raise InvalidInputError(f"architecture {name!r} is not a generative model")
    return spec


def _method(kind: JobKindSpec, name: str | None) -> MethodSpec:
    if name is None:
        name = kind.default_method(TaskType.generative)
        if name is None:
            raise InvalidInputError(f"a generative {kind.name} request needs a method")
    spec = METHODS.get(name)
    if spec.job_kind != kind.method_kind:
        raise InvalidInputError(f"method {spec.name!r} is a {spec.job_kind} method, not a {kind.name} method")
    if TaskType.generative not in spec.task_types:
        raise InvalidInputError(f"method {spec.name!r} does not support generative models")
    return spec


def _validated(model: type[BaseModel], raw: dict[str, Any] | None, what: str) -> BaseModel:
    try:
        return model.model_validate(raw or {})
    except ValidationError as error:
        raise InvalidInputError(f"invalid parameters for {what}: {error}") from None


def _class_forget(forget_class: int | None, forget_indices: np.ndarray | None, dataset: ArrayDataset) -> int:
    """The class a generative job forgets: it must be a class forget set covering that class's samples."""
    if forget_class is None:
        raise InvalidInputError(
            "generative unlearning forgets a class: use a forget set of kind 'class' (not a list of indices)"
        )
    if not 0 <= forget_class < dataset.num_classes:
        raise InvalidInputError(f"forget_class {forget_class} is not a class of this dataset")
    if forget_indices is not None:
        expected = np.flatnonzero(dataset.y_train == forget_class)
        if not np.array_equal(np.asarray(forget_indices, dtype=np.int64), expected):
            raise InvalidInputError(
                "a generative model forgets whole classes: the forget set must hold every training sample of "
                f"class {forget_class}"
            )
    return forget_class


def _unit_range_images(dataset: ArrayDataset) -> ArrayDataset:
    """The dataset with float32 images in [0, 1], the range the diffusion engine takes (it maps them to
    [-1, 1] itself): uint8 pixels are scaled here. A per-channel normalisation in the dataset's config is for
    classifiers and does not apply to generative models, so it is dropped."""
    if dataset.x_train.dtype != np.uint8 and dataset.normalization is None:
        return dataset
    scale = 1.0 / UINT8_MAX
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train.astype(np.float32) * scale
        if dataset.x_train.dtype == np.uint8
        else dataset.x_train,
        x_test=dataset.x_test.astype(np.float32) * scale
        if dataset.x_test.dtype == np.uint8
        else dataset.x_test,
        normalization=None,
    )


@dataclass(frozen=True)
class GenerativeRequest:
    """What a generative kind's run receives: the engine request's fields, and the kind's registry entry
    (``workers.engine.job_kinds``), whose data - not its name - says what the run needs."""

    kind: JobKindSpec
    method: str | None
    params: dict[str, Any]
    seed: int
    device: str
    dataset: ArrayDataset
    architecture: str
    arch_config: dict[str, Any]
    weights: dict[str, np.ndarray] | None
    forget_indices: np.ndarray | None
    forget_class: int | None
    original_recipe: dict[str, Any] | None
    resume: bytes | None
    hooks: EngineHooks | None
    cache: ArtifactCache | None
    dataset_sha256: str | None
    # Further models by role (a recovery audit's original and retrain teachers), as the worker loaded them.
    controls: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Prepared:
    dataset: ArrayDataset
    config: DiffusionModelConfig
    t_init: int | None  # set for one-step generators
    hooks: EngineHooks


def _prepare(request: GenerativeRequest) -> _Prepared:
    """Checks every generative kind shares: a generative architecture whose config fits the dataset, and the
    input weights where the kind starts from them."""
    dataset = _unit_range_images(request.dataset.validate())
    spec = _generative_architecture(request.architecture)
    if not spec.supports_dataset(dataset.task.value):
        raise InvalidInputError(
            f"generative models learn from classification datasets, not {dataset.task.value}"
        )
    config = spec.parse_config(request.arch_config)
    assert isinstance(config, DiffusionModelConfig)
    if spec.check_input is not None:
        spec.check_input(config, dataset.input_shape, dataset.num_classes)
    if request.kind.starts_from_weights and request.weights is None:
        raise InvalidInputError(f"a generative {request.kind.name} request needs the model's weights")
    t_init = config.t_init if isinstance(config, OneStepGeneratorConfig) else None
    return _Prepared(dataset, config, t_init, request.hooks or NullHooks())


def run_sample(request: GenerativeRequest) -> GenerativeResult:
    """``sample``: draw ``n_per_class`` images of each requested class (an npz and a PNG grid)."""
    prepared = _prepare(request)
    params = _validated(SampleJobParams, request.params, "a sample job")
    assert isinstance(params, SampleJobParams) and request.weights is not None
    return _sample(
        params,
        request.weights,
        prepared.config,
        prepared.t_init,
        seed=request.seed,
        device=request.device,
        hooks=prepared.hooks,
    )


def run_evaluate(request: GenerativeRequest) -> GenerativeResult:
    """``evaluate``: score a teacher or generator on a class forget set."""
    prepared = _prepare(request)
    evaluation = _validated(GenerativeEvaluation, request.params, "a generative evaluation")
    assert isinstance(evaluation, GenerativeEvaluation) and request.weights is not None
    evaluated_class = _class_forget(request.forget_class, request.forget_indices, prepared.dataset)
    started = time.perf_counter()
    scored = evaluate_model(
        request.weights,
        prepared.config,
        prepared.t_init,
        evaluation,
        dataset=prepared.dataset,
        forget_class=evaluated_class,
        override_class=None,
        device=request.device,
        hooks=prepared.hooks,
        cache=request.cache,
        dataset_sha256=request.dataset_sha256,
    )
    return GenerativeResult(
        weights=None,
        architecture=None,
        arch_config=None,
        metrics=scored.metrics,
        details=scored.details,
        method_seconds=0.0,
        eval_seconds=time.perf_counter() - started,
        pngs={"samples": scored.grid},
        arrays={},
    )


def run_method(request: GenerativeRequest) -> GenerativeResult:
    """``train`` / ``retrain`` / ``unlearn``: run the kind's generative method, then score its output when the
    method asks for it."""
    prepared = _prepare(request)
    kind, dataset = request.kind, prepared.dataset
    method_spec = _method(kind, request.method)
    # A generative run either trains a teacher from scratch (a kind whose forget set is optional: train) or
    # starts from a teacher to take a class out of it (a kind that requires one: retrain, unlearn).
    forgets = kind.engine_forget_set is Presence.required
    if forgets and (request.weights is None or request.architecture != TEACHER):
        raise InvalidInputError(
            f"{method_spec.name} starts from a multi-step teacher ({TEACHER}), not {request.architecture}"
            + ("" if request.weights is not None else " without weights")
        )
    if not forgets and (request.forget_class is not None or request.forget_indices is not None):
        raise InvalidInputError(f"a {kind.name} request takes no forget set")
    target = _class_forget(request.forget_class, request.forget_indices, dataset) if forgets else None
    context = GenerativeContext(
        dataset=dataset,
        config=prepared.config,
        params=_validated(method_spec.params_model, request.params, method_spec.name),
        seed=request.seed,
        device=request.device,
        hooks=prepared.hooks,
        weights=request.weights,
        forget_class=target,
        original_recipe=request.original_recipe,
        resume=request.resume,
    )
    started = time.perf_counter()
    output: GenerativeOutput = import_by_path(method_spec.impl)(context)
    method_seconds = time.perf_counter() - started
    metrics = dict(output.metrics)
    details: dict[str, Any] = {
        "method": method_spec.name,
        "params": output.resolved_params,
        "history": output.history,
        **output.details,
        "output_architecture": output.architecture,
    }
    pngs: dict[str, bytes] = {}
    started = time.perf_counter()
    if output.evaluation is not None:
        scored = evaluate_model(
            output.weights,
            output.config,
            output.t_init,
            output.evaluation,
            dataset=dataset,
            forget_class=target,
            override_class=output.override_class,
            device=request.device,
            hooks=prepared.hooks,
            cache=request.cache,
            dataset_sha256=request.dataset_sha256,
        )
        metrics.update(scored.metrics)
        details.update(scored.details)
        pngs["samples"] = scored.grid
    return GenerativeResult(
        weights=output.weights,
        architecture=output.architecture,
        arch_config=output.config.model_dump(mode="json"),
        metrics=metrics,
        details=details,
        method_seconds=method_seconds,
        eval_seconds=time.perf_counter() - started,
        pngs=pngs,
        arrays={},
    )


def _sample(
    params: SampleJobParams,
    weights: dict[str, np.ndarray],
    config: DiffusionModelConfig,
    t_init: int | None,
    *,
    seed: int,
    device: str,
    hooks: EngineHooks,
) -> GenerativeResult:
    classes = params.classes if params.classes is not None else list(range(config.num_classes))
    bad = [cls for cls in classes if cls >= config.num_classes]
    if bad:
        raise InvalidInputError(f"classes {bad} are not classes of this {config.num_classes}-class model")
    started = time.perf_counter()
    drawn = api.draw_per_class(
        weights,
        config,
        classes,
        params.n_per_class,
        t_init=t_init,
        sampler=params.sampler,
        seed=seed,
        device=device,
        on_chunk=lambda done, total, cls: hooks.progress(SAMPLE_PHASE, done, total, {"class": cls}),
    )
    seconds = time.perf_counter() - started
    images = np.rint(np.clip(drawn.images, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)
    grid = api.grid_png(drawn.images, params.n_per_class, scale=params.grid_scale)
    return GenerativeResult(
        weights=None,
        architecture=None,
        arch_config=None,
        metrics={"nfe_per_sample": float(drawn.nfe_per_sample), "n_samples": float(drawn.labels.shape[0])},
        details={
            "seconds_per_sample": drawn.seconds_per_sample,
            "classes": classes,
            "n_per_class": params.n_per_class,
            "sampler": "one_step" if t_init is not None else params.sampler.sampler,
            "params": params.model_dump(mode="json"),
            "arrays_format": "images: uint8 (N, C, H, W), labels: int64 (N,), class by class",
        },
        method_seconds=seconds,
        eval_seconds=0.0,
        pngs={"samples": grid},
        arrays={"images": images, "labels": drawn.labels.astype(np.int64)},
    )


__all__ = [
    "GENERATOR",
    "TEACHER",
    "GenerativeContext",
    "GenerativeOutput",
    "GenerativeRequest",
    "GenerativeResult",
    "evaluate_model",
    "metric_classifier",
    "run_evaluate",
    "run_method",
    "run_retrain",
    "run_sample",
    "run_sfd",
    "run_sfd_control",
    "run_train",
]
