"""Entry points of the diffusion engine for the job runner: numpy in, numpy out, typed params.

Images cross this boundary as float32 (N, C, H, W) arrays in the data range [0, 1] (as the datasets store
them; the models work in [-1, 1] internally), weights as ``dict[str, np.ndarray]`` of CPU float32 arrays
(store them as safetensors next to the :class:`DiffusionModelConfig` JSON). Every function is seeded; on
CPU the same call returns bit-identical results.

- :func:`default_model_config` - a U-Net config sized for a dataset (8x8 -> 2 levels, 16 -> 3, 32+ -> 4).
- :func:`train_ddpm` - train a class-conditional DDPM teacher (or, with ``exclude_classes``, the gold model).
- :func:`sample_images` - multi-step (DDPM / DDIM, CFG) samples of a teacher.
- :func:`run_sfd` - Score Forgetting Distillation (or the distil-only control) into a one-step generator.
- :func:`sample_generator` - one-step samples of an SFD generator.
- :func:`train_metric_classifier` - the classifier behind the generative metrics.
- :func:`draw_per_class` - per-class samples in heartbeat-sized chunks (evaluations, grids).
- :func:`sample_for_evaluation` + :func:`evaluate_generative` - UA, override rate, entropy, retained
  accuracy, Frechet distances, NFE and time per sample.
- :func:`grid_png` - a classes x samples PNG grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from workers.engine import devices
from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.diffusion import classifier as classifier_module
from workers.engine.diffusion import ddpm, sfd
from workers.engine.diffusion.metrics import forgetting_metrics, retained_metrics
from workers.engine.diffusion.params import (
    REFERENCE_T_INIT,
    ClassifierParams,
    DDPMTrainParams,
    DiffusionModelConfig,
    GenerativeEvalParams,
    SampleParams,
    SFDParams,
)
from workers.engine.diffusion.png import grid_png as _grid_png
from workers.engine.diffusion.runtime import Stopwatch, reproducible, seeded_generator
from workers.engine.diffusion.sampling import (
    generate_one_step,
    sample_multistep,
    strided_timesteps,
    to_model_range,
    to_unit_range,
)
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.diffusion.weights import Weights, load_weights, module_weights, state_to_numpy
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import EngineHooks
from workers.engine.task_types import TaskType

IMAGE_DIMS = 3  # per-sample C x H x W
# Resolution levels by image side: each level halves the side; stop at 4x4 like the reference stops at
# 4x4 for CIFAR's 32x32 ([1, 2, 2, 2]).
LEVELS_BY_SIZE = ((32, [1, 2, 2, 2]), (16, [1, 2, 2]), (8, [1, 2]))
ONE_STEP_NFE = 1
# Images drawn per sampler call in evaluations: bounds the time between two heartbeats of a job.
DRAW_CHUNK = 256
# Seed offset between chunks of one class (classes take offsets 0..K-1 within a chunk).
CHUNK_SEED_STRIDE = 100_003
UINT8_LEVELS = 255.0
DEFAULT_GRID_SCALE = 4


# ------------------------------------------------------------------------------------------- results
@dataclass
class DDPMTrainResult:
    weights: Weights  # the EMA weights: the released teacher
    config: DiffusionModelConfig
    raw_weights: Weights  # the optimised (non-EMA) weights after the last step
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int | None = None


@dataclass
class SFDResult:
    weights: Weights  # the generator's EMA weights: the released one-step generator
    config: DiffusionModelConfig
    t_init: int  # sample it with sample_generator(..., t_init=t_init)
    raw_weights: Weights
    fake_weights: Weights
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from_step: int | None = None


@dataclass
class SampleResult:
    images: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64: the class each image was conditioned on
    nfe_per_sample: int  # U-Net evaluations per image
    seconds: float  # wall-clock of the generation (device-synchronised)

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(int(self.labels.shape[0]), 1)

    def concat(self, other: SampleResult) -> SampleResult:
        if other.nfe_per_sample != self.nfe_per_sample:
            raise ValueError("cannot merge samples drawn with different numbers of network evaluations")
        return SampleResult(
            images=np.concatenate([self.images, other.images]),
            labels=np.concatenate([self.labels, other.labels]),
            nfe_per_sample=self.nfe_per_sample,
            seconds=self.seconds + other.seconds,
        )


@dataclass
class ClassifierResult:
    weights: Weights
    channels: int
    num_classes: int
    hidden: int
    test_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- helpers
def _check_image_dataset(dataset: ArrayDataset) -> tuple[int, int]:
    shape = tuple(dataset.input_shape)
    if dataset.task is not TaskType.classification:
        raise InvalidInputError("generative models need a classification dataset (class labels)")
    if len(shape) != IMAGE_DIMS or shape[1] != shape[2]:
        raise InvalidInputError(f"generative models need square C x H x W images, got input shape {shape}")
    return int(shape[0]), int(shape[1])


def default_model_config(dataset: ArrayDataset, **overrides: object) -> DiffusionModelConfig:
    """The U-Net config Lethe uses for ``dataset``: its channels, side and classes, the module's scaled
    widths, and as many resolution levels as keep the lowest one at >= 4x4 (at most 4)."""
    channels, size = _check_image_dataset(dataset)
    mults = next((levels for side, levels in LEVELS_BY_SIZE if size >= side and size % side == 0), [1])
    values: dict[str, object] = {
        "image_channels": channels,
        "image_size": size,
        "num_classes": dataset.num_classes,
        "channel_mults": mults,
    }
    values.update(overrides)
    return DiffusionModelConfig.model_validate(values)


def _check_config(config: DiffusionModelConfig, dataset: ArrayDataset) -> None:
    channels, size = _check_image_dataset(dataset)
    if (config.image_channels, config.image_size, config.num_classes) != (
        channels,
        size,
        dataset.num_classes,
    ):
        raise InvalidInputError(
            f"model config ({config.image_channels} x {config.image_size}^2, {config.num_classes} classes) "
            f"does not match the dataset ({channels} x {size}^2, {dataset.num_classes} classes)"
        )


def _unet(
    weights: Mapping[str, np.ndarray], config: DiffusionModelConfig, device: torch.device, what: str
) -> UNet:
    model = UNet(config).to(device)
    load_weights(model, weights, what)
    return model.eval().requires_grad_(False)


def _class_labels(classes: Sequence[int], n_per_class: int, num_classes: int) -> np.ndarray:
    if n_per_class < 1:
        raise InvalidInputError("n_per_class must be at least 1")
    for cls in classes:
        if not 0 <= int(cls) < num_classes:
            raise InvalidInputError(f"class {cls} is not in [0, {num_classes})")
    return np.repeat(np.asarray(classes, dtype=np.int64), n_per_class)


# ------------------------------------------------------------------------------------------- training
def train_ddpm(
    dataset: ArrayDataset,
    params: DDPMTrainParams,
    *,
    config: DiffusionModelConfig | None = None,
    seed: int,
    device: str = "cpu",
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
) -> DDPMTrainResult:
    """Train a class-conditional DDPM on ``dataset``'s training split (images in [0, 1]); classes in
    ``params.exclude_classes`` are left out (the gold reference for a forgotten class).

    ``hooks.progress("ddpm_train", step, total, info)`` after every step (may raise JobCancelled; ``info``
    carries ``loss`` every 50 steps); ``hooks.checkpoint("ddpm_train", step, blob)`` every
    ``params.checkpoint_every`` steps; ``resume=blob`` continues from such a checkpoint.
    """
    config = config or default_model_config(dataset)
    _check_config(config, dataset)
    bad = [cls for cls in params.exclude_classes if cls >= config.num_classes]
    if bad:
        raise InvalidInputError(
            f"exclude_classes {bad} are not classes of this {config.num_classes}-class dataset"
        )
    keep = ~np.isin(dataset.y_train, params.exclude_classes)
    if keep.sum() < 2:
        raise InvalidInputError("fewer than 2 training images remain after exclude_classes")
    torch_device = devices.torch_device(device)
    images = to_model_range(torch.from_numpy(np.ascontiguousarray(dataset.x_train[keep])).to(torch_device))
    labels = torch.from_numpy(dataset.y_train[keep].astype(np.int64)).to(torch_device)
    with reproducible(torch_device):
        output = ddpm.train(images, labels, config, params, seed=seed, hooks=hooks, resume=resume)
    return DDPMTrainResult(
        weights=state_to_numpy(output.ema.state_dict()),
        config=config,
        raw_weights=module_weights(output.model),
        history=output.history,
        seconds=output.seconds,
        resumed_from_step=output.resumed_from_step,
    )


def run_sfd(
    teacher_weights: Mapping[str, np.ndarray],
    config: DiffusionModelConfig,
    params: SFDParams,
    labels: Sequence[int] | np.ndarray,
    *,
    seed: int,
    device: str = "cpu",
    hooks: EngineHooks | None = None,
    resume: bytes | None = None,
) -> SFDResult:
    """Score Forgetting Distillation of the teacher (its EMA weights, as :func:`train_ddpm` returns them)
    into a one-step generator; ``params.distill_only()`` runs the control through the same code.

    ``labels`` are the training set's integer class labels - the only data SFD uses (their retained-class
    frequencies drive the remain labels); images are refused. Progress / cancel / checkpoints / resume as in
    :func:`train_ddpm` with phase ``"sfd"``.
    """
    sfd.check_params(params, config)
    counts = sfd.remain_label_counts(labels, config.num_classes, params.forget_class)
    torch_device = devices.torch_device(device)
    with reproducible(torch_device):
        teacher = _unet(teacher_weights, config, torch_device, "teacher")
        output = sfd.distill(teacher, config, params, counts, seed=seed, hooks=hooks, resume=resume)
    return SFDResult(
        weights=state_to_numpy(output.ema.state_dict()),
        config=config,
        t_init=params.t_init,
        raw_weights=module_weights(output.generator),
        fake_weights=module_weights(output.fake),
        history=output.history,
        seconds=output.seconds,
        resumed_from_step=output.resumed_from_step,
    )


def train_metric_classifier(
    dataset: ArrayDataset,
    params: ClassifierParams,
    *,
    seed: int,
    device: str = "cpu",
    hooks: EngineHooks | None = None,
) -> ClassifierResult:
    """Train the metric classifier on the training split (all classes); report its test accuracy.
    ``hooks`` receives a progress call per batch (phase ``metric_classifier``)."""
    channels, _ = _check_image_dataset(dataset)
    torch_device = devices.torch_device(device)
    with reproducible(torch_device):
        images = torch.from_numpy(np.ascontiguousarray(dataset.x_train)).to(torch_device)
        labels = torch.from_numpy(dataset.y_train.astype(np.int64)).to(torch_device)
        output = classifier_module.train(images, labels, dataset.num_classes, params, seed=seed, hooks=hooks)
        test_images = torch.from_numpy(np.ascontiguousarray(dataset.x_test)).to(torch_device)
        probabilities, _ = classifier_module.predict(output.model, test_images)
    predicted = probabilities.argmax(dim=1).cpu().numpy()
    return ClassifierResult(
        weights=module_weights(output.model),
        channels=channels,
        num_classes=dataset.num_classes,
        hidden=params.hidden,
        test_accuracy=float(np.mean(predicted == dataset.y_test)),
        history=output.history,
        seconds=output.seconds,
    )


# ------------------------------------------------------------------------------------------- sampling
def sample_images(
    weights: Mapping[str, np.ndarray],
    config: DiffusionModelConfig,
    classes: Sequence[int],
    n_per_class: int,
    params: SampleParams,
    *,
    seed: int,
    device: str = "cpu",
) -> SampleResult:
    """``n_per_class`` multi-step samples of a teacher for each of ``classes``, ordered class by class
    (so ``grid_png(result.images, n_per_class)`` has one class per row)."""
    labels = _class_labels(classes, n_per_class, config.num_classes)
    torch_device = devices.torch_device(device)
    image_shape = (config.image_channels, config.image_size, config.image_size)
    with reproducible(torch_device):
        model = _unet(weights, config, torch_device, "teacher")
        schedule = NoiseSchedule.from_config(config, torch_device)
        generator = seeded_generator(seed, torch_device)
        watch = Stopwatch(torch_device)
        chunks = []
        for start in range(0, labels.shape[0], params.batch_size):
            batch = torch.from_numpy(labels[start : start + params.batch_size]).to(torch_device)
            chunks.append(
                to_unit_range(sample_multistep(model, schedule, batch, image_shape, params, generator)).cpu()
            )
        seconds = watch.seconds()
    steps = len(strided_timesteps(config.timesteps, params.steps))
    return SampleResult(
        images=torch.cat(chunks).numpy(),
        labels=labels,
        nfe_per_sample=steps * (2 if params.guidance_scale > 0 else 1),
        seconds=seconds,
    )


def sample_generator(
    weights: Mapping[str, np.ndarray],
    config: DiffusionModelConfig,
    classes: Sequence[int],
    n_per_class: int,
    *,
    t_init: int = REFERENCE_T_INIT,
    seed: int,
    device: str = "cpu",
    batch_size: int = 1000,
) -> SampleResult:
    """One-step samples G(z, c) of an SFD generator (one network evaluation, no CFG, as the reference)."""
    labels = _class_labels(classes, n_per_class, config.num_classes)
    if not 0 < t_init < config.timesteps:
        raise InvalidInputError(f"t_init must lie in (0, {config.timesteps})")
    torch_device = devices.torch_device(device)
    shape = (config.image_channels, config.image_size, config.image_size)
    with reproducible(torch_device), torch.no_grad():
        model = _unet(weights, config, torch_device, "generator")
        schedule = NoiseSchedule.from_config(config, torch_device)
        generator = seeded_generator(seed, torch_device)
        watch = Stopwatch(torch_device)
        chunks = []
        for start in range(0, labels.shape[0], batch_size):
            batch = torch.from_numpy(labels[start : start + batch_size]).to(torch_device)
            z = torch.randn((batch.shape[0], *shape), generator=generator, device=torch_device)
            chunks.append(to_unit_range(generate_one_step(model, schedule, z, batch, t_init)).cpu())
        seconds = watch.seconds()
    return SampleResult(
        images=torch.cat(chunks).numpy(), labels=labels, nfe_per_sample=ONE_STEP_NFE, seconds=seconds
    )


# ----------------------------------------------------------------------------------------- evaluation
def draw_per_class(
    weights: Mapping[str, np.ndarray],
    config: DiffusionModelConfig,
    classes: Sequence[int],
    count: int,
    *,
    t_init: int | None,
    sampler: SampleParams | None = None,
    seed: int,
    device: str = "cpu",
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> SampleResult:
    """``count`` samples of each of ``classes``, class by class, in chunks of at most :data:`DRAW_CHUNK`
    images. Each chunk has its own seed, derived from ``seed``, its class and its position, so a class's
    samples do not depend on which other classes are drawn in the same call. ``t_init`` set: a one-step
    generator; otherwise a multi-step teacher sampled with ``sampler`` (default :class:`SampleParams`).
    ``on_chunk(done, total, cls)`` runs after each chunk (a job's heartbeat: a multi-step teacher runs
    ``sampler.steps`` network calls per chunk)."""
    result: SampleResult | None = None
    chunks = [(cls, start) for cls in classes for start in range(0, count, DRAW_CHUNK)]
    for index, (cls, start) in enumerate(chunks):
        size = min(DRAW_CHUNK, count - start)
        chunk_seed = seed + cls + CHUNK_SEED_STRIDE * (start // DRAW_CHUNK)
        if t_init is not None:
            part = sample_generator(
                weights, config, [cls], size, t_init=t_init, seed=chunk_seed, device=device
            )
        else:
            part = sample_images(
                weights, config, [cls], size, sampler or SampleParams(), seed=chunk_seed, device=device
            )
        result = part if result is None else result.concat(part)
        if on_chunk is not None:
            on_chunk(index + 1, len(chunks), cls)
    if result is None:
        raise InvalidInputError("nothing to draw: no classes or no samples per class")
    return result


def sample_for_evaluation(
    weights: Mapping[str, np.ndarray],
    config: DiffusionModelConfig,
    params: GenerativeEvalParams,
    *,
    forget_class: int | None,
    t_init: int | None = None,
    sample_params: SampleParams | None = None,
    seed: int,
    device: str = "cpu",
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> SampleResult:
    """The evaluation's samples: ``params.samples_per_class`` for every retained class, then
    ``params.forget_samples`` for the forgotten class (if any), drawn by :func:`draw_per_class`. The
    service's evaluation jobs and the benches call this one function, so their figures come from the same
    noise for the same seed."""
    retained = [cls for cls in range(config.num_classes) if cls != forget_class]

    def draw(classes: list[int], count: int) -> SampleResult:
        return draw_per_class(
            weights,
            config,
            classes,
            count,
            t_init=t_init,
            sampler=sample_params,
            seed=seed,
            device=device,
            on_chunk=on_chunk,
        )

    result = draw(retained, params.samples_per_class)
    if forget_class is not None:
        result = result.concat(draw([forget_class], params.forget_samples))
    return result


def _classifier(result: ClassifierResult, device: torch.device) -> classifier_module.MetricClassifier:
    model = classifier_module.MetricClassifier(result.channels, result.num_classes, result.hidden).to(device)
    load_weights(model, result.weights, "classifier")
    return model.eval()


def _quantise(images: np.ndarray) -> np.ndarray:
    """Round to 8-bit levels as the reference does by saving / converting samples to uint8."""
    return (np.rint(np.clip(images, 0.0, 1.0) * UINT8_LEVELS) / UINT8_LEVELS).astype(np.float32)


def evaluate_generative(
    samples: SampleResult,
    classifier: ClassifierResult,
    real_images: np.ndarray,
    real_labels: np.ndarray,
    *,
    forget_class: int | None,
    override_class: int | None,
    device: str = "cpu",
) -> dict[str, float]:
    """Generative metrics of ``samples`` (see :mod:`workers.engine.diffusion.metrics` for the names), plus
    ``nfe_per_sample`` and ``seconds_per_sample``. Samples conditioned on ``forget_class`` feed the
    forgetting metrics, all others the retained ones; ``real_images`` / ``real_labels`` (e.g. the training
    split, as the reference's FID reference set) give the real features of the retained classes."""
    torch_device = devices.torch_device(device)
    model = _classifier(classifier, torch_device)
    with reproducible(torch_device):
        generated = torch.from_numpy(_quantise(samples.images)).to(torch_device)
        probabilities, features = classifier_module.predict(model, generated)
    p = probabilities.cpu().numpy()
    f = features.cpu().numpy()
    metrics: dict[str, float] = {
        "nfe_per_sample": float(samples.nfe_per_sample),
        "seconds_per_sample": samples.seconds_per_sample,
    }
    forget_mask = np.zeros(len(p), dtype=bool)
    if forget_class is not None:
        forget_mask = samples.labels == forget_class
        if forget_mask.any():
            metrics.update(forgetting_metrics(p[forget_mask], forget_class, override_class))
    retained = sorted(int(cls) for cls in np.unique(samples.labels[~forget_mask]))
    if retained:
        # The real features are only needed for retained classes (a forget-class-only probe skips them).
        with reproducible(torch_device):
            real = torch.from_numpy(np.ascontiguousarray(real_images, dtype=np.float32)).to(torch_device)
            _, real_features = classifier_module.predict(model, real)
        metrics.update(
            retained_metrics(
                p[~forget_mask],
                f[~forget_mask],
                samples.labels[~forget_mask],
                real_features.cpu().numpy(),
                np.asarray(real_labels),
                retained,
            )
        )
    return metrics


def grid_png(images: np.ndarray, nrow: int, *, scale: int = DEFAULT_GRID_SCALE, padding: int = 1) -> bytes:
    """PNG bytes of (N, C, H, W) images in [0, 1], ``nrow`` images per grid row (samples ordered class by
    class with ``nrow = n_per_class`` give one class per row), each enlarged ``scale`` times."""
    return _grid_png(images, nrow, scale=scale, padding=padding)
