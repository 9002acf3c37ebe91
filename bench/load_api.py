"""Load figures for the job read path and submit-to-running latency (issue 9).

Starts the API on the production profile against a throwaway Postgres database (``lethe_bench_<pid>``,
migrated with the app's own migration code) and Redis db 14, with ``--api-workers`` uvicorn processes,
creates a tenant, a submit key and one job, then measures with ``wrk`` and 64 connections:

- ``GET /v1/jobs/{id}`` without ``If-None-Match`` (full 200 responses),
- the same with ``If-None-Match: <etag>`` (304 responses),

each as requests/s, p50 and p99; then starts one GPU worker (the production command line of
``app.services.ops.processes``) and submits a small train job ``--submit-n`` times, each as soon as the
previous one ended, measuring submit-to-running: from just before the POST to the job's ``started_at``
(and ``started_at - created_at`` from the row). ``--settled-n`` more submissions wait ``--settle-s``
first, so the worker is idle however its pool replaces children.

Each wrk run also records the CPU time per request of the API processes and of this database's Postgres
backends (from /proc): on a shared 2-core box that is much steadier than req/s, which moves with whatever
else runs. Prints a table and writes ``var/load_api.json`` (``--json``). Everything it creates is removed
at the end (database, Redis db 14 contents, temporary home; ``--keep`` keeps the service logs). Needs
``wrk`` (Debian package ``wrk``; ``make bench-load`` installs it).

    .venv/bin/python bench/load_api.py                   # the figures (about 2 minutes)
    .venv/bin/python bench/load_api.py --duration 5 --submit-n 5 --settled-n 0   # quicker
    .venv/bin/python bench/load_api.py --submit-n 0 --settled-n 0 --py-spy var/prof   # GIL profiles
    .venv/bin/python bench/load_api.py --env LETHE_API_CONCURRENCY=4 --api-workers 3  # other settings
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.core.config import Profile, Settings  # noqa: E402
from app.models import Job  # noqa: E402

TARGETS = {"full_rps": 1000.0, "full_p99_ms": 50.0, "not_modified_rps": 2000.0, "submit_p50_ms": 250.0}
TERMINAL = ("succeeded", "failed", "cancelled")
SMALL_RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}

WRK_SCRIPT = """
wrk.method = "GET"
wrk.headers["Authorization"] = {auth}
{extra}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def log(message: str) -> None:
    print(f"[load_api] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def throwaway_database(base_url: str) -> Iterator[str]:
    """A fresh Postgres database ``lethe_bench_<pid>``, dropped afterwards (never the shared test DB)."""
    parsed = make_url(base_url)
    name = f"lethe_bench_{os.getpid()}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def service_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "LETHE_PROFILE": settings.profile.value,
        "LETHE_HOME": str(settings.home),
        "LETHE_DATABASE_URL": settings.db_url,
        "LETHE_BROKER_URL": settings.broker,
        "LETHE_KEY_PEPPER": settings.key_pepper,
        **extra,
    }


