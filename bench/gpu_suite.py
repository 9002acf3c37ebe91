"""One command, one device, one table: the figures Lethe's performance goals are stated in (issue 16).

Stages, each on the same device in one process (a lent GPU runs the ``cuda`` profile in a few minutes; the
``cpu`` profile is a scaled-down run that CI uses to keep every stage working):

1. **training loop**: ``fit`` (device-resident data, batched augmentation, bf16 autocast + channels_last on
   CUDA) against the reference-style loop (fp32, a torch ``DataLoader`` with per-sample crop/flip) on a
   CIFAR-shaped ResNet-18 (``bench/train_loop.py``); goal ≥ 3x images/s.
2. **retrain oracle**: one epoch of a real ``retrain`` engine run (ResNet-18, 10 % random forget set, the
   OPTML recipe's lr/momentum/weight decay/batch) timed without its evaluation, and its projection to the
   paper's recipe: 160 epochs over CIFAR-10's 45,000 retained images. The reference loop's projection from
   stage 1 stands beside it.
3. **vectorised shadows**: K small CNNs trained all at once (``workers.engine.vectorised``) against one after
   another (``bench/vmap_shadows.py``); goal ≥ 6x at K = 64.
4. **audit**: a cold U-LiRA/LiRA/RMIA/Kaggle audit (``ft`` audited) with K pipelines on small_cnn/digits
   (``bench/audit_scale.py``), wall time.
5. **evaluation**: eval-mode fp32 logits of the ResNet-18 over the stage-1 images (``predict_logits``, what
   every job's metrics use), images/s.

    python bench/gpu_suite.py                 # cuda profile on a GPU, else the cpu profile
    python bench/gpu_suite.py --profile cpu   # the CI-sized run

Prints the table (device name in the title) and writes JSON to ``--json`` and ``$OUT/gpu_suite.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.architectures.build import build_model
from workers.engine.audit.store import MemoryShadowStore
from workers.engine.datasets import build_dataset
from workers.engine.execute import EngineRequest, execute, predict_logits, resolve_device
from workers.engine.methods.params import REFERENCE_RETRAIN_EPOCHS
from workers.engine.training import reproducible, synchronize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import audit_scale
import train_loop
import vmap_shadows

SEED = 0
CHANNELS = 3
NUM_CLASSES = 10
FORGET_FRACTION = 0.1
# The paper-scale retrain the projection targets: CIFAR-10's 50,000 training images less a 10 % forget set,
# for the OPTML reference's retrain epochs (REFERENCE_RETRAIN_EPOCHS; reference notes: optml.md).
PAPER_RETAIN_IMAGES = 45_000
# The OPTML retrain recipe but its length (one timed epoch here).
REFERENCE_RECIPE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "augment": True, "schedule": "constant"}
GOALS = {"loop_ratio": 3.0, "shadow_ratio": 6.0}


@dataclass(frozen=True)
class Profile:
    image_size: int
    loop_n: int  # stage 1 and 5 images
    width: int  # ResNet-18 width (64 = the published network)
    batch_size: int
    loop_epochs: int
    loader_workers: int
    retrain_n: int
    shadow_n: int
    shadow_ks: tuple[int, ...]
    shadow_width: int  # small_cnn channels [w, 2w]
    shadow_epochs: int
    audit_k: int


PROFILES = {
    "cuda": Profile(
        image_size=32, loop_n=10_000, width=64, batch_size=256, loop_epochs=2, loader_workers=8,
        retrain_n=10_000, shadow_n=10_000, shadow_ks=(16, 64), shadow_width=32, shadow_epochs=1, audit_k=64,
    ),
    "cpu": Profile(
        image_size=16, loop_n=128, width=4, batch_size=32, loop_epochs=1, loader_workers=0,
        retrain_n=160, shadow_n=128, shadow_ks=(4,), shadow_width=4, shadow_epochs=1, audit_k=3,
    ),
}  # fmt: skip


def _procedural(n_train: int, n_test: int, image_size: int) -> Any:
    return build_dataset(
        "procedural",
        {
            "n_train": n_train,
            "n_test": n_test,
            "image_size": image_size,
            "channels": CHANNELS,
            "num_classes": NUM_CLASSES,
            "label_noise": 0.0,
        },
    )


def _resnet_config(profile: Profile) -> dict[str, Any]:
    return {"in_channels": CHANNELS, "num_classes": NUM_CLASSES, "width": profile.width}


def training_loop(profile: Profile, device: str) -> dict[str, Any]:
    return train_loop.measure_loops(
        "resnet18", profile.loop_n, profile.image_size, profile.width, profile.batch_size,
        profile.loop_epochs, device, profile.loader_workers,
    )  # fmt: skip


def retrain_oracle(profile: Profile, device: str, reference_img_s: float) -> dict[str, Any]:
    dataset = _procedural(
        profile.retrain_n, max(NUM_CLASSES * 2, profile.retrain_n // 10), profile.image_size
    )
    generator = np.random.default_rng(SEED)
    forget = np.sort(
        generator.choice(dataset.n_train, round(FORGET_FRACTION * dataset.n_train), replace=False)
    )
    recipe = {**REFERENCE_RECIPE, "epochs": 1, "batch_size": profile.batch_size}

    def run() -> tuple[float, Any]:
        synchronize(torch.device(device))
        started = time.perf_counter()
        result = execute(
            EngineRequest(
                kind="retrain",
                method="retrain",
                params={"recipe": recipe},
                seed=SEED,
                device=device,
                dataset=dataset,
                architecture="resnet18",
                arch_config=_resnet_config(profile),
                forget_indices=forget.astype(np.int64),
            )
        )
        return time.perf_counter() - started, result

    run()  # warm-up: allocator, cuDNN autotuning
    wall_s, result = run()
    retained = dataset.n_train - len(forget)
    epoch_s = float(result.timings.get("method_s", wall_s))
    projected = epoch_s * (PAPER_RETAIN_IMAGES / retained) * REFERENCE_RETRAIN_EPOCHS
    reference_projected = PAPER_RETAIN_IMAGES / reference_img_s * REFERENCE_RETRAIN_EPOCHS
    return {
        "retained_images": retained,
        "epoch_s": round(epoch_s, 3),
        "wall_s_with_evaluation": round(wall_s, 3),
        "img_s": round(retained / epoch_s, 1),
        "projected_paper_retrain_s": round(projected, 1),
        "reference_projected_paper_retrain_s": round(reference_projected, 1),
        "reference_over_lethe": round(reference_projected / projected, 3),
        "timings": result.timings,
    }


def vectorised_shadows(profile: Profile, device: str) -> list[dict[str, Any]]:
    dataset = _procedural(profile.shadow_n, NUM_CLASSES, profile.image_size)
    inputs = torch.from_numpy(dataset.x_train).to(device)
    labels = torch.from_numpy(dataset.y_train).to(device)
    settings = argparse.Namespace(
        image_size=profile.image_size, mlp_hidden=64, cnn_width=profile.shadow_width,
        batch_size=profile.batch_size, epochs=profile.shadow_epochs, augment=True, max_sequential_k=None,
        no_plain_vmap=True, repeats=1,
    )  # fmt: skip
    return [vmap_shadows.measure("small_cnn", count, inputs, labels, settings) for count in profile.shadow_ks]


def audit(profile: Profile, device: str) -> dict[str, Any]:
    weights = audit_scale._original("small_cnn", device)
    metrics, seconds = audit_scale._audit("small_cnn", weights, profile.audit_k, device, MemoryShadowStore())
    return {
        "K": profile.audit_k,
        "models_trained": 3 * profile.audit_k,
        "wall_s": round(seconds, 2),
        **metrics,
    }


def evaluation(profile: Profile, device: str) -> dict[str, Any]:
    dataset = _procedural(profile.loop_n, NUM_CLASSES, profile.image_size)
    torch.manual_seed(SEED)
    model = build_model("resnet18", _resnet_config(profile)).to(device)
    inputs = torch.from_numpy(dataset.x_train).to(device)
    predict_logits(model, inputs[: profile.batch_size])  # warm-up
    synchronize(torch.device(device))
    started = time.perf_counter()
    predict_logits(model, inputs)
    synchronize(torch.device(device))
    seconds = time.perf_counter() - started
    return {"images": dataset.n_train, "img_s": round(dataset.n_train / seconds, 1), "precision": "fp32"}


def table(results: dict[str, Any]) -> str:
    loop, retrain, evaluate, audited = (
        results[k] for k in ("training_loop", "retrain", "evaluation", "audit")
    )
    rows = [
        ("training loop, ResNet-18 (img/s)", f"{loop['reference_img_s']:,.0f}", f"{loop['lethe_img_s']:,.0f}",
         f"{loop['lethe_over_reference']:.2f}x (goal >= {GOALS['loop_ratio']:.0f}x)"),
        ("retrain oracle, one epoch (s)", "", f"{retrain['epoch_s']:.2f}",
         f"{retrain['retained_images']} images, {retrain['img_s']:,.0f} img/s"),
        (f"paper retrain, {REFERENCE_RETRAIN_EPOCHS} ep x {PAPER_RETAIN_IMAGES:,} (s, projected)",
         f"{retrain['reference_projected_paper_retrain_s']:,.0f}",
         f"{retrain['projected_paper_retrain_s']:,.0f}",
         f"{retrain['reference_over_lethe']:.2f}x"),
    ]  # fmt: skip
    for row in results["shadows"]:
        ratio = row.get("vectorised_over_sequential")
        rows.append(
            (
                f"shadows small_cnn, K = {row['K']} (img/s)",
                f"{row.get('sequential_img_s', float('nan')):,.0f}",
                f"{row['vectorised_img_s']:,.0f}",
                f"{ratio:.2f}x (goal >= {GOALS['shadow_ratio']:.0f}x at K = 64)" if ratio else "",
            )
        )
    rows.append((f"audit small_cnn/digits, K = {audited['K']} (s)", "", f"{audited['wall_s']:.1f}",
                 f"{audited['models_trained']:.0f} models trained (cold store)"))  # fmt: skip
    rows.append(("evaluation, ResNet-18 fp32 (img/s)", "", f"{evaluate['img_s']:,.0f}", ""))
    header = ("stage", "reference", "lethe", "ratio / note")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Lethe GPU suite on {results['device']} (torch {results['torch']}, profile {results['profile']})"
    ]
    for row in [header, *rows]:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="default: the device's type")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile or torch.device(device).type]
    started = time.perf_counter()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "profile": args.profile or torch.device(device).type,
        "settings": asdict(profile),
    }
    with reproducible(torch.device(device)):
        results["training_loop"] = training_loop(profile, device)
        results["retrain"] = retrain_oracle(profile, device, results["training_loop"]["reference_img_s"])
        results["shadows"] = vectorised_shadows(profile, device)
        results["audit"] = audit(profile, device)
        results["evaluation"] = evaluation(profile, device)
    results["suite_s"] = round(time.perf_counter() - started, 1)
    results["table"] = table(results)
    print(results["table"])
    print(f"suite: {results['suite_s']} s")
    text = json.dumps(results, indent=1, default=str)
    if args.json is not None:
        args.json.write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_suite.json").write_text(text)
    return results


if __name__ == "__main__":
    main()
