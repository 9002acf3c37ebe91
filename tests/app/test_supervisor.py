"""`lethe up` supervises its processes: they stop with it (SIGTERM) and die with it (SIGKILL), "up" means its
own API answers /readyz, and a busy port is an error rather than a report of somebody else's server.

Each test runs the real command in a subprocess, on a free port and a fresh LETHE_HOME (embedded profile).
"""

from __future__ import annotations

import http.server
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.workers.servers import free_port

pytestmark = pytest.mark.slow

# Generous: migrations, two Celery workers preloading torch and uvicorn, on a shared 2-core box.
START_TIMEOUT_S = 240.0
# ServiceGroup.stop's grace (20 s) before SIGKILL, plus slack for a loaded box.
STOP_TIMEOUT_S = 40.0
UP_LINE = "Lethe is up"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_HOME": str(home), "LETHE_PROFILE": "embedded", "COLUMNS": "200", "NO_COLOR": "1"})
    return env


def _start_up(home: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
        env=_env(home),
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _readyz(port: int) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return None


def _wait_for_up(proc: subprocess.Popen[str], port: int) -> list[str]:
    """Read the command's output until it says it is up; /readyz must answer 200 at that moment."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if UP_LINE in line:
            assert _readyz(port) == 200, "'up' was printed before /readyz answered"
            return lines
    raise AssertionError(f"`lethe up` never said it was up (exit {proc.poll()}):\n{''.join(lines)}")


def _children() -> dict[int, int]:
    """pid -> parent pid of every process on the machine (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents = _children()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        current = frontier.pop()
        for pid, parent in parents.items():
            if parent == current and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie has exited; only its reaping is pending


def _wait_gone(pids: set[int], timeout: float) -> tuple[set[int], float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        left = {pid for pid in pids if _alive(pid)}
        if not left:
            return set(), time.monotonic() - started
        time.sleep(0.2)
    return {pid for pid in pids if _alive(pid)}, time.monotonic() - started


@pytest.fixture
def up_service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, set[int]]]:
    """A running `lethe up`, its port and every process it started (the API, two workers, their children)."""
    port = free_port()
    proc = _start_up(tmp_path / "home", port)
    spawned: set[int] = set()
    try:
        _wait_for_up(proc, port)
        spawned = _whole_service(proc.pid)
        yield proc, port, spawned
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid in spawned:  # never leave a service behind, whatever the test found
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# uvicorn, each worker's main process with its pool child, and the maintenance worker's beat.
SERVICE_PROCESSES = 6


def _whole_service(root: int) -> set[int]:
    """The processes under `lethe up` once the workers have forked their pool children and beat (they
    preload torch first, so they may still be starting when the API is ready)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    found = _descendants(root)
    while len(found) < SERVICE_PROCESSES and time.monotonic() < deadline:
        time.sleep(0.5)
        found = _descendants(root)
    return found


def _assert_service(spawned: set[int]) -> None:
    assert len(spawned) >= SERVICE_PROCESSES, f"expected the API, two workers and their children: {spawned}"


def test_sigterm_stops_every_process(up_service: tuple[subprocess.Popen[str], int, set[int]]) -> None:
    proc, port, spawned = up_service
    _assert_service(spawned)
    proc.send_signal(signal.SIGTERM)
    left, took = _wait_gone(spawned, STOP_TIMEOUT_S)
    print(f"SIGTERM: {len(spawned)} processes gone in {took:.1f} s")
    assert not left, f"still running {took:.0f} s after SIGTERM: {left}"
    proc.wait(timeout=STOP_TIMEOUT_S)
    assert _readyz(port) is None


def test_sigkill_of_up_takes_its_processes_down(
    up_service: tuple[subprocess.Popen[str], int, set[int]],
) -> None:
    proc, port, spawned = up_service
    _assert_service(spawned)
    proc.kill()
    proc.wait()
    left, took = _wait_gone(spawned, STOP_TIMEOUT_S)
    print(f"SIGKILL of `lethe up`: {len(spawned)} processes gone in {took:.1f} s")
    assert not left, f"still running {took:.0f} s after `lethe up` was killed: {left}"
    assert _readyz(port) is None


class _ReadyHandler(http.server.BaseHTTPRequestHandler):
    """Another server on the port, answering /readyz as an old Lethe would."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ready"}')

    def log_message(self, *_: object) -> None:
        return


def test_busy_port_is_an_error(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReadyHandler)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _readyz(port) == 200  # what an older Lethe on this port answers
        proc = _start_up(tmp_path / "home", port)
        output, _ = proc.communicate(timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode != 0
    assert "already in use" in output and f"127.0.0.1:{port}" in output, output
    assert UP_LINE not in output
    # It failed before starting anything: no database was created, no worker log was written.
    assert not (tmp_path / "home" / "logs").exists()
