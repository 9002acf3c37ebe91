"""Throughput of Lethe's training loop against the reference repos' loop style, in one run on one device.

reference: fp32, torch DataLoader over CPU float tensors, per-sample RandomCrop(pad)+flip inside
           ``Dataset.__getitem__`` (the Unlearn-Sparse / SalUn / WorstCase style, optml.md §1.1);
lethe:     ``workers.engine.training.fit`` - device-resident data, batched on-device crop/flip, and on CUDA
           bf16 autocast + channels_last.

Both train the same architecture from the same initialisation with the same SGD recipe and batch size on
the same procedural images. Each side gets one untimed warm-up epoch (cuDNN autotuning, allocator,
DataLoader worker start-up), then ``--epochs`` timed epochs. Prints images/s for both and the ratio.

CPU smoke run (< 1 min):  python bench/train_loop.py
GPU comparison:           python bench/train_loop.py --arch resnet18 --n 10000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workers.engine.architectures.build import build_model
from workers.engine.datasets import build_dataset
from workers.engine.execute import resolve_device
from workers.engine.methods.params import TrainRecipe
from workers.engine.training import CROP_PADDING_DIVISOR, FLIP_PROBABILITY, fit

NUM_CLASSES = 10
CHANNELS = 3
DEFAULT_CPU_WORKERS = 0  # extra processes only compete for the cores the model needs on CPU
DEFAULT_CUDA_WORKERS = 8  # what gpu_anchor.py uses
INIT_SEED = 0
BENCH_RECIPE = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant", "augment": True}


class ReferenceStyleDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Per-sample zero-pad + random crop + random horizontal flip, as torchvision transforms would do."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, padding: int) -> None:
        self.inputs, self.labels, self.padding = inputs, labels, padding

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.inputs[index]
        height, width = image.shape[-2:]
        padded = F.pad(image, (self.padding,) * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        crop = padded[:, top : top + height, left : left + width]
        if torch.rand(()) < FLIP_PROBABILITY:
            crop = crop.flip(2)
        return crop, self.labels[index]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_epochs(
    model: nn.Module, loader: DataLoader[Any], recipe: TrainRecipe, device: torch.device, epochs: int
) -> float:
    """Train ``epochs`` epochs the reference way; return seconds."""
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    model.train()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        for batch, labels in loader:
            batch = batch.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    _synchronize(device)
    return time.perf_counter() - started


def lethe_epochs(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, recipe: TrainRecipe, epochs: int
) -> tuple[float, int]:
    """Train ``epochs`` epochs with ``fit``; return (seconds, images per epoch)."""
    device = inputs.device
    _synchronize(device)
    started = time.perf_counter()
    result = fit(
        model, inputs, labels, recipe.model_copy(update={"epochs": epochs}), seed=INIT_SEED, phase="bench"
    )
    _synchronize(device)
    return time.perf_counter() - started, result.samples_per_epoch


def _arch_config(arch: str, image_size: int, width: int) -> dict[str, Any]:
    if arch == "resnet18":
        return {"in_channels": CHANNELS, "num_classes": NUM_CLASSES, "width": width}
    if arch == "small_cnn":
        return {"in_channels": CHANNELS, "image_size": image_size, "num_classes": NUM_CLASSES}
    return {"input_shape": [CHANNELS, image_size, image_size], "num_classes": NUM_CLASSES, "hidden": [512]}


def _fresh_model(arch: str, config: dict[str, Any], device: torch.device) -> nn.Module:
    torch.manual_seed(INIT_SEED)  # both loops start from identical weights
    return build_model(arch, config).to(device)


def measure_loops(
    arch: str, n: int, image_size: int, width: int, batch_size: int, epochs: int, device_name: str,
    workers: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Images/s of the reference-style loop and of ``fit`` on the same data, model and recipe."""
    device = torch.device(resolve_device(device_name))
    workers = (
        workers
        if workers is not None
        else (DEFAULT_CUDA_WORKERS if device.type == "cuda" else DEFAULT_CPU_WORKERS)
    )
    torch.backends.cudnn.benchmark = device.type == "cuda"
    dataset = build_dataset(
        "procedural",
        {"n_train": n, "n_test": 10, "image_size": image_size, "channels": CHANNELS, "label_noise": 0.0},
    )
    recipe = TrainRecipe(batch_size=batch_size, epochs=1, **BENCH_RECIPE)
    config = _arch_config(arch, image_size, width)
    cpu_inputs, cpu_labels = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)

    loader = DataLoader(
        ReferenceStyleDataset(cpu_inputs, cpu_labels, image_size // CROP_PADDING_DIVISOR),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    model = _fresh_model(arch, config, device)
    reference_epochs(model, loader, recipe, device, epochs=1)  # warm-up
    reference_seconds = reference_epochs(model, loader, recipe, device, epochs)
    reference_rate = n * epochs / reference_seconds

    model = _fresh_model(arch, config, device)
    inputs, labels = cpu_inputs.to(device), cpu_labels.to(device)
    lethe_epochs(model, inputs, labels, recipe, epochs=1)  # warm-up
    lethe_seconds, per_epoch = lethe_epochs(model, inputs, labels, recipe, epochs)
    lethe_rate = per_epoch * epochs / lethe_seconds
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "arch": arch,
        "arch_config": config,
        "n": n,
        "batch_size": batch_size,
        "timed_epochs": epochs,
        "reference_workers": workers,
        "reference_img_s": round(reference_rate, 1),
        "lethe_img_s": round(lethe_rate, 1),
        "lethe_over_reference": round(lethe_rate / reference_rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=["small_cnn", "resnet18", "mlp"], default="small_cnn")
    parser.add_argument("--n", type=int, default=2048, help="training images")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="resnet18 width (64 = standard)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loop")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the reference loop")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    results = measure_loops(
        args.arch,
        args.n,
        args.image_size,
        args.width,
        args.batch_size,
        args.epochs,
        args.device,
        args.workers,
    )
    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "train_loop.json").write_text(text)


if __name__ == "__main__":
    main()
