"""A recovery audit of SFD's one-step generator on digits, end to end through ``execute`` (CPU-sized).

Trains a DDPM teacher, its gold retrain without ``--forget`` and SFD from the teacher, then audits the
generator (and, as a check of the control, a second retrain with another seed) against the teacher and the
seed-0 retrain, and prints the forget-class rates before/after each transform, the relearning curves and the
scores. ``--json FILE`` writes the results.

    OMP_NUM_THREADS=1 .venv/bin/python bench/recovery_generative.py --teacher-steps 800 --sfd-steps 150
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from workers.engine.datasets import build_dataset
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.hooks import MemoryCache


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--forget", type=int, default=3)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--sfd-steps", type=int, default=150)
    parser.add_argument("--sampler-steps", type=int, default=25)
    parser.add_argument("--samples", type=int, default=40, help="per retained class")
    parser.add_argument("--forget-samples", type=int, default=200)
    parser.add_argument("--relearn-steps", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = build_dataset("digits")
    cache = MemoryCache()
    arch = {"base_channels": args.channels, "channel_mults": [1, 2], "norm_groups": 4}
    evaluation = {
        "samples": {"samples_per_class": args.samples, "forget_samples": args.forget_samples},
        "sampler": {"steps": args.sampler_steps},
    }
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, request: EngineRequest) -> EngineResult:
        begin = time.perf_counter()
        result = execute(request)
        timings[name] = time.perf_counter() - begin
        print(f"{name}: {timings[name]:.1f} s", flush=True)
        return result

    teacher = timed(
        "teacher",
        EngineRequest(
            kind="train", method=None, params={"steps": args.teacher_steps, "batch_size": 64}, seed=0,
            device=args.device, dataset=digits, architecture="unet_ddpm", arch_config=arch,
        ),
    )  # fmt: skip
    base: dict[str, Any] = {
        "method": None,
        "device": args.device,
        "dataset": digits,
        "architecture": "unet_ddpm",
        "arch_config": teacher.details["arch_config"],
        "weights": teacher.weights,
        "forget_indices": np.flatnonzero(digits.y_train == args.forget).astype(np.int64),
        "forget_class": args.forget,
        "original_recipe": teacher.details["params"]["recipe"],
        "cache": cache,
        "dataset_sha256": "bench-digits",
    }
    retrains = [
        timed(
            f"retrain_seed{seed}",
            EngineRequest(**{**base, "kind": "retrain", "seed": seed, "params": {"evaluation": evaluation}}),
        )
        for seed in (0, 1)
    ]
    sfd = timed(
        "sfd",
        EngineRequest(
            **{
                **base,
                "kind": "unlearn",
                "method": "sfd",
                "seed": 0,
                "params": {
                    "steps": args.sfd_steps,
                    "override_class": (args.forget + 1) % 10,
                    "evaluation": evaluation,
                },
            }
        ),
    )
    params = {"relearn_steps": args.relearn_steps, "evaluation": evaluation}
    controls = {"original": teacher.weights, "retrain": retrains[0].weights}
    audits = {
        "sfd": timed(
            "audit_sfd",
            EngineRequest(
                **{
                    **base,
                    "kind": "recovery",
                    "seed": 0,
                    "params": params,
                    "architecture": "unet_one_step",
                    "arch_config": sfd.arch_config,
                    "weights": sfd.weights,
                    "controls": controls,
                }
            ),
        ),
        "retrain_seed1": timed(
            "audit_retrain_seed1",
            EngineRequest(
                **{
                    **base,
                    "kind": "recovery",
                    "seed": 0,
                    "params": params,
                    "weights": retrains[1].weights,
                    "controls": controls,
                }
            ),
        ),
    }
    out: dict[str, Any] = {"args": vars(args), "timings": timings, "audits": {}}
    for name, audit in audits.items():
        recovery, metrics = audit.details["recovery"], audit.metrics
        print(f"\n== {name}: gap {recovery['gap']:.1f} points, scores {recovery['scores']}")
        print("before:", {role: round(v["forget_class_rate"], 1) for role, v in recovery["before"].items()})
        for row in recovery["transforms"]:
            print(
                f"  {row['name']:>9}: {row['unlearned']['forget_class_rate']:5.1f}"
                f" (retrain {row['retrain']['forget_class_rate']:5.1f})"
                f"  retain acc {row['unlearned']['retain_accuracy']:5.1f}"
            )
        for source, curve in recovery["relearning"].items():
            print(
                f"  {source:>17}: {[round(v, 1) for v in curve['unlearned']]}"
                f" (retrain {[round(v, 1) for v in curve['retrain']]})"
                f" steps {curve['steps_to_recover']} vs {curve['control_steps_to_recover']}"
            )
        out["audits"][name] = {"recovery": recovery, "metrics": metrics, "timings": audit.timings}
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
