"""The device check's client half (bench/gpu_e2e.sh starts the service): train -> retrain -> ft -> evaluate
-> audit through the HTTP API, once per device, then the metrics side by side within stated tolerances, the
timings and the device each job recorded.

Each device's chain runs under its own tenant (its own API key): the audit shadow store is per tenant and its
keys do not name the device, so a second chain in the same tenant would reuse the first one's shadows instead
of training its own.

On CUDA every step trains under bf16 autocast (channels_last for the CNN), on the CPU in float32, so the two
runs follow different rounding and only agree up to the tolerances below; CPU against CPU must agree exactly
(deterministic CPU kernels, same seeds), which is what the CPU-only run checks.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from app.client import LetheClient

SEED = 0
FORGET_FRACTION = 0.1
POLL_S = 0.25
JOB_TIMEOUT_S = 1800.0
# Points (metrics in percent) and AUC units. bf16 autocast changes every step's rounding, so two trainings
# diverge; what must agree is their quality, not their bits. MIA-Efficacy is an attack's success rate on a
# 10 % forget set (about 144 digits): noisier than the accuracies.
TOLERANCES = {"accuracy": 3.0, "MIA-Efficacy": 5.0, "auc": 0.10}
COMPARED: dict[str, tuple[str, ...]] = {
    "train": ("train_accuracy", "test_accuracy"),
    "retrain": ("UA", "RA", "TA", "MIA-Efficacy"),
    "ft": ("UA", "RA", "TA", "MIA-Efficacy"),
    "evaluate": ("UA", "RA", "TA", "MIA-Efficacy"),
    "audit": ("ulira_auc",),
}
SIZES: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: what CI runs (tests/bench/test_gpu_e2e.py).
    "tiny": {"channels": [8], "epochs": 1, "ft_epochs": 1, "shadows": 3, "bootstrap": 20},
    # The lent-device run: still small (digits, a two-block CNN), long enough for the metrics to settle.
    "small": {"channels": [32, 64], "epochs": 15, "ft_epochs": 3, "shadows": 8, "bootstrap": 200},
}


def tolerance(metric: str) -> float:
    if metric.endswith("auc"):
        return TOLERANCES["auc"]
    return TOLERANCES.get(metric, TOLERANCES["accuracy"])


class Chain:
    """One device's jobs, in their own tenant."""

    def __init__(self, client: LetheClient, device: str, size: dict[str, Any]) -> None:
        self.client = client
        self.device = device
        self.size = size
        self.jobs: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0

    def _run(self, step: str, body: dict[str, Any]) -> dict[str, Any]:
        job = self.client.submit_job({**body, "device": self.device, "seed": SEED})
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while job["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.device} {step}: not finished after {JOB_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
            job = self.client.get(f"/v1/jobs/{job['id']}")
        if job["status"] != "succeeded":
            raise SystemExit(f"{self.device} {step} {job['status']}: {json.dumps(job.get('error'))[:2000]}")
        self.jobs[step] = job
        print(f"  {self.device:<4} {step:<8} {job['timings']['wall_s']:7.2f} s", flush=True)
        return job

    def run(self) -> None:
        dataset = self.client.create_builtin_dataset("digits")
        forget = self.client.create_forget_set(
            dataset["id"], {"kind": "random", "fraction": FORGET_FRACTION, "seed": SEED}, "e2e random 10 %"
        )
        recipe = {"epochs": self.size["epochs"], "batch_size": 64, "lr": 0.05, "schedule": "cosine"}
        architecture = {
            "architecture": "small_cnn",
            "arch_config": {"in_channels": 1, "image_size": 8, "channels": self.size["channels"]},
        }
        train = self._run(
            "train",
            {"kind": "train", "dataset_id": dataset["id"], **architecture, "params": {"recipe": recipe}},
        )
        on_set = {"model_id": train["output_model_id"], "forget_set_id": forget["id"], "reuse_cached": False}
        self._run("retrain", {"kind": "retrain", **on_set})
        self._run(
            "ft", {"kind": "unlearn", "method": "ft", "params": {"epochs": self.size["ft_epochs"]}, **on_set}
        )
        self._run("evaluate", {"kind": "evaluate", **on_set})
        audit = {
            "method": "ft",
            "method_params": {"epochs": self.size["ft_epochs"]},
            "shadows": self.size["shadows"],
            "attacks": ["ulira"],
            "kaggle_calibration": False,
            "n_bootstrap": self.size["bootstrap"],
        }
        self._run("audit", {"kind": "audit", "params": audit, **on_set})


def compare(first: Chain, second: Chain) -> list[dict[str, Any]]:
    rows = []
    for step, metrics in COMPARED.items():
        for metric in metrics:
            a = first.jobs[step]["metrics"].get(metric)
            b = second.jobs[step]["metrics"].get(metric)
            ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
            gap = abs(a - b) if ok else math.inf  # type: ignore[operator]
            rows.append(
                {
                    "step": step,
                    "metric": metric,
                    "a": a,
                    "b": b,
                    "gap": gap,
                    "tolerance": tolerance(metric),
                    "ok": ok and gap <= tolerance(metric),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", required=True, help="Two API keys, comma-separated: one tenant per chain.")
    parser.add_argument("--devices", default="cuda,cpu", help="The two chains' devices, e.g. cuda,cpu.")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    devices = args.devices.split(",")
    keys = args.keys.split(",")
    size = SIZES[args.size]
    chains = []
    started = time.monotonic()
    for device, key in zip(devices, keys, strict=True):
        chain = Chain(LetheClient(args.url, key), device, size)
        chain_started = time.monotonic()
        print(f"{device}: train -> retrain -> ft -> evaluate -> audit ({args.size})", flush=True)
        chain.run()
        chain.seconds = time.monotonic() - chain_started
        chains.append(chain)
    first, second = chains
    rows = compare(first, second)
    print(f"\n{'step':<9}{'metric':<15}{devices[0]:>10}{devices[1]:>10}{'|gap|':>9}{'tol':>7}  ok")
    for row in rows:
        a = "-" if row["a"] is None else f"{row['a']:.3f}"
        b = "-" if row["b"] is None else f"{row['b']:.3f}"
        print(
            f"{row['step']:<9}{row['metric']:<15}{a:>10}{b:>10}{row['gap']:>9.3f}{row['tolerance']:>7.2f}"
            f"  {'yes' if row['ok'] else 'NO'}"
        )
    environments = {
        f"{chain.device}#{index}": {
            key: chain.jobs["train"]["environment"].get(key)
            for key in (
                "device",
                "device_name",
                "device_index",
                "worker_gpu",
                "cuda_visible_devices",
                "autocast",
                "torch",
                "cuda",
                "deterministic",
            )
        }
        for index, chain in enumerate(chains)
    }
    timings = {
        f"{chain.device}#{index}": {
            **{step: round(job["timings"]["wall_s"], 3) for step, job in chain.jobs.items()},
            "chain_s": round(chain.seconds, 1),
        }
        for index, chain in enumerate(chains)
    }
    print(
        "\ndevices: "
        + "; ".join(
            f"{name}: {env['device_name']} (index {env['device_index']})"
            for name, env in environments.items()
        )
    )
    print("job wall seconds: " + json.dumps(timings))
    passed = all(row["ok"] for row in rows)
    print(
        f"{'PASS' if passed else 'FAIL'}: {sum(r['ok'] for r in rows)}/{len(rows)} metrics within tolerance"
        f" (accuracies {TOLERANCES['accuracy']} points, MIA-Efficacy {TOLERANCES['MIA-Efficacy']}, AUC "
        f"{TOLERANCES['auc']}); {time.monotonic() - started:.0f} s of jobs"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "devices": devices,
                    "size": args.size,
                    "tolerances": TOLERANCES,
                    "rows": rows,
                    "environments": environments,
                    "timings": timings,
                    "passed": passed,
                },
                indent=2,
                default=str,
            )
        )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
