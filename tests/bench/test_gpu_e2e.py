"""bench/gpu_e2e.sh stays runnable: on this CPU-only machine it must say CUDA is absent, start the embedded
service, run the whole chain twice on the CPU through the API and find the two runs identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_device_check_runs_cpu_against_cpu_without_cuda(tmp_path: Path) -> None:
    output = tmp_path / "e2e.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env["PYTHON"] = sys.executable
    completed = subprocess.run(
        ["bash", str(REPO_ROOT / "bench" / "gpu_e2e.sh"), "--size", "tiny", "--json", str(output)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    assert "CUDA absent" in completed.stdout and "PASS: 15/15" in completed.stdout
    report = json.loads(output.read_text())
    assert report["devices"] == ["cpu", "cpu"] and report["passed"] is True
    assert {row["step"] for row in report["rows"]} == {"train", "retrain", "ft", "evaluate", "audit"}
    # Deterministic CPU kernels and the same seeds: the two chains agree exactly, not just within tolerance.
    assert all(row["gap"] == 0.0 for row in report["rows"]), report["rows"]
    for environment in report["environments"].values():
        assert environment["device"] == "cpu" and environment["deterministic"] is True
        # The service ran `lethe up --gpus 0`, as on a device: the worker recorded the GPU it was started for.
        assert environment["worker_gpu"] == "0" and environment["cuda_visible_devices"] == "0"
    for timings in report["timings"].values():
        assert set(timings) == {"train", "retrain", "ft", "evaluate", "audit", "chain_s"}
        assert all(seconds > 0 for seconds in timings.values())
