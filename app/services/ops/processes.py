"""Starting and stopping the service's processes (API server, GPU worker, maintenance worker + beat).

``ServiceGroup`` supervises them: they stop when it stops, when it is sent SIGTERM / SIGHUP / SIGINT, and,
on Linux, when it is killed outright (each child asks the kernel for SIGKILL on its parent's death,
``PR_SET_PDEATHSIG``; a worker's prefork children do the same towards the worker (Celery sets it), and so
does its embedded beat (workers/pool.py)). The API's listening socket is bound here, before anything
starts, and handed to uvicorn: a busy port is a clear error, and ``/readyz`` can only be answered by this
group's own API.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.core.config import Settings

# Set for a worker started for one GPU (`lethe worker --gpus`): the device's index on the host, which its
# jobs record; CUDA_VISIBLE_DEVICES makes it the worker's only device (cuda:0 inside the worker).
WORKER_GPU_ENV = "LETHE_WORKER_GPU"
CUDA_VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
# torch.cuda.is_available() through NVML, not cudaGetDeviceCount, which initialises the driver in the worker's
# parent and breaks every child forked after it (workers/cuda_guard.py also sets it; here it is there from the
# first line of the process).
NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Signals that stop a supervising process cleanly (SIGINT arrives as KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class PortInUse(RuntimeError):
    """The API's address is taken (often by another Lethe still running)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound and listening; PortInUse when the address is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: lets a restart bind while old connections linger in TIME_WAIT; on Linux it does not
    # let two processes listen on one port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"{host}:{port} is already in use (another Lethe, or another server, is listening there):"
                " stop it or choose another port with --port"
            ) from exc
        raise
    return sock


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent: a child between fork and exec must not dlopen."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits, however the parent dies (a no-op
    elsewhere). With ``parent_pid``, a parent that died before the request took effect is caught too.

    The kernel tracks the thread that forked this process: fork from a thread that lives as long as the
    parent (the main thread, here and in a worker)."""
    prctl = _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        return  # not fatal: the supervisor's own shutdown still stops the process
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


class StopRequested(Exception):
    """A stop signal reached the supervising process."""


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise StopRequested (as Ctrl-C raises KeyboardInterrupt), so the
    supervisor's cleanup runs for them too; the previous handlers come back afterwards."""

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise StopRequested(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    previous = {sig: signal.signal(sig, _raise) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block, stop signals and Ctrl-C are ignored: the shutdown they asked for is under way and
    must not be cut short half-way (it is bounded by STOP_GRACE_S, then SIGKILL)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # a stop from another thread: the main thread's handlers are not ours to change
        return
    ignored = (*STOP_SIGNALS, signal.SIGINT)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def parse_gpus(spec: str) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``: device indices on the host, each once. ValueError otherwise."""
    items = [item.strip() for item in spec.split(",")]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"--gpus takes comma-separated device indices such as 0,1; got {spec!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"--gpus names a device twice: {spec!r}")
    return items


@dataclass(frozen=True)
class WorkerPlan:
    """One worker process: its Celery node name, queues, command line and the environment it adds."""

    name: str
    queues: str
    command: list[str]
    env: dict[str, str]
    log_name: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "queues": self.queues, "command": self.command, "env": self.env}


def gpu_worker_plan(
    settings: Settings, gpus: list[str], queues: str = "gpu", name: str = "worker"
) -> list[WorkerPlan]:
    """One worker per GPU, each seeing only its device and running one job at a time (``-c 1``, a fresh
    child per job). They share the queue: a message only wakes a worker, and the fair pick in the database
    decides which job runs (app/services/jobs/lifecycle.claim_next), so per-device queues would let a job wait
    behind a busy device while another is idle."""
    plans = []
    for gpu in gpus:
        node = f"{name}-gpu{gpu}"
        plans.append(
            WorkerPlan(
                name=node,
                queues=queues,
                command=worker_command(settings, queues, node),
                env={CUDA_VISIBLE_ENV: gpu, WORKER_GPU_ENV: gpu, NVML_CHECK_ENV: "1"},
                log_name=node,
            )
        )
    return plans


def api_command(host: str, port: int, fd: int | None = None) -> list[str]:
    """uvicorn on ``host:port``, or on the already bound listening socket ``fd`` (see bind_listener)."""
    address = ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", "app.main:app", *address, "--log-level", "warning"]


@dataclass
class ServiceGroup:
    """The processes of one running service, stopped together."""

    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Device indices for one GPU worker each (gpu_worker_plan); None: one GPU worker that sees every device.
    gpus: list[str] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(
        self,
        cmd: list[str],
        log_name: str,
        pass_fds: tuple[int, ...] = (),
        process_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
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
        env.update(process_env or {})
        stdout = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # 0600: service logs may name tenants and jobs; open(..., "ab") would create them 0644.
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            descriptor = os.open(self.log_dir / f"{log_name}.log", flags, 0o600)
            stdout = os.fdopen(descriptor, "ab")  # lives as long as the process
        # Each child leads its own process group (stop and kill signal a worker with its prefork children)
        # and dies with this process even when this one is SIGKILLed.
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            start_new_session=True,
            pass_fds=pass_fds,
            preexec_fn=_die_with(os.getpid()),
        )
        self.processes.append(proc)
        return proc

    def start_gpu_worker(self, name: str = "gpu") -> subprocess.Popen[bytes]:
        """A worker on the gpu queue. Several may run at once (or a replacement for a killed one): each needs
        its own ``name``, which is its Celery node name and its log file."""
        return self._spawn(worker_command(self.settings, "gpu", name), f"worker-{name}")

    def start_planned(self, plans: list[WorkerPlan]) -> list[subprocess.Popen[bytes]]:
        """The workers of a plan (gpu_worker_plan), each with its own environment."""
        return [self._spawn(plan.command, plan.log_name, process_env=plan.env) for plan in plans]

    def start_maintenance_worker(self) -> subprocess.Popen[bytes]:
        """The default-queue worker with beat: the reaper, the publish sweep and the other periodic tasks."""
        return self._spawn(
            worker_command(self.settings, "default", "maintenance", beat=True), "worker-maintenance"
        )

    def start_api(self, listener: socket.socket | None = None) -> subprocess.Popen[bytes]:
        """The API on ``listener`` (bound here when not given: PortInUse if the port is taken). Only the
        API keeps the socket open, so the port is free again once the API exits."""
        sock = listener if listener is not None else bind_listener(self.host, self.port)
        try:
            return self._spawn(api_command(self.host, self.port, sock.fileno()), "api", (sock.fileno(),))
        finally:
            sock.close()

    def start(self, api: bool = True, listener: socket.socket | None = None) -> None:
        # The port first: a busy one fails before any worker starts.
        sock = (listener if listener is not None else bind_listener(self.host, self.port)) if api else None
        try:
            if self.gpus:
                self.start_planned(gpu_worker_plan(self.settings, self.gpus))
            else:
                self.start_gpu_worker()
            self.start_maintenance_worker()
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if sock is not None:
            self.start_api(sock)

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
        with signals_deferred():
            self._stop()

    def _stop(self) -> None:
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
        """Block until any process exits (or Ctrl-C, SIGTERM, SIGHUP), then stop the rest."""
        try:
            with stop_signals_raise():
                while all(p.poll() is None for p in self.processes):
                    time.sleep(0.5)
        except (KeyboardInterrupt, StopRequested):
            pass
        finally:
            self.stop()
        return max((p.returncode or 0) for p in self.processes)


def _die_with(parent_pid: int) -> Callable[[], Any]:
    _prctl()  # resolved before the fork

    def setup() -> None:  # runs in the child between fork and exec
        die_with_parent(signal.SIGKILL, parent_pid)

    return setup
