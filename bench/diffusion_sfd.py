"""Score Forgetting Distillation on scikit-learn's digits, every class, end to end, in one run on one device.

Trains the DDPM teacher and the metric classifier once, then for each forgotten class runs the distil-only
control and SFD from the same teacher and seed (override class: the next class, (c + 1) mod 10, which is the
reference's pair 0 -> 1 for class 0) and scores both exactly as the service's evaluation does
(``api.sample_for_evaluation``, the evaluation's default seed). Prints one row per class - the control's and
SFD's forget-class generation rate, retained-class accuracy and Frechet distance - and optionally writes all
metrics as JSON. ``--gold`` adds a teacher retrained without each class; ``--grids DIR`` writes a classes x
samples PNG grid per model.

Every class on CPU (about 30-40 min on 2 cores):  python bench/diffusion_sfd.py
Some classes, teacher cached between runs:        python bench/diffusion_sfd.py --classes 0,3 \
                                                      --teacher-cache /tmp/teacher.npz
The reference's SFD values ('reference' preset; GPU): python bench/diffusion_sfd.py --device cuda \
                                                      --preset reference --teacher-steps 20000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from workers.engine.datasets import build_dataset
from workers.engine.diffusion import api
from workers.engine.diffusion.job_params import METRIC_CLASSIFIER_SEED, GenerativeEvaluation
from workers.engine.diffusion.jobs import GRID_SEED_OFFSET
from workers.engine.diffusion.params import (
    ClassifierParams,
    DDPMTrainParams,
    DiffusionModelConfig,
    GenerativeEvalParams,
    SampleParams,
    SFDParams,
)

GRID_SAMPLES_PER_CLASS = 10
SUMMARY_KEYS = (
    "forget_generation_rate",
    "override_rate",
    "forget_entropy",
    "retain_accuracy",
    "fd_retain",
    "nfe_per_sample",
    "seconds_per_sample",
)


def _teacher(
    args: argparse.Namespace, dataset: Any, exclude: list[int]
) -> tuple[dict[str, np.ndarray], Any, float]:
    params = DDPMTrainParams(steps=args.teacher_steps, batch_size=args.teacher_batch, exclude_classes=exclude)
    config = api.default_model_config(dataset, base_channels=args.channels)
    cache = Path(args.teacher_cache) if args.teacher_cache and not exclude else None
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}, config, 0.0
    result = api.train_ddpm(dataset, params, config=config, seed=args.seed, device=args.device)
    if cache is not None:
        np.savez(cache, **result.weights)  # type: ignore[arg-type]
    return result.weights, result.config, result.seconds


def _classes(text: str, num_classes: int) -> list[int]:
    if text == "all":
        return list(range(num_classes))
    return [int(part) for part in text.split(",")]


def _sfd_params(args: argparse.Namespace, forget: int, num_classes: int) -> SFDParams:
    """The preset's SFD params for ``forget`` with the command line's explicit overrides on top."""
    values: dict[str, Any] = {
        "preset": args.preset,
        "forget_class": forget,
        "override_class": (forget + 1) % num_classes,
    }
    explicit = {
        "steps": args.sfd_steps,
        "batch_size": args.sfd_batch,
        "generator_lr": args.sfd_lr,
        "fake_lr": args.fake_lr if args.fake_lr is not None else args.sfd_lr,
        "generator_forget_coef": args.forget_coef,
        "fake_forget_coef": args.forget_coef,
        "ema_decay": args.ema,
    }
    values.update({key: value for key, value in explicit.items() if value is not None})
    return SFDParams.model_validate(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--classes", default="all", help="'all' or a comma-separated list of classes to forget"
    )
    parser.add_argument("--preset", default="lethe", choices=["lethe", "reference"])
    parser.add_argument("--channels", type=int, default=DiffusionModelConfig().base_channels)
    parser.add_argument("--teacher-steps", type=int, default=DDPMTrainParams().steps)
    parser.add_argument("--teacher-batch", type=int, default=DDPMTrainParams().batch_size)
    parser.add_argument("--teacher-cache", default=None)
    parser.add_argument("--sfd-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--sfd-batch", type=int, default=None, help="default: the preset's")
    parser.add_argument("--sfd-lr", type=float, default=None, help="default: the preset's")
    parser.add_argument("--fake-lr", type=float, default=None, help="default: --sfd-lr or the preset's")
    parser.add_argument("--forget-coef", type=float, default=None, help="default: the preset's")
    parser.add_argument("--ema", type=float, default=None, help="default: the preset's")
    parser.add_argument("--sample-steps", type=int, default=SampleParams().steps)
    parser.add_argument("--eval-per-class", type=int, default=GenerativeEvalParams().samples_per_class)
    parser.add_argument("--eval-forget", type=int, default=GenerativeEvalParams().forget_samples)
    parser.add_argument(
        "--gold", action="store_true", help="also train a teacher without each forgotten class"
    )
    parser.add_argument("--teacher-eval", action="store_true", help="also score the multi-step teacher")
    parser.add_argument("--grids", default=None, help="directory for PNG sample grids")
    parser.add_argument("--json", default=None, help="write all metrics to this file")
    args = parser.parse_args()
    dataset = build_dataset("digits")
    eval_params = GenerativeEvalParams(samples_per_class=args.eval_per_class, forget_samples=args.eval_forget)
    evaluation_seed = GenerativeEvaluation().seed
    timings: dict[str, float] = {}
    started = time.perf_counter()
    teacher, config, timings["teacher_s"] = _teacher(args, dataset, [])
    classifier = api.train_metric_classifier(
        dataset, ClassifierParams(), seed=METRIC_CLASSIFIER_SEED, device=args.device
    )
    timings["classifier_s"] = classifier.seconds
    print(
        f"teacher {timings['teacher_s']:.1f} s, classifier test accuracy {classifier.test_accuracy:.3f}",
        flush=True,
    )
    classes = _classes(args.classes, config.num_classes)
    runs: dict[str, dict[str, dict[str, float]]] = {}
    resolved: dict[str, dict[str, Any]] = {}
    grids: dict[str, np.ndarray] = {}

    def evaluate(
        name: str, weights: dict[str, np.ndarray], t_init: int | None, forget: int, override: int
    ) -> dict[str, float]:
        samples = api.sample_for_evaluation(
            weights,
            config,
            eval_params,
            forget_class=forget,
            t_init=t_init,
            sample_params=SampleParams(steps=args.sample_steps),
            seed=evaluation_seed,
            device=args.device,
        )
        metrics = api.evaluate_generative(
            samples,
            classifier,
            dataset.x_train,
            dataset.y_train,
            forget_class=forget,
            override_class=override,
            device=args.device,
        )
        if args.grids:
            grid = api.draw_per_class(
                weights,
                config,
                list(range(config.num_classes)),
                GRID_SAMPLES_PER_CLASS,
                t_init=t_init,
                sampler=SampleParams(steps=args.sample_steps),
                seed=evaluation_seed + GRID_SEED_OFFSET,
                device=args.device,
            )
            grids[name] = grid.images
        print(name, {key: round(metrics[key], 4) for key in SUMMARY_KEYS if key in metrics}, flush=True)
        return metrics

    for forget in classes:
        sfd_params = _sfd_params(args, forget, config.num_classes)
        override = sfd_params.override_class
        assert override is not None
        resolved[str(forget)] = sfd_params.model_dump(mode="json")
        row: dict[str, dict[str, float]] = {}
        if args.teacher_eval:
            row["teacher"] = evaluate(f"teacher/{forget}", teacher, None, forget, override)
        for name, params in (("control", sfd_params.distill_only()), ("sfd", sfd_params)):
            result = api.run_sfd(teacher, config, params, dataset.y_train, seed=args.seed, device=args.device)
            timings[f"{name}_{forget}_s"] = result.seconds
            print(
                f"class {forget} {name}: {result.seconds:.1f} s, last losses {result.history[-1]}", flush=True
            )
            row[name] = evaluate(f"{name}/{forget}", result.weights, result.t_init, forget, override)
        if args.gold:
            gold, _, timings[f"gold_{forget}_s"] = _teacher(args, dataset, [forget])
            row["gold"] = evaluate(f"gold/{forget}", gold, None, forget, override)
        runs[str(forget)] = row
    timings["total_s"] = time.perf_counter() - started

    print()
    print(
        "| forgotten class | override | forget rate: control -> SFD | retained acc.: control -> SFD "
        "| retained FD: control -> SFD |"
    )
    print("|---|---|---|---|---|")
    for forget in classes:
        control, unlearned = runs[str(forget)]["control"], runs[str(forget)]["sfd"]
        print(
            f"| {forget} | {resolved[str(forget)]['override_class']} "
            f"| {control['forget_generation_rate']:.3f} -> {unlearned['forget_generation_rate']:.3f} "
            f"| {control['retain_accuracy']:.3f} -> {unlearned['retain_accuracy']:.3f} "
            f"| {control['fd_retain']:.2f} -> {unlearned['fd_retain']:.2f} |"
        )
    rounded = {key: round(value, 1) for key, value in timings.items()}
    print(f"timings {json.dumps(rounded)}")
    if args.grids:
        directory = Path(args.grids)
        directory.mkdir(parents=True, exist_ok=True)
        for name, images in grids.items():
            path = directory / f"{name.replace('/', '-class')}.png"
            path.write_bytes(api.grid_png(images, GRID_SAMPLES_PER_CLASS))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "params": resolved, "timings": timings, "args": vars(args)}, indent=2)
        )


if __name__ == "__main__":
    main()
