"""`lethe worker --gpus`: one worker process per listed device, each seeing only its own, none touching CUDA.

The plan the command prints with ``--dry-run`` is the one it starts (both come from
app.services.ops.processes.gpu_worker_plan); the slow test starts the real command with two fake device
indices on this CPU-only machine, reads each worker's environment and command line from /proc, checks each
parent's CUDA report in the log, runs a job and finds the device it recorded, then stops the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Profile, Settings
from app.services.ops.processes import CUDA_VISIBLE_ENV, NVML_CHECK_ENV, WORKER_GPU_ENV, parse_gpus

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 240.0
GUARD_LINE = "cuda guard before the first fork"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETHE_", "CUDA_"))}
    env.update({"LETHE_HOME": str(home), "LETHE_PROFILE": "embedded", "LETHE_HEARTBEAT_SECONDS": "0.3"})
    return env


def test_dry_run_prints_one_single_job_worker_per_device(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["worker", "--gpus", "0,1", "--dry-run"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert [plan["name"] for plan in plans] == ["worker-gpu0", "worker-gpu1"]
    for index, plan in enumerate(plans):
        assert plan["env"] == {CUDA_VISIBLE_ENV: str(index), WORKER_GPU_ENV: str(index), NVML_CHECK_ENV: "1"}
        command = plan["command"]
        assert command[command.index("-n") + 1] == f"worker-gpu{index}@%h"
        assert command[command.index("-c") + 1] == "1"  # one job at a time per device
        assert command[command.index("--max-tasks-per-child") + 1] == "1"  # a fresh child per job
        assert command[command.index("-Q") + 1] == "gpu"
    # Without --gpus: the one worker as before, no device pinned.
    single = json.loads(CliRunner().invoke(cli, ["worker", "--dry-run"], env=_env(tmp_path)).output)
    assert [(plan["name"], plan["env"]) for plan in single] == [("worker", {})]


@pytest.mark.parametrize("spec", ["", "0,0", "a", "0,,1", "-1", "0;1"])
def test_bad_device_lists_are_refused(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ValueError):
        parse_gpus(spec)
    result = CliRunner().invoke(cli, ["worker", "--gpus", spec, "--dry-run"], env=_env(tmp_path))
    assert result.exit_code == 2 and "--gpus" in result.output


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _cmdline(pid: int) -> list[str]:
    return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Settings]]:
    from app.core import migrate

    settings = Settings(profile=Profile.embedded, home=tmp_path / "home")
    migrate.prepare(settings)
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--gpus", "0,1"],
            env=_env(settings.home),
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log, settings
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_gpus_starts_one_guarded_worker_per_device_and_jobs_record_theirs(
    started: tuple[subprocess.Popen[bytes], Path, Settings],
) -> None:
    proc, log, settings = started
    deadline = time.monotonic() + START_TIMEOUT_S
    while log.read_text().count(GUARD_LINE) < 2:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)

    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    seen = {}
    for pid in workers:
        env, command = _environ(pid), _cmdline(pid)
        gpu = env[WORKER_GPU_ENV]
        assert env[CUDA_VISIBLE_ENV] == gpu and env[NVML_CHECK_ENV] == "1"
        assert command[command.index("-n") + 1] == f"worker-gpu{gpu}@%h"
        assert command[command.index("-c") + 1] == "1"
        seen[gpu] = pid
    assert sorted(seen) == ["0", "1"]
    # Each worker's parent reported, after its preload and before its first fork, that CUDA was untouched.
    reports = [line for line in log.read_text().splitlines() if GUARD_LINE in line]
    for pid in workers:
        (line,) = [line for line in reports if f"'pid': {pid}," in line]
        assert "'guarded': True" in line and "'cuda_initialized': False" in line
        assert "'refused_attempts': 0" in line

    from app.main import create_app
    from tests.app.api.test_resources import create_digits
    from tests.conftest import make_tenant

    with TestClient(create_app(settings)) as api:
        from app.core.db import make_engine, make_session_factory

        engine = make_engine(settings.db_url)
        tenant = make_tenant(make_session_factory(engine), settings)
        engine.dispose()
        dataset = create_digits(api, tenant)
        body = {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp",
            "arch_config": {"hidden": [16]},
            "params": {"recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}},
            "seed": 0,
        }
        response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job_deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := api.get(f"/v1/jobs/{job_id}", headers=tenant.headers("read")).json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < job_deadline, log.read_text()
            time.sleep(0.2)
    assert job["status"] == "succeeded", job["error"]
    environment = job["environment"]
    # No CUDA on this machine: "auto" ran on the CPU, on one of the two workers, which recorded its device.
    assert environment["device"] == "cpu" and environment["device_index"] is None
    assert environment["worker_gpu"] in seen
    assert environment["cuda_visible_devices"] == environment["worker_gpu"]

    # SIGTERM to the command stops both workers (a warm shutdown: exit code 0) and reaps them.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_up_with_gpus_starts_one_gpu_worker_per_device_beside_the_maintenance_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services.ops.processes import ServiceGroup

    spawned: list[tuple[list[str], str, dict[str, str]]] = []

    def spawn(self: ServiceGroup, cmd: list[str], log_name: str, pass_fds: tuple[int, ...] = (),
              process_env: dict[str, str] | None = None) -> object:  # fmt: skip
        spawned.append((cmd, log_name, process_env or {}))
        return None

    monkeypatch.setattr(ServiceGroup, "_spawn", spawn)
    group = ServiceGroup(Settings(profile=Profile.embedded, home=tmp_path), gpus=["2", "5"])
    group.start(api=False)
    layout = [(cmd[cmd.index("-n") + 1], cmd[cmd.index("-Q") + 1], log, env) for cmd, log, env in spawned]
    gpu = {CUDA_VISIBLE_ENV: "2", WORKER_GPU_ENV: "2", NVML_CHECK_ENV: "1"}
    assert layout == [
        ("worker-gpu2@%h", "gpu", "worker-gpu2", gpu),
        (
            "worker-gpu5@%h",
            "gpu",
            "worker-gpu5",
            {k: "5" if k != NVML_CHECK_ENV else "1" for k in gpu},
        ),
        ("maintenance@%h", "default", "worker-maintenance", {}),
    ]


SITECUSTOMIZE = """
from celery.signals import worker_init


@worker_init.connect
def _cuda_before_the_guard(**_):
    # Connected before the preload's handler: as if something had initialised CUDA in the parent first.
    import torch.cuda

    torch.cuda._initialized = True
    torch.cuda._is_in_bad_fork = lambda: False
"""


@pytest.mark.slow
def test_a_worker_whose_parent_initialised_cuda_refuses_to_start(tmp_path: Path) -> None:
    from app.core import migrate

    settings = Settings(profile=Profile.embedded, home=tmp_path / "home")
    migrate.prepare(settings)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**_env(settings.home), "PYTHONPATH": f"{hook}:{REPO_ROOT}"}
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--queues", "gpu"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-3000:]
    assert "Unrecoverable error" in output and "CudaInParentError" in output
    assert "before the first fork" in output and GUARD_LINE not in output
