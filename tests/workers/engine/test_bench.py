"""Keep bench/train_loop.py runnable: a tiny end-to-end run of both loops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_train_loop_bench_runs_and_reports_both_loops(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "train_loop.py"),
        "--n", "64", "--image-size", "16", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
        "--json", str(output),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(output.read_text())
    assert results["reference_img_s"] > 0 and results["lethe_img_s"] > 0
    ratio = results["lethe_img_s"] / results["reference_img_s"]
    assert results["lethe_over_reference"] == pytest.approx(ratio, abs=0.01)
