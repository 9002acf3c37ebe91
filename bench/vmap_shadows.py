"""Throughput of K shadow models trained one after another vs all at once, in one run on one device.

sequential: ``workers.engine.training.fit`` K times (seeded init, each model on its own random half of the
            pool), the way the engine trains one model;
vectorised: ``workers.engine.vectorised.train_models``, the same K models on the same subsets at once;
plain_vmap: the ``/work/shared/anchors/vmap_anchor.py`` formulation for the same K and step count
            (``stack_module_state`` + ``vmap(grad_and_value(functional_call))``, random minibatches, SGD
            momentum in a Python loop over the stacked parameters), as the yardstick the anchor measured.
            It does less work per image than the other two: no augmentation, no weight decay, no
            per-epoch shuffling plan, no unequal subset sizes; compare with ``--no-augment`` for the
            closest match.

Every model's subset is a Bernoulli(1/2) draw over a pool of ``--n`` procedural images (so subset sizes
differ slightly, as for real shadow models). Throughput is aggregate training images per second: K x (images
per model and epoch) x epochs / wall time, including building the K models. Each mode first runs one
untimed warm-up (allocator, cuDNN autotuning, MKL start-up) on the same K and batch shapes; then the modes
run interleaved for ``--repeats`` rounds and each keeps its best round. Prints one JSON line per
(architecture, K) and writes everything to ``$OUT/vmap_shadows.json`` when ``OUT`` is set (and to
``--json PATH``).

CPU smoke run (~2 min on 2 cores):  python bench/vmap_shadows.py --threads 1
GPU:                                 python bench/vmap_shadows.py --device cuda
(On a shared 2-core CPU, two OpenMP threads slow small kernels down many times over; use --threads 1.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from workers.engine.architectures.build import build_model
from workers.engine.datasets import build_dataset
from workers.engine.execute import resolve_device
from workers.engine.methods.params import TrainRecipe
from workers.engine.training import batch_bounds, fit
from workers.engine.vectorised import train_models

NUM_CLASSES = 10
CHANNELS = 3
INCLUSION_PROBABILITY = 0.5  # each pool sample is in a shadow model's training set with this probability
SUBSET_SEED = 0
BENCH_RECIPE: dict[str, Any] = {
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "constant",
    "augment": True,
}
# Defaults by device: a CPU run must finish in a minute or two; a GPU run should fill the card.
CPU_DEFAULTS = {
    "n": 1024, "image_size": 16, "batch_size": 64, "epochs": 1, "mlp_hidden": 128, "cnn_width": 16,
    "repeats": 2,
}  # fmt: skip
CUDA_DEFAULTS = {
    "n": 10_000, "image_size": 32, "batch_size": 256, "epochs": 2, "mlp_hidden": 512, "cnn_width": 32,
    "repeats": 3,
}  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _arch_config(arch: str, image_size: int, mlp_hidden: int, cnn_width: int) -> dict[str, Any]:
    if arch == "small_cnn":
        return {
            "in_channels": CHANNELS,
            "image_size": image_size,
            "channels": [cnn_width, 2 * cnn_width],
            "num_classes": NUM_CLASSES,
        }
    return {
        "input_shape": [CHANNELS, image_size, image_size],
        "hidden": [mlp_hidden],
        "num_classes": NUM_CLASSES,
    }


def _subsets(pool: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(SUBSET_SEED)
    return [np.flatnonzero(rng.random(pool) < INCLUSION_PROBABILITY).astype(np.int64) for _ in range(count)]


def _timed(device: torch.device, run: Callable[[], None]) -> float:
    _synchronize(device)
    started = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - started


def sequential(
    arch: str, config: dict[str, Any], inputs: torch.Tensor, labels: torch.Tensor,
    subsets: list[np.ndarray], recipe: TrainRecipe,
) -> None:  # fmt: skip
    for seed, subset in enumerate(subsets):
        torch.manual_seed(seed)
        model = build_model(arch, config).to(inputs.device)
        index = torch.from_numpy(subset).to(inputs.device)
        fit(model, inputs[index], labels[index], recipe, seed=seed, phase="bench")


def vectorised(
    arch: str, config: dict[str, Any], inputs: torch.Tensor, labels: torch.Tensor,
    subsets: list[np.ndarray], recipe: TrainRecipe,
) -> None:  # fmt: skip
    train_models(arch, config, inputs, labels, subsets, recipe, list(range(len(subsets))))


def plain_vmap(
    arch: str, config: dict[str, Any], inputs: torch.Tensor, labels: torch.Tensor, count: int,
    batch_size: int, steps: int,
) -> None:  # fmt: skip
    """The anchor's vectorised loop on the engine's architecture: random minibatches, no augmentation."""
    device = inputs.device
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(build_model(arch, config).to(device))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    momentum = {name: torch.zeros_like(value) for name, value in params.items()}
    on_cuda = device.type == "cuda"

    def loss_fn(
        params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], batch: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            outputs = functional_call(base, (params, buffers), (batch,))
        return F.cross_entropy(outputs.float(), targets)

    step_fn = vmap(grad_and_value(loss_fn), randomness="different")
    for _ in range(steps):
        index = torch.randint(0, labels.shape[0], (count, batch_size), device=device)
        grads, _ = step_fn(params, buffers, inputs[index], labels[index])
        with torch.no_grad():
            for name in params:
                momentum[name].mul_(BENCH_RECIPE["momentum"]).add_(grads[name])
                params[name].sub_(BENCH_RECIPE["lr"] * momentum[name])


def measure(
    arch: str, count: int, inputs: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """Images/s of each mode for K = ``count``: the modes run interleaved, ``args.repeats`` rounds, and
    each keeps its best round (a shared machine's load comes and goes; the best round is the least
    disturbed)."""
    device = inputs.device
    config = _arch_config(arch, args.image_size, args.mlp_hidden, args.cnn_width)
    recipe = TrainRecipe(
        batch_size=args.batch_size, epochs=args.epochs, **{**BENCH_RECIPE, "augment": args.augment}
    )
    warm_recipe = recipe.model_copy(update={"epochs": 1})
    subsets = _subsets(inputs.shape[0], count)
    # Warm-up subsets: two batches each, so the warm-up sees the timed run's batch shapes.
    warm_subsets = [subset[: 2 * args.batch_size] for subset in subsets]
    images = args.epochs * sum(batch_bounds(len(subset), args.batch_size)[-1][1] for subset in subsets)
    steps = args.epochs * max(len(batch_bounds(len(subset), args.batch_size)) for subset in subsets)
    # name -> (warm-up, timed run, images it trains)
    modes: dict[str, tuple[Callable[[], None], Callable[[], None], int]] = {
        "vectorised": (
            lambda: vectorised(arch, config, inputs, labels, warm_subsets, warm_recipe),
            lambda: vectorised(arch, config, inputs, labels, subsets, recipe),
            images,
        ),
    }
    if args.max_sequential_k is None or count <= args.max_sequential_k:
        modes["sequential"] = (
            lambda: sequential(arch, config, inputs, labels, warm_subsets[:1], warm_recipe),
            lambda: sequential(arch, config, inputs, labels, subsets, recipe),
            images,
        )
    if not args.no_plain_vmap:
        modes["plain_vmap"] = (
            lambda: plain_vmap(arch, config, inputs, labels, count, args.batch_size, 2),
            lambda: plain_vmap(arch, config, inputs, labels, count, args.batch_size, steps),
            count * steps * args.batch_size,
        )
    result: dict[str, Any] = {"arch": arch, "K": count, "images": images, "steps": steps}
    best: dict[str, float] = {}
    for name, (warm_up, _, _) in list(modes.items()):
        try:
            warm_up()
        except Exception as error:  # record, don't hide (as the anchor does)
            result[f"{name}_error"] = repr(error)[:300]
            del modes[name]
    for _ in range(args.repeats):
        for name, (_, run, _) in modes.items():
            best[name] = min(best.get(name, float("inf")), _timed(device, run))
    for name, (_, _, trained) in modes.items():
        result[f"{name}_img_s"] = round(trained / best[name], 1)
    if "sequential" in best:
        for name in ("vectorised", "plain_vmap"):
            if name in best:
                result[f"{name}_over_sequential"] = round(
                    result[f"{name}_img_s"] / result["sequential_img_s"], 3
                )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", default="mlp,small_cnn", help="comma-separated: mlp, small_cnn")
    parser.add_argument("--ks", default="1,16,64", help="comma-separated model counts K")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--n", type=int, default=None, help="pool size; each model trains on ~half")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per model")
    parser.add_argument("--mlp-hidden", type=int, default=None, help="width of the MLP's hidden layer")
    parser.add_argument("--cnn-width", type=int, default=None, help="small_cnn channels: [w, 2w]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds; best counts")
    parser.add_argument(
        "--max-sequential-k", type=int, default=None,
        help="skip the (slow) sequential baseline above this K; default: always run it",
    )  # fmt: skip
    parser.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True,
        help="crop+flip in sequential/vectorised (the plain vmap loop never augments, as the anchor)",
    )  # fmt: skip
    parser.add_argument("--no-plain-vmap", action="store_true", help="skip the anchor-style plain vmap run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    device = torch.device(resolve_device(args.device))
    defaults = CUDA_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    dataset = build_dataset(
        "procedural",
        {
            "n_train": args.n,
            "n_test": 10,
            "image_size": args.image_size,
            "channels": CHANNELS,
            "num_classes": NUM_CLASSES,
            "label_noise": 0.0,
        },
    )
    inputs = torch.from_numpy(dataset.x_train).to(device)
    labels = torch.from_numpy(dataset.y_train).to(device)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {key: getattr(args, key) for key in defaults},
        "recipe": {**BENCH_RECIPE, "augment": args.augment},
    }
    print(json.dumps(meta), flush=True)
    rows = []
    for arch in args.archs.split(","):
        for count in (int(k) for k in args.ks.split(",")):
            row = {
                "device": meta["device"],
                **measure(arch, count, inputs, labels, args),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = json.dumps({**meta, "results": rows}, indent=1)
    if args.json is not None:
        args.json.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "vmap_shadows.json").write_text(text)


if __name__ == "__main__":
    main()