def start_api(settings: Settings, port: int, workers: int, extra_env: dict[str, str], log_path: Path) -> Any:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    handle = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=service_env(settings, extra_env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_worker(settings: Settings, extra_env: dict[str, str], log_path: Path) -> Any:
    from app.services.ops.processes import worker_command

    handle = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        worker_command(settings, "gpu", "bench-gpu"),
        cwd=REPO,
        env=service_env(settings, extra_env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: Any, grace_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(base: str, proc: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the API did not become ready")


def make_key(settings: Settings) -> str:
    from app.core.db import make_engine, make_session_factory
    from app.core.security import Scope
    from app.services.ops.keys import create_key, get_or_create_tenant

    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            tenant = get_or_create_tenant(session, "bench")
            _, new = create_key(
                session, tenant=tenant, name="bench", scopes=[Scope.submit], pepper=settings.key_pepper
            )
            session.commit()
            return new.token
    finally:
        engine.dispose()


def train_body(dataset_id: str, seed: int) -> dict[str, Any]:
    return {
        "kind": "train",
        "dataset_id": dataset_id,
        "architecture": "mlp",
        "arch_config": {"hidden": [16]},
        "params": {"recipe": SMALL_RECIPE},
        "seed": seed,
    }


def run_wrk(
    base: str, path: str, token: str, etag: str | None, duration: float, conns: int, threads: int
) -> dict[str, float]:
    extra = f'wrk.headers["If-None-Match"] = {json.dumps(etag)}' if etag else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.format(auth=json.dumps(f"Bearer {token}"), extra=extra))
    try:
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{conns}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            f"{base}{path}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        os.unlink(script.name)
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line[len("WRK_JSON ") :])
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
        "timeouts": raw["timeout"],
    }


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each of these processes that still runs."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that started meanwhile counts from 0; one that exited meanwhile is lost (rare: pool churn).
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def backends(database: str) -> list[int]:
    """The Postgres backend processes serving ``database`` (their title names it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
            found.append(int(cmdline.parent.name))
    return found


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def profile(api_proc: Any, folder: Path, name: str, duration: float) -> list[Any]:
    """py-spy (collapsed stacks) on each uvicorn worker process for one measurement."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(duration)),
                "--rate",
                "250",
                "--gil",  # only samples holding the GIL: where the CPU goes, not where threads wait
                "--format",
                "raw",
                "--nonblocking",
                "-o",
                str(folder / f"{name}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in children(api_proc.pid)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def submit_to_running(
    client: httpx.Client,
    settings: Settings,
    worker_proc: Any,
    dataset_id: str,
    n: int,
    settle_s: float,
    seed0: int,
) -> list[dict[str, float]]:
    """Submit ``n`` small jobs one at a time; each waits until the previous one ended (+ ``settle_s``)."""
    from app.core.db import make_engine

    engine = make_engine(settings.db_url, pool_size=1, max_overflow=0)
    samples = []
    try:
        for i in range(n):
            if settle_s:
                time.sleep(settle_s)
            posted = datetime.now(UTC)
            response = client.post("/v1/jobs", json=train_body(dataset_id, seed0 + i))
            response.raise_for_status()
            job_id = uuid.UUID(response.json()["id"])
            deadline = time.monotonic() + 120
            started = created = None
            # Poll the row directly (5 ms): started_at is written by the worker child's claim.
            while time.monotonic() < deadline:
                if worker_proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with code {worker_proc.returncode}")
                with engine.connect() as conn:
                    created, started = conn.execute(
                        select(Job.created_at, Job.started_at).where(Job.id == job_id)
                    ).one()
                if started is not None:
                    break
                time.sleep(0.005)
            if started is None or created is None:
                raise TimeoutError(f"job {job_id} never started")
            samples.append(
                {
                    "post_to_running_ms": (started - posted).total_seconds() * 1000,
                    "created_to_running_ms": (started - created).total_seconds() * 1000,
                }
            )
            while time.monotonic() < deadline:
                if client.get(f"/v1/jobs/{job_id}").json()["status"] in TERMINAL:
                    break
                time.sleep(0.02)
    finally:
        engine.dispose()
    return samples


