"""Private database and broker servers for fault-injection tests.

The fault tests stop Postgres, kill Redis and fill the artifact store. Doing that to the machine's shared
services (127.0.0.1:5432 / :6379) would break every other test running against them, so each fault run
gets its own Postgres cluster (initdb + pg_ctl in a temporary directory, on a free port) and its own
redis-server (no persistence, on a free port), and its own small tmpfs for artifacts.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class ServerUnavailable(RuntimeError):
    """A server binary or privilege the fault tests need is missing on this machine."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def find_binary(name: str) -> str:
    """``name`` on PATH, else in Debian's versioned Postgres directory (initdb and pg_ctl live there)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise ServerUnavailable(
        f"{name} is not installed: the fault-injection tests start their own Postgres and Redis "
        "(Debian: apt-get install postgresql redis-server)"
    )


def _as_server_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the postgres account instead.
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerUnavailable("running as root needs runuser (util-linux) to start Postgres as 'postgres'")
    return [runuser, "-u", "postgres", "--", *cmd]


@dataclass
class PrivatePostgres:
    """A throw-away Postgres cluster owned by this test run (trust auth, fsync off: data need not survive)."""

    port: int = field(default_factory=free_port)
    database: str = "lethe"

    def __post_init__(self) -> None:
        self.initdb = find_binary("initdb")
        self.pg_ctl = find_binary("pg_ctl")
        self.psql = find_binary("psql")
        account = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerUnavailable(
                    "running as root needs a 'postgres' account to start Postgres"
                ) from exc
        # Not under pytest's tmp_path: that is private to root (0700), and the server runs as 'postgres'.
        self.base = Path(tempfile.mkdtemp(prefix="lethe-pg-"))
        if account is not None:
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self.data = self.base / "data"
        self.log = self.base / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        result = subprocess.run(
            _as_server_user(list(args)), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )

    def create(self) -> PrivatePostgres:
        self._run(
            self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        self.start()
        self._run(
            self.psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
            f'CREATE DATABASE "{self.database}"',
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.base}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session and shuts down cleanly; ``immediate`` is a crash."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop", timeout=STOP_TIMEOUT_S)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and port_open(self.port)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A redis-server without persistence: a kill loses every message it held, as a crash would."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.binary = find_binary("redis-server")
        self.base = Path(tempfile.mkdtemp(prefix="lethe-redis-"))

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        cmd = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.base),
            "--logfile", str(self.base / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} (port {self.port})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not listen on {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; whatever was queued is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Tmpfs:
    """A size-limited tmpfs (needs root and mount permission), to fill up or make read-only."""

    path: Path
    size: str

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path))

    def read_only(self, flag: bool) -> None:
        self._mount("-o", f"remount,{'ro' if flag else 'rw'}", str(self.path))

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)

    def _mount(self, *args: str) -> None:
        try:
            result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ServerUnavailable(f"cannot run mount: {exc}") from exc
        if result.returncode != 0:
            raise ServerUnavailable(f"mount {' '.join(args)} failed: {result.stderr.strip()}")

    def fill(self) -> int:
        """Write a filler file until the file system is full; returns the bytes written."""
        written = 0
        chunk = b"\0" * (64 * 1024)
        with open(self.path / "filler", "wb", buffering=0) as handle:
            while True:
                try:
                    written += handle.write(chunk)
                except OSError:
                    if len(chunk) == 1:
                        return written
                    chunk = chunk[: len(chunk) // 2]  # fill the last partial block too

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize
