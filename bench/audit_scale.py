"""What a privacy audit costs as K grows: models trained, models reused, wall time, per architecture.

For each architecture (mlp, small_cnn on digits) and each K (``--shadows``), the engine's audit
(``workers.engine.audit.pipeline.run_audit``, every attack) runs twice against one in-memory shadow store:

- ``cold``: an empty store, so every shadow model, retrain and unlearning run is computed;
- ``warm``: the same audit again, so every model comes from the store and only predictions and attacks run.

The original model is trained once per architecture (same recipe as the shadows). Prints one table row per
(architecture, K, pass) and writes the rows as JSON to ``--json`` (and ``$OUT/audit_scale.json`` when ``OUT``
is set, as on a lent GPU machine).

CPU (2 cores, ~10 min for the defaults):  python bench/audit_scale.py --threads 1
Quick look:                              python bench/audit_scale.py --shadows 4 --threads 1
GPU:                                     python bench/audit_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.audit.pipeline import AuditRequest, run_audit
from workers.engine.audit.store import MemoryShadowStore
from workers.engine.datasets import build_dataset
from workers.engine.execute import EngineRequest, execute

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {"input_shape": [1, 8, 8], "hidden": [64]},
    "small_cnn": {"in_channels": 1, "image_size": 8, "channels": [16, 32]},
}
RECIPE: dict[str, Any] = {"epochs": 8, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "augment": False}
AUDITED = {"method": "ft", "method_params": {"epochs": 2, "lr": 0.01, "batch_size": 64, "augment": False}}
FORGET_FRACTION = 0.1
SEED = 0


def _original(architecture: str, device: str) -> dict[str, np.ndarray]:
    result = execute(
        EngineRequest(
            kind="train",
            method="train",
            params={"recipe": RECIPE},
            seed=SEED,
            device=device,
            dataset=build_dataset("digits"),
            architecture=architecture,
            arch_config=ARCHITECTURES[architecture],
        )
    )
    assert result.weights is not None
    return result.weights


def _audit(
    architecture: str, weights: dict[str, np.ndarray], shadows: int, device: str, store: MemoryShadowStore
) -> tuple[dict[str, float], float]:
    dataset = build_dataset("digits")
    generator = np.random.default_rng(SEED)
    forget = np.sort(
        generator.choice(dataset.n_train, round(FORGET_FRACTION * dataset.n_train), replace=False)
    )
    request = AuditRequest(
        params={**AUDITED, "shadows": shadows},
        seed=SEED,
        device=device,
        dataset=dataset,
        dataset_sha256=f"digits/{architecture}",
        architecture=architecture,
        arch_config=ARCHITECTURES[architecture],
        original_weights=weights,
        original_recipe=RECIPE,
        forget_indices=forget.astype(np.int64),
        forget_kind="random",
    )
    started = time.perf_counter()
    result = run_audit(request, store)
    return result.metrics, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--architectures", nargs="+", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES)
    )
    parser.add_argument("--shadows", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=Path("var/audit_scale.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    header = (
        f"{'architecture':<12} {'K':>4} {'pass':<5} {'trained':>8} {'reused':>7} {'wall s':>8} "
        f"{'U-LiRA AUC':>10}"
    )
    print(header)
    print("-" * len(header))
    for architecture in args.architectures:
        weights = _original(architecture, args.device)
        for shadows in args.shadows:
            store = MemoryShadowStore()
            for name in ("cold", "warm"):
                metrics, wall = _audit(architecture, weights, shadows, args.device, store)
                row = {
                    "architecture": architecture,
                    "shadows": shadows,
                    "pass": name,
                    "models_trained": int(metrics["models_trained"]),
                    "models_reused": int(metrics["models_reused"]),
                    "wall_s": round(wall, 2),
                    "ulira_auc": metrics.get("ulira_auc"),
                    "device": args.device,
                    "torch_threads": torch.get_num_threads(),
                }
                rows.append(row)
                auc = "-" if row["ulira_auc"] is None else f"{row['ulira_auc']:.3f}"
                print(
                    f"{architecture:<12} {shadows:>4} {name:<5} {row['models_trained']:>8} "
                    f"{row['models_reused']:>7} {wall:>8.1f} {auc:>10}",
                    flush=True,
                )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "audit_scale.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
