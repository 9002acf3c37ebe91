"""Starting and stopping the service's processes (API server, GPU worker, maintenance worker + beat)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.core.config import Settings

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0


def worker_command(settings: Settings, queues: str, name: str, beat: bool = False) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "1",
        "-Q",
        queues,
        "--max-tasks-per-child",
        "1",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        cmd += ["-B", "-s", str(settings.home.resolve() / "celerybeat-schedule")]
    return cmd


def api_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


@dataclass
class ServiceGroup:
    """The processes of one running service, stopped together."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "LETHE_HOME": str(self.settings.home.resolve()),
            "LETHE_PROFILE": self.settings.profile.value,
        }
        if self.settings.database_url:
            env["LETHE_DATABASE_URL"] = self.settings.database_url
        if self.settings.broker_url:
            env["LETHE_BROKER_URL"] = self.settings.broker_url
        env.update(self.extra_env)
        stdout = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stdout = open(self.log_dir / f"{log_name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT if stdout else None, start_new_session=True
        )
        self.processes.append(proc)
        return proc

    def start_gpu_worker(self, name: str = "gpu") -> subprocess.Popen[bytes]:
        """A worker on the gpu queue. Several may run at once (or a replacement for a killed one): each needs
        its own ``name``, which is its Celery node name and its log file."""
        return self._spawn(worker_command(self.settings, "gpu", name), f"worker-{name}")

    def start_maintenance_worker(self) -> subprocess.Popen[bytes]:
        """The default-queue worker with beat: the reaper, the publish sweep and the other periodic tasks."""
        return self._spawn(
            worker_command(self.settings, "default", "maintenance", beat=True), "worker-maintenance"
        )

    def start_api(self) -> subprocess.Popen[bytes]:
        return self._spawn(api_command(self.host, self.port), "api")

    def start(self, api: bool = True) -> None:
        self.start_gpu_worker()
        self.start_maintenance_worker()
        if api:
            self.start_api()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process and everything in its session (a worker's prefork children), as a crash would,
        and forget it: ``stop`` and ``wait`` then only see the processes still meant to run."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc in self.processes:
            self.processes.remove(proc)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a service process exited early with code {proc.returncode}: {proc.args!r}"
                    )
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API did not become ready within {timeout_s} s")

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def wait(self) -> int:
        """Block until any process exits (or Ctrl-C), then stop the rest."""
        try:
            while all(p.poll() is None for p in self.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        return max((p.returncode or 0) for p in self.processes)
