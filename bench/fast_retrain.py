"""Retraining in seconds (issue 20): the speed-run recipe + network against the reference-style loop.

In one run on one device, on a procedural CIFAR-shaped set (``procedural`` from the dataset registry):

- **original**: ``speedrun_cnn`` trained with the ``speedrun`` recipe base on the whole training split;
- **retrain**: the same recipe and seed on the retain set (a random ``--forget-fraction`` left out), the
  exact-unlearning oracle as a retrain job runs it;
- **reference**: CIFAR ResNet-18 trained the way the public unlearning repos do (fp32, torch ``DataLoader``
  with per-sample crop + flip, SGD lr 0.1 momentum 0.9 wd 5e-4, x0.1 at 50 % / 75 % of the epochs,
  batch 256), for ``--ref-epochs`` epochs;
- **audit**: a U-LiRA audit (``ft`` audited, ``--shadows`` K pipelines: K base models, K retrains, K
  unlearning runs) whose shadows train with the same recipe (sequential ``fit``: the speed-run recipe is
  not vectorised).

Every training run is timed without its evaluation: after each epoch the test accuracy is measured
(eval mode, so with the network's test-time flip) off the clock. Reported per run: training seconds,
seconds to reach ``--target`` test accuracy (at epoch granularity; null if never reached), final accuracy,
images/s. Ratios in the same run: speed-run over reference images/s, reference over retrain seconds to the
target, and the reference's full 160-epoch retrain (projected from its measured epoch time) over the
measured retrain. Each loop first runs one untimed warm-up epoch on a slice of the data (allocator, cuDNN
autotuning, DataLoader start-up).

CPU (scaled down, ~4 min on one core):  python bench/fast_retrain.py --threads 1
GPU (CIFAR-10 sizes, K = 64):         python bench/fast_retrain.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from workers.engine.architectures.build import build_model, state_to_numpy
from workers.engine.audit.pipeline import AuditRequest, run_audit
from workers.engine.audit.store import MemoryShadowStore
from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.execute import predict_logits, resolve_device
from workers.engine.methods.params import (
    REFERENCE_RETRAIN_EPOCHS,
    SPEEDRUN_RECIPE,
    TrainRecipe,
)
from workers.engine.training import CROP_PADDING_DIVISOR, fit, learning_rate, reproducible, synchronize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_loop import ReferenceStyleDataset  # the reference loop's per-sample augmentation

SEED = 0
CHANNELS = 3
UINT8_MAX = 255.0
WARMUP_SAMPLES = 512
REFERENCE_BATCH_SIZE = 256
AUDITED_METHOD = {"method": "ft", "method_params": {"epochs": 2, "lr": 0.01}}
# Defaults per device type: CIFAR-10 sizes and the published widths on a GPU, a few-minute run on a CPU.
PROFILES: dict[str, dict[str, Any]] = {
    "cuda": {
        "n": 50_000,
        "n_test": 10_000,
        "widths": [64, 256, 256],
        "epochs": SPEEDRUN_RECIPE["epochs"],
        "batch_size": SPEEDRUN_RECIPE["batch_size"],
        "lr": SPEEDRUN_RECIPE["lr"],
        "target": 0.935,
        "ref_width": 64,
        "ref_epochs": 30,
        "shadows": 64,
        "workers": 8,
    },
    "cpu": {
        "n": 1024,
        "n_test": 512,
        "widths": [8, 32, 32],
        "epochs": 8,
        "batch_size": 64,
        # Not the published per-sample scaling (1.5 * 64 / 1024 = 0.09): far too slow for 128 steps.
        "lr": 0.4,
        "target": 0.95,
        "ref_width": 4,
        "ref_epochs": 30,
        "shadows": 4,
        "workers": 0,
    },
}


class EpochAccuracy:
    """EngineHooks that measure test accuracy at every epoch end and keep that time off the clock:
    ``elapsed[e]`` is the training time (wall time minus evaluations) until the end of epoch ``e``."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: np.ndarray) -> None:
        self.model, self.inputs, self.labels = model, inputs, labels
        self.accuracies: list[float] = []
        self.elapsed: list[float] = []
        self.eval_seconds = 0.0
        self.started = time.perf_counter()

    def start(self) -> None:
        synchronize(self.inputs.device)
        self.started = time.perf_counter()

    def epoch_end(self) -> None:
        synchronize(self.inputs.device)
        now = time.perf_counter()
        self.elapsed.append(now - self.started - self.eval_seconds)
        was_training = self.model.training
        predicted = predict_logits(self.model, self.inputs).argmax(axis=1)
        self.model.train(was_training)
        self.accuracies.append(float(np.mean(predicted == self.labels)))
        self.eval_seconds += time.perf_counter() - now

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        if info.get("epoch_end"):
            self.epoch_end()

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