def summarise(samples: list[dict[str, float]]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    post = [s["post_to_running_ms"] for s in samples]
    created = [s["created_to_running_ms"] for s in samples]
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(post), 1),
        "p90_ms": round(percentile(post, 90), 1),
        "max_ms": round(max(post), 1),
        "created_to_running_p50_ms": round(statistics.median(created), 1),
        "samples_ms": [round(v, 1) for v in post],
    }


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def print_table(result: dict[str, Any]) -> None:
    full, cond, sub = result["full_get"], result["conditional_get"], result["submit_to_running"]
    settled = result.get("submit_to_running_settled", {"n": 0})
    rows = [
        (
            "GET /v1/jobs/{id} (200)",
            f"{full['rps']:.0f} req/s",
            f"{full['p50_ms']:.1f}",
            f"{full['p99_ms']:.1f}",
        ),
        (
            "  + If-None-Match (304)",
            f"{cond['rps']:.0f} req/s",
            f"{cond['p50_ms']:.1f}",
            f"{cond['p99_ms']:.1f}",
        ),
    ]
    if sub["n"]:
        rows.append(("submit → running, back to back", f"n={sub['n']}", f"{sub['p50_ms']:.0f}", "-"))
    if settled["n"]:
        rows.append(("submit → running, idle worker", f"n={settled['n']}", f"{settled['p50_ms']:.0f}", "-"))
    print(f"\n{'measure':34} {'throughput':>14} {'p50 ms':>9} {'p99 ms':>9}")
    for name, rps, p50, p99 in rows:
        print(f"{name:34} {rps:>14} {p50:>9} {p99:>9}")
    t = TARGETS
    print(
        f"\ntargets: full ≥ {t['full_rps']:.0f} req/s ({verdict(full['rps'], t['full_rps'], True)}), "
        f"p99 ≤ {t['full_p99_ms']:.0f} ms ({verdict(full['p99_ms'], t['full_p99_ms'], False)}); "
        f"304 ≥ {t['not_modified_rps']:.0f} req/s ({verdict(cond['rps'], t['not_modified_rps'], True)}); "
        f"submit→running p50 ≤ {t['submit_p50_ms']:.0f} ms "
        f"({verdict(sub['p50_ms'], t['submit_p50_ms'], False) if sub['n'] else 'not measured'})"
    )
    print(
        f"CPU per request (API processes + Postgres backends): full {full['api_cpu_ms_per_req']:.2f} + "
        f"{full['pg_cpu_ms_per_req']:.2f} ms, 304 {cond['api_cpu_ms_per_req']:.2f} + "
        f"{cond['pg_cpu_ms_per_req']:.2f} ms; load average at the end "
        f"{result['config']['loadavg_at_end'][0]:.1f}"
    )
    errors = full["errors"] + cond["errors"]
    if errors:
        print(f"wrk errors: full {full['errors']} (timeouts {full['timeouts']}), 304 {cond['errors']}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=64, help="concurrent pollers (wrk -c)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load first")
    parser.add_argument("--submit-n", type=int, default=20, help="back-to-back submissions")
    parser.add_argument("--settled-n", type=int, default=3, help="submissions after --settle-s idle")
    parser.add_argument("--settle-s", type=float, default=6.0)
    parser.add_argument("--json", type=Path, default=REPO / "var" / "load_api.json")
    parser.add_argument("--label", default="", help="free text stored with the figures (e.g. 'before')")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the API and worker")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (service logs)")
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="record each API process with py-spy into this folder"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    extra_env = dict(item.split("=", 1) for item in args.env)
    if "redis://127.0.0.1:6379/15" in args.redis_url:
        raise SystemExit("Redis db 15 belongs to the test suite; use another db")

    home = Path(tempfile.mkdtemp(prefix="lethe-bench-"))
    api_proc = worker_proc = None
    result: dict[str, Any] = {}
    with throwaway_database(args.pg_url) as db_url:
        flush_redis(args.redis_url)
        settings = Settings(
            profile=Profile.production,
            home=home,
            database_url=db_url,
            broker_url=args.redis_url,
            key_pepper=secrets.token_hex(32),  # production refuses the default pepper
        )
        try:
            from app.core import migrate

            migrate.upgrade(settings)
            token = make_key(settings)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            api_proc = start_api(settings, port, args.api_workers, extra_env, home / "api.log")
            wait_ready(base, api_proc)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                dataset = client.post("/v1/datasets", json={"builtin": "digits"})
                dataset.raise_for_status()
                dataset_id = dataset.json()["id"]
                job = client.post("/v1/jobs", json=train_body(dataset_id, 0))
                job.raise_for_status()
                job_id = job.json()["id"]
                path = f"/v1/jobs/{job_id}"
                first = client.get(path)
                assert first.status_code == 200, first.text
                tag = first.headers["etag"]
                assert client.get(path, headers={"If-None-Match": tag}).status_code == 304
                log(f"API up ({args.api_workers} workers), job {job_id}, {len(first.content)} B body")

                database = make_url(db_url).database or ""

                def measure(etag: str | None, name: str) -> dict[str, float]:
                    if args.warmup:
                        run_wrk(base, path, token, etag, args.warmup, args.connections, args.threads)
                    spies = profile(api_proc, args.py_spy, name, args.duration) if args.py_spy else []
                    # CPU seconds per request of the API processes and of this database's Postgres backends:
                    # what the box pays per request, much less noisy than req/s on a shared machine.
                    api_pids = [api_proc.pid, *children(api_proc.pid)]
                    pg_pids = backends(database)
                    api0, pg0 = cpu_seconds(api_pids), cpu_seconds(pg_pids)
                    try:
                        figures = run_wrk(
                            base, path, token, etag, args.duration, args.connections, args.threads
                        )
                    finally:
                        for spy in spies:
                            spy.wait(timeout=60)
                    requests = max(1, int(figures["requests"]))
                    api_s = cpu_delta(api0, cpu_seconds(api_pids))
                    pg_s = cpu_delta(pg0, cpu_seconds(backends(database)))
                    figures["api_cpu_ms_per_req"] = round(api_s * 1000 / requests, 3)
                    figures["pg_cpu_ms_per_req"] = round(pg_s * 1000 / requests, 3)
                    return figures

                result["full_get"] = measure(None, "full")
                log(f"full GET: {result['full_get']}")
                result["conditional_get"] = measure(tag, "conditional")
                log(f"conditional GET: {result['conditional_get']}")
                # The row must not have changed under the 304 run, or some answers were 200s.
                assert client.get(path, headers={"If-None-Match": tag}).status_code == 304

                if args.submit_n or args.settled_n:
                    worker_proc = start_worker(settings, extra_env, home / "worker.log")
                    log("worker starting; warm-up job")
                    warm = submit_to_running(client, settings, worker_proc, dataset_id, 1, 0.0, 1000)
                    log(f"warm-up submit-to-running {warm[0]['post_to_running_ms']:.0f} ms")
                    result["submit_to_running"] = summarise(
                        submit_to_running(client, settings, worker_proc, dataset_id, args.submit_n, 0.0, 2000)
                    )
                    log(f"submit-to-running: {result['submit_to_running']}")
                    result["submit_to_running_settled"] = summarise(
                        submit_to_running(
                            client, settings, worker_proc, dataset_id, args.settled_n, args.settle_s, 3000
                        )
                    )
                else:
                    result["submit_to_running"] = summarise([])
        except BaseException:
            for log_file in home.glob("*.log"):
                tail = log_file.read_text(errors="replace")[-3000:]
                print(f"--- {log_file.name} (tail)\n{tail}", file=sys.stderr)
            raise
        finally:
            stop(worker_proc)
            stop(api_proc)
            flush_redis(args.redis_url)
            if args.keep:
                log(f"kept {home}")
            else:
                shutil.rmtree(home, ignore_errors=True)
    result["config"] = {
        "label": args.label,
        "api_workers": args.api_workers,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "env": extra_env,
        # uvicorn's --loop/--http auto pick these when the API's environment can import them.
        "uvicorn_extras": {name: _importable(name, extra_env) for name in ("uvloop", "httptools")},
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    result["targets"] = TARGETS
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


def _importable(name: str, extra_env: dict[str, str]) -> bool:
    probe = [
        sys.executable,
        "-c",
        f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)",
    ]
    return subprocess.run(probe, cwd=REPO, env={**os.environ, **extra_env}, check=False).returncode == 0


if __name__ == "__main__":
    raise SystemExit(main())
