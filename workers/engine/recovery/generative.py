"""The ``recovery`` job kind on generative models (the kind's ``generative_run``).

The audited model is a ``unet_one_step`` generator (SFD's output) or a ``unet_ddpm`` teacher; its controls
are teachers of the same U-Net: the **original** (the teacher SFD distilled) and the **retrain**
(``ddpm_retrain``: the teacher's recipe without the forgotten class). Every model is sampled as an
``evaluate`` job with the audit's ``evaluation`` samples it - a generator in one step, a teacher with the
evaluation's multi-step sampler - through :func:`api.sample_for_evaluation` with the evaluation's seed, and
scored by the same cached metric classifier (:func:`workers.engine.diffusion.jobs.metric_classifier`). So the
figures before a transform equal an ``evaluate`` job's, and before/after differ only by the transform.

- **Forget metric** m = the forget-class rate in % (share of the images generated for the forgotten class
  that the metric classifier assigns to it; 100 x (1 - ``ua``)); more = knows more. The retained classes'
  accuracy (%) and Frechet distance are measured beside it after each transform.
- **Transforms**: the int8 / int4 / NF4 quantizations and the magnitude prunings of
  :mod:`workers.engine.recovery.transforms`, on copies of the U-Net's state dict (convolution kernels,
  linear and embedding matrices; norms and biases stay fp32).
- **Relearning**: k Adam steps of the DDPM denoising loss (epsilon prediction, squared error summed over
  pixels, class-conditional, no condition dropout) on the relearning images with their own labels. A teacher
  draws t uniformly from {0, ..., T-1} per image, as its training does; a one-step generator is trained at
  its t_init only, the one timestep its map G(z, c) = sigma_init (z - eps(b_init z, t_init, c)) evaluates:
  the most direct way to teach it those images back. The sources are the discriminative audit's
  (:mod:`workers.engine.recovery.relearn`) on the training images: (a) a seeded subset of the forgotten
  class's images, (b) the retain images nearest them in pixel space, (c) retain images farther than the
  median. Every curve reads the forget-class rate of freshly generated images (the evaluation's forget
  samples and seed); there is no held-out split to read, since generating the class is what is measured
  (a model that reproduces the relearned images has recovered the class).
- **Scores**: exactly the discriminative definitions (:mod:`workers.engine.recovery.scores`, the gap in
  rate points, ``min_gap`` in rate points).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.engine import devices
from workers.engine.diffusion import api
from workers.engine.diffusion.ddpm import epsilon_loss
from workers.engine.diffusion.job_params import teacher_config
from workers.engine.diffusion.jobs import (
    GenerativeRequest,
    GenerativeResult,
    _class_forget,
    _prepare,
    _validated,
    metric_classifier,
)
from workers.engine.diffusion.params import DiffusionModelConfig
from workers.engine.diffusion.runtime import reproducible, seeded_generator, synchronize
from workers.engine.diffusion.sampling import to_model_range
from workers.engine.diffusion.schedule import NoiseSchedule
from workers.engine.diffusion.unet import UNet
from workers.engine.diffusion.weights import load_weights, state_to_numpy
from workers.engine.errors import InvalidInputError
from workers.engine.metrics import retain_indices
from workers.engine.recovery import relearn, scores, transforms
from workers.engine.recovery.job import AUDITED, CONTROL, CONTROL_ROLES, ORIGINAL, PHASE, summarise
from workers.engine.recovery.params import GenerativeRecoveryParams

FORGET_METRIC = "forget_class_rate"
DIRECTION = scores.Direction(FORGET_METRIC, 1.0)
PERCENT = 100.0


@dataclass
class Subject:
    """One model of the audit: its U-Net (on the device) and how it is sampled."""

    network: UNet
    config: DiffusionModelConfig
    t_init: int | None  # set for a one-step generator


def _network(
    weights: Mapping[str, np.ndarray], config: DiffusionModelConfig, device: torch.device, what: str
) -> UNet:
    with torch.random.fork_rng(devices=[]):
        network = UNet(config).to(device)
    load_weights(network, weights, what)
    return network.eval().requires_grad_(False)


def denoising_objective(
    schedule: NoiseSchedule, t_fixed: int | None, seed: int, device: torch.device
) -> relearn.Objective:
    """The relearning loss of a diffusion network: epsilon prediction at t uniform on {0, ..., T-1}, or at
    ``t_fixed`` only (a one-step generator's t_init). Noise and timesteps come from a generator seeded with
    ``seed``, so two models relearned with fresh objectives of the same seed see the same noise."""
    generator = seeded_generator(seed, device)

    def objective(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        count = x0.shape[0]
        if t_fixed is None:
            t = torch.randint(0, schedule.timesteps, (count,), generator=generator, device=device)
        else:
            t = torch.full((count,), t_fixed, dtype=torch.long, device=device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        return epsilon_loss(model, schedule, x0, t, labels, eps)

    return objective


def run_generative_recovery(request: GenerativeRequest) -> GenerativeResult:
    started = time.perf_counter()
    prepared = _prepare(request)
    params = _validated(GenerativeRecoveryParams, request.params, "a recovery audit")
    assert isinstance(params, GenerativeRecoveryParams) and request.weights is not None
    dataset, hooks = prepared.dataset, prepared.hooks
    forget_class = _class_forget(request.forget_class, request.forget_indices, dataset)
    missing = [role for role in CONTROL_ROLES if role not in request.controls]
    if missing:
        raise InvalidInputError(f"a recovery request needs the {' and '.join(missing)} model's weights")
    evaluation = params.evaluation
    device = devices.torch_device(request.device)
    classifier, classifier_info = metric_classifier(
        dataset,
        evaluation.classifier,
        device=request.device,
        cache=request.cache,
        dataset_sha256=request.dataset_sha256,
        hooks=hooks,
    )
    teacher = teacher_config(prepared.config)
    subjects = {
        AUDITED: Subject(
            _network(request.weights, prepared.config, device, "audited"), prepared.config, prepared.t_init
        ),
        **{
            role: Subject(_network(request.controls[role], teacher, device, role), teacher, None)
            for role in CONTROL_ROLES
        },
    }
    forget = np.flatnonzero(dataset.y_train == forget_class).astype(np.int64)
    unit_images = torch.from_numpy(np.ascontiguousarray(dataset.x_train)).to(device)
    sources = relearn.choose_sources(
        unit_images,
        forget,
        retain_indices(dataset.n_train, forget),
        params.relearn_sources,
        params.relearn_samples,
        request.seed,
    )
    suite = transforms.transforms_for(params.sparsities)
    if not params.quantization:
        suite = [t for t in suite if t.family != transforms.QUANTIZATION]
    total = 3 + 2 * len(suite) + 2 * len(sources.indices)
    done = 0

    def heartbeat(info: dict[str, Any]) -> Callable[[int, int, int], None]:
        # Sampling a teacher takes its sampler's steps per chunk: every chunk renews the lease.
        return lambda chunk, chunks, cls: hooks.progress(
            PHASE, done, total, {**info, "chunk": chunk, "chunks": chunks, "class": cls}
        )

    def tick(info: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        hooks.progress(PHASE, done, total, info)

    def measure(
        subject: Subject, state: Mapping[str, torch.Tensor], info: dict[str, Any]
    ) -> dict[str, float]:
        samples = api.sample_for_evaluation(
            state_to_numpy(state),
            subject.config,
            evaluation.samples,
            forget_class=forget_class,
            t_init=subject.t_init,
            sample_params=evaluation.sampler,
            seed=evaluation.seed,
            device=request.device,
            on_chunk=heartbeat(info),
        )
        figures = api.evaluate_generative(
            samples,
            classifier,
            dataset.x_train,
            dataset.y_train,
            forget_class=forget_class,
            override_class=None,
            device=request.device,
        )
        return {
            FORGET_METRIC: PERCENT * figures["forget_generation_rate"],
            "retain_accuracy": PERCENT * figures["retain_accuracy"],
            "fd_retain": figures["fd_retain"],
        }

    def probe(subject: Subject, info: dict[str, Any]) -> Callable[[nn.Module], float]:
        """The forget-class rate of a (relearned) network: the evaluation's forget-class draws, classified."""

        def read(network: nn.Module) -> float:
            drawn = api.draw_per_class(
                state_to_numpy(network.state_dict()),
                subject.config,
                [forget_class],
                evaluation.samples.forget_samples,
                t_init=subject.t_init,
                sampler=evaluation.sampler,
                seed=evaluation.seed,
                device=request.device,
                on_chunk=heartbeat(info),
            )
            figures = api.evaluate_generative(
                drawn,
                classifier,
                dataset.x_train,
                dataset.y_train,
                forget_class=forget_class,
                override_class=None,
                device=request.device,
            )
            return PERCENT * figures["forget_generation_rate"]

        return read

    synchronize(device)
    transform_started = time.perf_counter()
    before: dict[str, dict[str, float]] = {}
    for role, subject in subjects.items():
        before[role] = measure(subject, subject.network.state_dict(), {"measured": role})
        tick({"measured": role})
    table: list[dict[str, Any]] = []
    for transform in suite:
        row: dict[str, Any] = {
            "name": transform.name,
            "family": transform.family,
            "description": transform.description,
        }
        for role in (AUDITED, CONTROL):
            state = transform.apply(subjects[role].network.state_dict())
            if not transforms.is_finite(state):
                raise InvalidInputError(f"{transform.name} gave non-finite weights for the {role} model")
            info = {"transform": transform.name, "model": role}
            row[role] = measure(subjects[role], state, info)
            row[f"{role}_zero_fraction"] = transforms.zero_fraction(state)
            tick(info)
        table.append(row)
    synchronize(device)
    transform_seconds = time.perf_counter() - transform_started

    relearn_started = time.perf_counter()
    schedule = NoiseSchedule.from_config(teacher, device)
    images = to_model_range(unit_images)
    labels = torch.from_numpy(dataset.y_train.astype(np.int64)).to(device)
    curves: dict[str, dict[str, relearn.Curve]] = {}
    with reproducible(device):
        for source, indices in sources.indices.items():
            selected = torch.from_numpy(indices).to(device)
            curves[source] = {}
            for role in (AUDITED, CONTROL):
                subject = subjects[role]
                info = {"relearn": source, "model": role}
                curves[source][role] = relearn.relearn_curve(
                    subject.network,
                    images[selected],
                    labels[selected],
                    probe(subject, info),
                    params.relearn_steps,
                    objective=denoising_objective(schedule, subject.t_init, request.seed, device),
                    lr=params.relearn_lr,
                    batch_size=params.relearn_batch_size,
                    seed=request.seed,
                )
                tick(info)
    synchronize(device)
    relearn_seconds = time.perf_counter() - relearn_started

    # The curves read generated images, not a held-out split: the original's level is its rate before.
    metrics, details = summarise(DIRECTION, params, before, table, curves, before[ORIGINAL][FORGET_METRIC])
    details["recovery"]["units"] = "% of the images generated for the forgotten class (retain_accuracy: %)"
    details.update(
        classifier_info,
        method=None,
        params=params.model_dump(mode="json"),
        samplers={
            role: "one_step" if subject.t_init is not None else evaluation.sampler.sampler
            for role, subject in subjects.items()
        },
        sources={
            "feature_space": "pixels",
            "forgotten_class_images": int(forget.size),
            "sizes": {name: int(ix.size) for name, ix in sources.indices.items()},
            "definitions": {
                "forget_subset": "seeded random subset of the forgotten class's training images (at most"
                " half)",
                "retain_neighbours": "retain images nearest the forgotten class's images in pixel space"
                " (Euclidean), with their own labels",
                "unrelated": "random retain images farther from the forgotten class than the median",
            },
            "curves_read": "forget-class rate of the evaluation's forget-class samples (same seed every"
            " step)",
        },
        transforms_applied_to="copies of the audited and the retrain model's U-Net weights",
        nf4_codebook=transforms.nf4_codebook().tolist(),
        relearn_optimizer={
            "name": "adam",
            "lr": params.relearn_lr,
            "batch_size": params.relearn_batch_size,
            "loss": "DDPM epsilon prediction (squared error summed over pixels), class-conditional",
            "timesteps": {
                role: f"t_init = {subject.t_init} only" if subject.t_init is not None else "uniform on [0, T)"
                for role, subject in subjects.items()
                if role != ORIGINAL
            },
        },
    )
    return GenerativeResult(
        weights=None,
        architecture=None,
        arch_config=None,
        metrics=metrics,
        details=details,
        method_seconds=transform_seconds + relearn_seconds,
        eval_seconds=0.0,
        pngs={},
        arrays={},
        timings={
            "transforms_s": transform_seconds,
            "relearn_s": relearn_seconds,
            "audit_s": time.perf_counter() - started,
        },
    )