def _summary(hooks: EpochAccuracy, train_seconds: float, images: int, target: float) -> dict[str, Any]:
    """One run's figures; the time to the target excludes evaluation."""
    accuracies = hooks.accuracies
    reached = next((index for index, accuracy in enumerate(accuracies) if accuracy >= target), None)
    return {
        "train_s": round(train_seconds, 3),
        "seconds_to_target": None if reached is None else round(hooks.elapsed[reached], 3),
        "epochs_to_target": None if reached is None else reached + 1,
        "accuracy": round(accuracies[-1], 4),
        "epoch_accuracies": [round(accuracy, 4) for accuracy in accuracies],
        "img_s": round(images / train_seconds, 1),
    }


def speedrun_run(
    dataset: ArrayDataset,
    rows: np.ndarray,
    recipe: TrainRecipe,
    config: dict[str, Any],
    device: torch.device,
    target: float,
) -> tuple[dict[str, Any], nn.Module]:
    """Train ``speedrun_cnn`` from the engine's seeded initialisation on ``rows`` of the training split."""
    torch.manual_seed(SEED)
    model = build_model("speedrun_cnn", config).to(device)
    inputs = torch.from_numpy(dataset.x_train[rows]).to(device)
    labels = torch.from_numpy(dataset.y_train[rows]).to(device)
    hooks = EpochAccuracy(model, torch.from_numpy(dataset.x_test).to(device), dataset.y_test)
    hooks.start()
    result = fit(model, inputs, labels, recipe, seed=SEED, phase="bench", hooks=hooks)
    synchronize(device)
    train_seconds = time.perf_counter() - hooks.started - hooks.eval_seconds
    images = result.samples_per_epoch * recipe.epochs
    return _summary(hooks, train_seconds, images, target), model


