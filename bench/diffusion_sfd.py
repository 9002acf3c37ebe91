"""Score Forgetting Distillation on scikit-learn's digits, end to end, in one run on one device.

Trains the DDPM teacher and the metric classifier, then runs the distil-only control and SFD from the same
teacher and seed, and prints (and optionally writes as JSON) the generative metrics of the teacher
(multi-step), the control, SFD and - with ``--gold`` - a teacher retrained without the forgotten class;
``--grids DIR`` writes a classes x samples PNG grid per model.

CPU run (a few minutes on 2 cores):  python bench/diffusion_sfd.py
Cache the teacher between runs:     python bench/diffusion_sfd.py --teacher-cache /tmp/teacher.npz
GPU, closer to the reference scale: python bench/diffusion_sfd.py --device cuda --teacher-steps 20000 \
                                        --sfd-steps 5000 --sfd-batch 128
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=DiffusionModelConfig().base_channels)
    parser.add_argument("--teacher-steps", type=int, default=DDPMTrainParams().steps)
    parser.add_argument("--teacher-batch", type=int, default=DDPMTrainParams().batch_size)
    parser.add_argument("--teacher-cache", default=None)
    parser.add_argument("--sfd-steps", type=int, default=SFDParams().steps)
    parser.add_argument("--sfd-batch", type=int, default=SFDParams().batch_size)
    parser.add_argument("--sfd-lr", type=float, default=SFDParams().generator_lr)
    parser.add_argument("--fake-lr", type=float, default=None)
    parser.add_argument("--forget-coef", type=float, default=SFDParams().generator_forget_coef)
    parser.add_argument("--ema", type=float, default=SFDParams().ema_decay)
    parser.add_argument("--sample-steps", type=int, default=SampleParams().steps)
    parser.add_argument("--eval-per-class", type=int, default=GenerativeEvalParams().samples_per_class)
    parser.add_argument(
        "--gold", action="store_true", help="also train a teacher without the forgotten class"
    )
    parser.add_argument("--skip-teacher-eval", action="store_true")
    parser.add_argument("--grids", default=None, help="directory for PNG sample grids")
    parser.add_argument("--json", default=None, help="write all metrics to this file")
    args = parser.parse_args()
    dataset = build_dataset("digits")
    sfd_params = SFDParams(
        steps=args.sfd_steps,
        batch_size=args.sfd_batch,
        generator_lr=args.sfd_lr,
        fake_lr=args.fake_lr if args.fake_lr is not None else args.sfd_lr,
        generator_forget_coef=args.forget_coef,
        fake_forget_coef=args.forget_coef,
        ema_decay=args.ema,
    )
    forget, override = sfd_params.forget_class, sfd_params.override_class
    eval_params = GenerativeEvalParams(samples_per_class=args.eval_per_class)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    teacher, config, timings["teacher_s"] = _teacher(args, dataset, [])
    classifier = api.train_metric_classifier(dataset, ClassifierParams(), seed=args.seed, device=args.device)
    timings["classifier_s"] = classifier.seconds
    print(f"teacher {timings['teacher_s']:.1f} s, classifier test accuracy {classifier.test_accuracy:.3f}")

    runs: dict[str, dict[str, float]] = {}
    grids: dict[str, np.ndarray] = {}

    def evaluate(name: str, weights: dict[str, np.ndarray], t_init: int | None) -> None:
        samples = api.sample_for_evaluation(
            weights,
            config,
            eval_params,
            forget_class=forget,
            t_init=t_init,
            sample_params=SampleParams(steps=args.sample_steps),
            seed=args.seed + 1,
            device=args.device,
        )
        runs[name] = api.evaluate_generative(
            samples,
            classifier,
            dataset.x_train,
            dataset.y_train,
            forget_class=forget,
            override_class=override,
            device=args.device,
        )
        if args.grids:
            classes = list(range(config.num_classes))
            if t_init is None:
                grid = api.sample_images(
                    weights,
                    config,
                    classes,
                    GRID_SAMPLES_PER_CLASS,
                    SampleParams(steps=args.sample_steps),
                    seed=0,
                )
            else:
                grid = api.sample_generator(
                    weights, config, classes, GRID_SAMPLES_PER_CLASS, t_init=t_init, seed=0
                )
            grids[name] = grid.images
        print(name, {key: round(runs[name][key], 4) for key in SUMMARY_KEYS if key in runs[name]}, flush=True)

    if not args.skip_teacher_eval:
        evaluate("teacher", teacher, None)
    for name, params in (("distill_only", sfd_params.distill_only()), ("sfd", sfd_params)):
        result = api.run_sfd(teacher, config, params, dataset.y_train, seed=args.seed, device=args.device)
        timings[f"{name}_s"] = result.seconds
        print(f"{name}: {result.seconds:.1f} s, last losses {result.history[-1]}", flush=True)
        evaluate(name, result.weights, result.t_init)
    if args.gold:
        gold, _, timings["gold_s"] = _teacher(args, dataset, [forget])
        evaluate("gold", gold, None)
    timings["total_s"] = time.perf_counter() - started

    control, unlearned = runs["distill_only"], runs["sfd"]
    forget_rate = unlearned["forget_generation_rate"]
    ratio = control["forget_generation_rate"] / forget_rate if forget_rate > 0 else float("inf")
    rounded = {key: round(value, 1) for key, value in timings.items()}
    print(f"forget-rate reduction x{ratio:.1f}; timings {json.dumps(rounded)}")
    if args.grids:
        directory = Path(args.grids)
        directory.mkdir(parents=True, exist_ok=True)
        for name, images in grids.items():
            (directory / f"{name}.png").write_bytes(api.grid_png(images, GRID_SAMPLES_PER_CLASS))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": runs, "timings": timings, "params": vars(args)}, indent=2)
        )


if __name__ == "__main__":
    main()
