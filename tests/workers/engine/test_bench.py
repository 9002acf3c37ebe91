"""Keep the benches runnable: tiny end-to-end runs of train_loop.py, fast_retrain.py and diffusion_sfd.py."""

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


def test_fast_retrain_bench_runs_every_stage_on_a_tiny_size(tmp_path: Path) -> None:
    output = tmp_path / "fast_retrain.json"
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "fast_retrain.py"),
        "--n", "96", "--n-test", "40", "--image-size", "16", "--widths", "4,8", "--epochs", "2",
        "--batch-size", "32", "--target", "0", "--ref-width", "2", "--ref-epochs", "1", "--shadows", "3",
        "--device", "cpu", "--threads", "1", "--json", str(output),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(output.read_text())
    assert results["recipe"]["whiten"] is True and results["recipe"]["lr"] == 0.4
    for run in ("original", "retrain", "reference"):
        assert results[run]["img_s"] > 0 and len(results[run]["epoch_accuracies"]) >= 1
        # A zero target is met at the first epoch end: the time to it is that epoch's training time.
        assert 0 < results[run]["seconds_to_target"] <= results[run]["train_s"]
    ratios = results["ratios"]
    assert ratios["img_s_speedrun_over_reference"] == pytest.approx(
        results["retrain"]["img_s"] / results["reference"]["img_s"], rel=0.02
    )
    assert ratios["reference_over_retrain_seconds_to_target"] > 0
    audit = results["audit"]
    assert audit["shadows"] == 3 and audit["models_trained"] == 3 * 3 and 0.0 <= audit["ulira_auc"] <= 1.0


def test_diffusion_sfd_bench_runs_each_class_on_a_tiny_size(tmp_path: Path) -> None:
    output = tmp_path / "sfd.json"
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "diffusion_sfd.py"),
        "--classes", "3,9", "--channels", "8", "--teacher-steps", "2", "--teacher-batch", "8",
        "--sfd-steps", "2", "--sfd-batch", "4", "--eval-per-class", "2", "--eval-forget", "4",
        "--sample-steps", "2", "--teacher-eval", "--json", str(output),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(output.read_text())
    assert set(results["runs"]) == {"3", "9"}
    for forget in ("3", "9"):
        assert set(results["runs"][forget]) == {"teacher", "control", "sfd"}
        params = results["params"][forget]
        # The override is the next class; the 'lethe' preset fills what the command line leaves out.
        assert params["override_class"] == (int(forget) + 1) % 10
        assert params["preset"] == "lethe" and params["generator_forget_coef"] == 0.05
    assert "| 3 | 4 |" in completed.stdout and "| 9 | 0 |" in completed.stdout


def test_gpu_suite_cpu_profile_reports_every_stage(tmp_path: Path) -> None:
    """The suite a lent GPU runs, at its CI size: every stage measured, the table printed with the device."""
    output = tmp_path / "gpu_suite.json"
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "gpu_suite.py"),
        "--profile", "cpu", "--device", "cpu", "--threads", "1", "--json", str(output),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(output.read_text())
    assert completed.stdout.startswith("Lethe GPU suite on cpu")
    loop = results["training_loop"]
    assert loop["lethe_over_reference"] == pytest.approx(
        loop["lethe_img_s"] / loop["reference_img_s"], abs=0.01
    )
    retrain = results["retrain"]
    # The projection scales the measured epoch to 160 epochs of CIFAR-10's 45,000 retained images.
    expected = retrain["epoch_s"] * 45_000 / retrain["retained_images"] * 160
    assert retrain["projected_paper_retrain_s"] == pytest.approx(expected, rel=0.01)
    assert retrain["retained_images"] == 144 and retrain["timings"]["eval_s"] > 0
    (shadows,) = results["shadows"]
    assert shadows["K"] == 4 and shadows["vectorised_img_s"] > 0 and shadows["sequential_img_s"] > 0
    assert results["audit"]["K"] == 3 and results["audit"]["models_trained"] == 6 * 3
    assert results["evaluation"]["img_s"] > 0