def reference_run(
    dataset: ArrayDataset, width: int, epochs: int, device: torch.device, workers: int, target: float
) -> dict[str, Any]:
    """The reference repos' loop: fp32, DataLoader with per-sample crop + flip, their SGD recipe."""
    recipe = TrainRecipe(epochs=epochs, batch_size=REFERENCE_BATCH_SIZE)
    config = {"in_channels": dataset.input_shape[0], "num_classes": dataset.num_classes, "width": width}
    torch.manual_seed(SEED)
    model = build_model("resnet18", config).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    padding = dataset.x_train.shape[-1] // CROP_PADDING_DIVISOR
    source = ReferenceStyleDataset(
        torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train), padding
    )
    loader = DataLoader(
        source,
        batch_size=recipe.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    hooks = EpochAccuracy(model, torch.from_numpy(dataset.x_test).to(device), dataset.y_test)

    def epoch(index: int, limit: int | None = None) -> None:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, index, 0, epochs)  # multistep: per epoch
        for batch_index, (batch, labels) in enumerate(loader):
            if limit is not None and batch_index >= limit:
                break
            batch, labels = batch.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epoch(0, limit=max(WARMUP_SAMPLES // recipe.batch_size, 1))  # warm-up, then start afresh
    torch.manual_seed(SEED)
    model.load_state_dict(build_model("resnet18", config).state_dict())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    hooks.start()
    for index in range(epochs):
        epoch(index)
        hooks.epoch_end()
    train_seconds = hooks.elapsed[-1]
    summary = _summary(hooks, train_seconds, dataset.n_train * epochs, target)
    summary["projected_retrain_160_epochs_s"] = round(train_seconds / epochs * REFERENCE_RETRAIN_EPOCHS, 1)
    return summary


def audit_run(
    dataset: ArrayDataset,
    original: nn.Module,
    recipe: TrainRecipe,
    config: dict[str, Any],
    forget: np.ndarray,
    shadows: int,
    device: torch.device,
) -> dict[str, Any]:
    request = AuditRequest(
        params={**AUDITED_METHOD, "shadows": shadows, "attacks": ["ulira"], "n_bootstrap": 100},
        seed=SEED,
        device=device.type,
        dataset=dataset,
        dataset_sha256="bench/fast_retrain",
        architecture="speedrun_cnn",
        arch_config=config,
        original_weights=state_to_numpy(original),
        original_recipe=recipe.model_dump(mode="json"),
        forget_indices=forget,
        forget_kind="random",
    )
    started = time.perf_counter()
    result = run_audit(request, MemoryShadowStore())
    return {
        "shadows": shadows,
        "method": AUDITED_METHOD["method"],
        "wall_s": round(time.perf_counter() - started, 2),
        "models_trained": int(result.metrics["models_trained"]),
        "ulira_auc": round(float(result.metrics["ulira_auc"]), 4),
    }


def load_npz(path: Path) -> ArrayDataset:
    """A real image set (CIFAR-10 for the issue's 93.5 % target): pixels scaled to [0, 1], then standardised
    per channel with the training split's mean and std, as the speed runs feed it."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    dataset = ArrayDataset.from_arrays(**arrays)
    scale = UINT8_MAX if dataset.x_train.dtype == np.uint8 else 1.0
    train, test = (split.astype(np.float32) / scale for split in (dataset.x_train, dataset.x_test))
    mean, std = train.mean(axis=(0, 2, 3), keepdims=True), train.std(axis=(0, 2, 3), keepdims=True)
    return dataclasses.replace(
        dataset,
        x_train=((train - mean) / std).astype(np.float32),
        x_test=((test - mean) / std).astype(np.float32),
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return round(numerator / denominator, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--n", type=int, help="training images (default: 50,000 on cuda, 1,024 on cpu)")
    parser.add_argument("--n-test", type=int, help="test images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--widths", type=lambda text: [int(part) for part in text.split(",")])
    parser.add_argument("--epochs", type=int, help="speed-run epochs")
    parser.add_argument("--batch-size", type=int, help="speed-run batch size")
    parser.add_argument("--lr", type=float, help="speed-run peak LR (default: 1.5 on cuda, 0.4 on cpu)")
    parser.add_argument("--target", type=float, help="test accuracy to reach")
    parser.add_argument("--forget-fraction", type=float, default=0.1)
    parser.add_argument("--ref-width", type=int, help="ResNet-18 width of the reference loop")
    parser.add_argument("--ref-epochs", type=int, help="epochs of the reference loop")
    parser.add_argument("--shadows", type=int, help="K of the U-LiRA audit (0: no audit)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the reference loop")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--npz",
        type=Path,
        default=None,
        help="an npz of x_train, y_train, x_test, y_test (e.g. CIFAR-10) instead of the procedural set",
    )
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    for name, value in PROFILES[args.device].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.npz is not None:
        dataset = load_npz(args.npz)
        args.n, args.n_test, args.classes = dataset.n_train, dataset.n_test, dataset.num_classes
        args.image_size = dataset.input_shape[-1]
    else:
        dataset = build_dataset(
            "procedural",
            {
                "n_train": args.n,
                "n_test": args.n_test,
                "num_classes": args.classes,
                "channels": CHANNELS,
                "image_size": args.image_size,
            },
        )
    recipe = TrainRecipe.model_validate(
        {
            "base": "speedrun",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
        }
    )
    config = {"in_channels": dataset.input_shape[0], "num_classes": args.classes, "widths": args.widths}
    rng = np.random.default_rng(SEED)
    forget = np.sort(rng.choice(args.n, round(args.forget_fraction * args.n), replace=False)).astype(np.int64)
    retain = np.setdiff1d(np.arange(args.n), forget)

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dataset": {
            "name": str(args.npz) if args.npz is not None else "procedural",
            "n_train": args.n,
            "n_test": args.n_test,
            "size": args.image_size,
        },
        "recipe": recipe.model_dump(mode="json"),
        "arch_config": config,
        "target": args.target,
    }
    with reproducible(device):
        warmup = np.arange(min(WARMUP_SAMPLES, args.n))
        speedrun_run(dataset, warmup, recipe.model_copy(update={"epochs": 1}), config, device, args.target)
        results["original"], original = speedrun_run(
            dataset, np.arange(args.n), recipe, config, device, args.target
        )
        results["retrain"], _ = speedrun_run(dataset, retain, recipe, config, device, args.target)
        results["reference"] = reference_run(
            dataset, args.ref_width, args.ref_epochs, device, args.workers, args.target
        )
        results["reference"]["arch_config"] = {"width": args.ref_width}
    fast, reference = results["retrain"], results["reference"]
    results["ratios"] = {
        "img_s_speedrun_over_reference": _ratio(fast["img_s"], reference["img_s"]),
        "reference_over_retrain_seconds_to_target": _ratio(
            reference["seconds_to_target"], fast["seconds_to_target"]
        ),
        "reference_160_epoch_retrain_over_retrain": _ratio(
            reference["projected_retrain_160_epochs_s"], fast["train_s"]
        ),
    }
    if args.shadows:
        results["audit"] = audit_run(dataset, original, recipe, config, forget, args.shadows, device)

    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "fast_retrain.json").write_text(text)
    return results


if __name__ == "__main__":
    main()
