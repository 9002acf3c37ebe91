"""Fault injection with real processes: the service keeps its promises while its parts die.

One service in the production profile (uvicorn API, GPU workers, the maintenance worker with the reaper)
runs against a private Postgres cluster, a private redis-server and a private tmpfs for artifacts
(tests/workers/servers.py), so stopping, killing and filling them disturbs no other test. Then:

* GPU worker processes are SIGKILLed mid-job, again and again: every job still succeeds exactly once,
  each new attempt resumes from the last epoch checkpoint, and the final weights equal those of an
  uninterrupted run with the same seed (CPU training is deterministic);
* Postgres is stopped: the API answers 503 problem+json for every request, then serves again as soon as
  Postgres is back, without a restart; a job cut off mid-run resumes and finishes once;
* the artifact store is full, then read-only: the job fails with ``storage-error`` and a reason naming
  the cause, leaving no partial file, no checkpoint and no model row;
* Redis is killed (no persistence: its queued messages are lost) while jobs are being submitted: every
  submission still answers 202 and every job runs once (the reaper's sweep publishes what the broker
  never got or lost). It runs last: the sweep re-publishes jobs that wait longer than five leases, so
  its backlog leaves duplicate messages (harmless, nothing to claim) that would delay the other tests.

The figures (kills, jobs lost, outage requests, recovery time) go to ``var/fault-figures.json`` for the
README. Missing server binaries fail the module: it must not pass by skipping in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Profile, Settings
from app.models import Job, JobEvent, JobStatus, Metric, Model
from app.services.ops.processes import ServiceGroup
from tests.conftest import Tenant, make_tenant
from tests.workers.servers import PrivatePostgres, PrivateRedis, ServerUnavailable, Tmpfs, free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# This module brings its own Postgres and Redis: it runs in the Makefile's first pass, and the second pass
# (the shared Postgres + Redis) leaves it out with --ignore rather than running it twice.

REPO = Path(__file__).resolve().parents[2]
FIGURES_PATH = REPO / "var" / "fault-figures.json"
LOGS_COPY = REPO / "var" / "fault-logs"  # the service's logs of the last run, for a failure in CI

# Short leases and a fast reaper so a killed job is requeued within seconds; enough attempts that two dozen
# kills (and a spurious lease loss on a loaded machine) cannot exhaust them.
LEASE_SECONDS = 3.0
FAULT_KEY_PEPPER = "fault-injection-pepper-" + "0" * 32
HEARTBEAT_SECONDS = 0.2
REAPER_INTERVAL_SECONDS = 0.5
MAX_ATTEMPTS = 30
# Three: the kill test waits on leases and worker restarts more than on the CPU; a third worker overlaps
# those waits with training (each worker trains on one thread, see OMP_NUM_THREADS below).
GPU_WORKERS = 3
ARTIFACT_TMPFS_SIZE = "64m"
POLL_S = 0.05
JOB_TIMEOUT_S = 240.0

# SIGKILL: 6 jobs x 4 kills. A kill only lands once the running attempt has checkpointed two more epochs
# than at the previous kill, so every attempt makes progress, and while at least KILL_MARGIN_EPOCHS
# remain, so the job is still running when the signal arrives.
KILL_JOBS = 6
KILLS_PER_JOB = 4
MIN_KILLS = 20
EPOCHS_BETWEEN_KILLS = 2
KILL_MARGIN_EPOCHS = 10
WHOLE_WORKER_EVERY = 4  # every fourth kill takes the worker's parent with it (a lost machine), the others
# only the process running the job (the OOM killer's choice)
KILL_RECIPE = {"epochs": 30, "batch_size": 8, "lr": 0.01, "momentum": 0.9}
TINY_RECIPE = {"epochs": 1, "batch_size": 64}

# Redis: jobs submitted before, during and after a broker outage of at least REDIS_MIN_OUTAGE_S.
REDIS_BEFORE = 12
REDIS_DURING = 10
REDIS_AFTER = 12
REDIS_MIN_OUTAGE_S = 3.0
SUBMIT_THREADS = 5

# Postgres: requests sent while it is down.
PG_OUTAGE_S = 3.0


# --------------------------------------------------------------------------------------------- service
@dataclass
class FaultService:
    settings: Settings
    postgres: PrivatePostgres
    redis: PrivateRedis
    group: ServiceGroup
    engine: Engine
    sessions: sessionmaker[Session]
    tenant: Tenant
    dataset_id: str
    store: Path
    tmpfs: Tmpfs | None
    worker_serial: int = GPU_WORKERS
    figures: dict[str, Any] = field(default_factory=dict)

    def client(self, tenant: Tenant | None = None, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.group.base_url, headers=(tenant or self.tenant).headers("admin"), timeout=timeout
        )

    def submit(self, client: httpx.Client, body: dict[str, Any]) -> str:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def train_body(self, recipe: dict[str, Any], seed: int, dataset_id: str | None = None) -> dict[str, Any]:
        return {
            "kind": "train",
            "dataset_id": dataset_id or self.dataset_id,
            "architecture": "mlp",
            "arch_config": {"hidden": [64]},
            "params": {"recipe": recipe},
            "seed": seed,
        }

    def rows(self, job_ids: list[str]) -> dict[str, Job]:
        with self.sessions() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(j) for j in job_ids]))).all()
            return {str(job.id): job for job in jobs}

    def wait_finished(self, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, Job]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(job_ids)
            pending = [j for j in job_ids if rows[j].status not in (JobStatus.succeeded, JobStatus.failed)]
            if not pending:
                return rows
            if time.monotonic() > deadline:
                states = {j: (rows[j].status.value, rows[j].attempt) for j in pending}
                raise AssertionError(
                    f"jobs not finished after {timeout} s: {states}; service logs: {LOGS_COPY}"
                )
            time.sleep(0.2)

    def wait_until(
        self, job_id: str, predicate: Callable[[Job], bool], timeout: float = JOB_TIMEOUT_S
    ) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.rows([job_id])[job_id]
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never reached the state: {job.status} {job.progress}")
            time.sleep(POLL_S)

    def start_replacement_worker(self) -> None:
        self.worker_serial += 1
        self.group.start_gpu_worker(f"gpu-{self.worker_serial}")

    def kill_job_process(self, worker: str, whole_worker: bool) -> str | None:
        """SIGKILL the prefork child running a job (its pid is in the job's worker name), or the worker's
        parent too. Returns what was killed, or None when the process was already gone."""
        pid = int(worker.rsplit(":", 1)[1])
        if whole_worker:
            parent = _parent_pid(pid)
            proc = next((p for p in self.group.processes if p.pid == parent), None)
            if proc is not None:
                self.group.kill(proc)  # the parent and its child, in one process group
                self.start_replacement_worker()
                return "worker"
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return "process"

    def record(self, section: str, values: dict[str, Any]) -> None:
        """Add one test's figures to var/fault-figures.json, rewritten after each test so that a later failure
        keeps the earlier figures. The file holds this run's figures only (the fixture removes the last
        run's), so a README quoting it never mixes runs."""
        self.figures[section] = values
        # Timings depend on what else the machine runs: keep its size and load beside them.
        self.figures["machine"] = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
        FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
        FIGURES_PATH.write_text(json.dumps(self.figures, indent=2, sort_keys=True) + "\n")


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the parent pid is the second field after its ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _require(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except ServerUnavailable as exc:
        pytest.fail(f"fault injection cannot run: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def service() -> Iterator[FaultService]:
    from app.core import migrate
    from app.core.db import make_engine, make_session_factory

    started = time.monotonic()
    FIGURES_PATH.unlink(missing_ok=True)
    postgres: PrivatePostgres = _require(PrivatePostgres)
    try:
        redis_server: PrivateRedis = _require(PrivateRedis)
    except BaseException:  # pytest.fail raises a BaseException
        postgres.destroy()
        raise
    # Outside pytest's base temp: a concurrent pytest session prunes old base temps, and would empty the
    # mounted store under a running test.
    home = Path(tempfile.mkdtemp(prefix="lethe-faults-"))
    store = home / "artifacts"
    tmpfs: Tmpfs | None = Tmpfs(store, ARTIFACT_TMPFS_SIZE)
    group: ServiceGroup | None = None
    engine: Engine | None = None
    try:
        try:
            assert tmpfs is not None
            tmpfs.mount()
        except ServerUnavailable:
            tmpfs = None  # no mount permission: the storage test falls back to an obstructed directory
            store.mkdir(parents=True, exist_ok=True)
        postgres.create()
        redis_server.start()
        settings = Settings(
            profile=Profile.production,
            home=home,
            database_url=postgres.url,
            broker_url=redis_server.url(),
            artifact_root=store,
            lease_seconds=LEASE_SECONDS,
            heartbeat_seconds=HEARTBEAT_SECONDS,
            reaper_interval_seconds=REAPER_INTERVAL_SECONDS,
            max_attempts=MAX_ATTEMPTS,
            key_pepper=FAULT_KEY_PEPPER,
        )
        migrate.upgrade(settings)  # production's pre-start step (`lethe migrate`)
        env = {
            "LETHE_ARTIFACT_ROOT": str(store),
            "LETHE_LEASE_SECONDS": str(LEASE_SECONDS),
            "LETHE_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "LETHE_REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL_SECONDS),
            "LETHE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "LETHE_KEY_PEPPER": FAULT_KEY_PEPPER,  # production refuses the default pepper
            # One intra-op thread per worker: the workers then share the two cores instead of twice as many
            # threads fighting over them, which starved the reaper and slowed every worker restart.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        group = ServiceGroup(settings, port=free_port(), log_dir=home / "logs", extra_env=env)
        for index in range(1, GPU_WORKERS + 1):
            group.start_gpu_worker(f"gpu-{index}")
        group.start_maintenance_worker()
        group.start_api()
        engine = make_engine(postgres.url)
        sessions = make_session_factory(engine)
        tenant = make_tenant(sessions, settings)
        group.wait_ready()
        with httpx.Client(base_url=group.base_url, headers=tenant.headers("submit"), timeout=30) as client:
            response = client.post("/v1/datasets", json={"builtin": "digits"})
            assert response.status_code in (200, 201), response.text
        svc = FaultService(
            settings=settings,
            postgres=postgres,
            redis=redis_server,
            group=group,
            engine=engine,
            sessions=sessions,
            tenant=tenant,
            dataset_id=response.json()["id"],
            store=store,
            tmpfs=tmpfs,
        )
        setup_s = time.monotonic() - started
        yield svc
        svc.record(
            "module",
            {"setup_s": round(setup_s, 1), "total_s": round(time.monotonic() - started, 1)},
        )
    finally:
        if group is not None:
            for proc in list(group.processes):
                group.kill(proc)  # nothing left to save: faster than a warm shutdown
        if engine is not None:
            engine.dispose()
        redis_server.destroy()
        postgres.destroy()
        if tmpfs is not None:
            tmpfs.unmount()
        if (home / "logs").is_dir():
            shutil.rmtree(LOGS_COPY, ignore_errors=True)
            shutil.copytree(home / "logs", LOGS_COPY)
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ tests
def _epoch_ends(session: Session, job_id: uuid.UUID) -> dict[int, list[int]]:
    """Per attempt, the epochs whose end it reported (progress events carry ``info.epoch_end``)."""
    ends: dict[int, list[int]] = {}
    for attempt, data in session.execute(
        select(JobEvent.attempt, JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.type == "progress")
        .order_by(JobEvent.id)
    ):
        info = (data or {}).get("info") or {}
        if info.get("epoch_end"):
            ends.setdefault(attempt, []).append(int(info["epoch"]))
    return ends


def _weights(client: httpx.Client, model_id: str) -> dict[str, np.ndarray]:
    response = client.get(f"/v1/models/{model_id}/weights")
    assert response.status_code == 200, response.text
    return load_safetensors(response.content)


def _assert_finished_once(session: Session, job: Job) -> None:
    """One success, one output model, one value per metric, all from the attempt that succeeded."""
    assert job.status is JobStatus.succeeded, (job.id, job.status, job.error)
    types = list(session.scalars(select(JobEvent.type).where(JobEvent.job_id == job.id)))
    assert types.count("succeeded") == 1 and "failed" not in types, types
    models = session.scalars(select(Model.id).where(Model.job_id == job.id)).all()
    assert models == [job.output_model_id], (models, job.output_model_id)
    metrics = session.execute(select(Metric.name, Metric.attempt).where(Metric.job_id == job.id)).all()
    names = [name for name, _ in metrics]
    assert names and len(names) == len(set(names)), names
    assert {attempt for _, attempt in metrics} == {job.attempt}


def test_sigkilled_workers_finish_every_job_once_from_checkpoints(service: FaultService) -> None:
    started = time.monotonic()
    body = service.train_body(KILL_RECIPE, seed=11)
    epochs = int(KILL_RECIPE["epochs"])
    with service.client() as client:
        targets = [service.submit(client, body) for _ in range(KILL_JOBS)]
        reference = service.submit(client, body)  # the same job, never interrupted

        kills: dict[str, list[tuple[int, int, str]]] = {j: [] for j in targets}  # (attempt, ckpt, what)
        timeline: list[str] = []  # for the figures: when, which job, at which epoch, what
        deadline = time.monotonic() + 2 * JOB_TIMEOUT_S
        while True:
            rows = service.rows(targets)
            if all(row.status in (JobStatus.succeeded, JobStatus.failed) for row in rows.values()):
                break
            assert time.monotonic() < deadline, f"kill loop timed out; service logs: {LOGS_COPY}"
            for job_id, row in rows.items():
                done = kills[job_id]
                checkpoint = row.checkpoint_epoch or 0
                last_attempt, last_checkpoint = (done[-1][0], done[-1][1]) if done else (0, 0)
                if (
                    row.status is JobStatus.running
                    and row.worker
                    and len(done) < KILLS_PER_JOB
                    and row.attempt > last_attempt  # the killed attempt's row shows running until reaped
                    and checkpoint >= last_checkpoint + EPOCHS_BETWEEN_KILLS
                    and checkpoint <= epochs - KILL_MARGIN_EPOCHS
                ):
                    total = sum(len(k) for k in kills.values())
                    what = service.kill_job_process(
                        row.worker, whole_worker=total % WHOLE_WORKER_EVERY == WHOLE_WORKER_EVERY - 1
                    )
                    if what is not None:
                        done.append((row.attempt, checkpoint, what))
                        timeline.append(
                            f"{time.monotonic() - started:.1f}s {job_id[:8]} epoch {checkpoint} {what}"
                        )
            time.sleep(POLL_S)
        service.wait_finished([reference])
        reference_row = service.rows([reference])[reference]
        assert reference_row.status is JobStatus.succeeded and reference_row.attempt == 1
        expected = _weights(client, str(reference_row.output_model_id))

        resumed = redone = 0
        identical = 0
        with service.sessions() as session:
            for job_id in targets:
                job = session.get(Job, uuid.UUID(job_id))
                assert job is not None
                _assert_finished_once(session, job)
                job_kills = kills[job_id]
                assert job.attempt >= len(job_kills) + 1, (job.attempt, job_kills)
                # Every later attempt started after an epoch some earlier attempt checkpointed, never from
                # zero: besides the partial epoch in flight, at most the epoch whose checkpoint the kill cut
                # off is done again.
                ends = _epoch_ends(session, job.id)
                for attempt in sorted(ends)[1:]:
                    previous = max(e for a, es in ends.items() if a < attempt for e in es)
                    first = ends[attempt][0]
                    assert first >= 2 and first >= previous, (job_id, attempt, ends)
                    resumed += 1
                    redone += previous - (first - 1)
                assert job.result is not None
                assert job_kills and job.result["resumed_from_epoch"] >= job_kills[-1][1]
                weights = _weights(client, str(job.output_model_id))
                assert weights.keys() == expected.keys()
                for name, value in expected.items():
                    np.testing.assert_array_equal(weights[name], value, err_msg=f"{job_id} {name}")
                identical += 1

    all_kills = [k for job_kills in kills.values() for k in job_kills]
    assert len(all_kills) >= MIN_KILLS, kills
    assert resumed >= len(all_kills)
    service.record(
        "worker_sigkill",
        {
            "jobs": KILL_JOBS,
            "epochs_per_job": epochs,
            "kills": len(all_kills),
            "kills_job_process": sum(1 for k in all_kills if k[2] == "process"),
            "kills_whole_worker": sum(1 for k in all_kills if k[2] == "worker"),
            "jobs_succeeded_once": KILL_JOBS,
            "jobs_lost": 0,
            "attempts_resumed_from_checkpoint": resumed,
            "attempts_from_zero": 0,
            "epochs_redone": redone,
            "weights_identical_to_uninterrupted_run": identical,
            "seconds": round(time.monotonic() - started, 1),
            "timeline": timeline,
        },
    )


def test_postgres_outage_answers_503_and_recovers_without_restart(service: FaultService) -> None:
    started = time.monotonic()
    api_process = next(p for p in service.group.processes if "uvicorn" in list(p.args))
    assert api_process.poll() is None
    with service.client(timeout=10) as client:
        running = service.submit(client, service.train_body(KILL_RECIPE, seed=21))
        service.wait_until(
            running, lambda j: j.status is JobStatus.running and (j.checkpoint_epoch or 0) >= 2
        )
        service.postgres.stop("fast")  # every session ends; new connections are refused
        stopped_at = time.monotonic()
        requests: list[Callable[[], httpx.Response]] = [
            lambda: client.get(f"/v1/jobs/{running}"),
            lambda: client.get("/v1/jobs"),
            lambda: client.post("/v1/jobs", json=service.train_body(TINY_RECIPE, seed=1)),
            lambda: client.get("/v1/datasets"),
        ]
        outcomes: list[tuple[int, str, str]] = []
        try:
            while time.monotonic() - stopped_at < PG_OUTAGE_S:
                response = requests[len(outcomes) % len(requests)]()
                code = response.json().get("code", "") if response.content else ""
                outcomes.append((response.status_code, response.headers.get("content-type", ""), code))
        finally:
            service.postgres.start()  # pg_ctl -w: returns once Postgres accepts connections
        back_at = time.monotonic()
        while True:
            response = client.get(f"/v1/jobs/{running}")
            if response.status_code == 200:
                break
            assert time.monotonic() - back_at < 60, response.text
            time.sleep(0.01)
        recovery_s = time.monotonic() - back_at
        assert api_process.poll() is None  # the same API process serves again
        fresh = service.submit(client, service.train_body(TINY_RECIPE, seed=2))
    rows = service.wait_finished([running, fresh])
    with service.sessions() as session:
        for job_id in (running, fresh):
            _assert_finished_once(session, rows[job_id])
    statuses = [status for status, _, _ in outcomes]
    assert outcomes and statuses == [503] * len(outcomes), outcomes
    assert all(ctype.startswith("application/problem+json") for _, ctype, _ in outcomes), outcomes
    assert {code for _, _, code in outcomes} == {"database-unavailable"}, outcomes
    # The job cut off mid-run (its heartbeat failed) was requeued and resumed after the outage.
    assert rows[running].attempt >= 2 and (rows[running].result or {}).get("resumed_from_epoch", 0) >= 2
    service.record(
        "postgres_outage",
        {
            "requests_during_outage": len(outcomes),
            "answered_503_problem_json": statuses.count(503),
            "other_answers": len(outcomes) - statuses.count(503),
            "outage_s": round(back_at - stopped_at, 2),
            "recovery_s_after_restart": round(recovery_s, 3),
            "api_restarted": False,
            "job_running_during_outage": {
                "attempts": rows[running].attempt,
                "resumed_from_epoch": (rows[running].result or {}).get("resumed_from_epoch"),
                "succeeded_once": True,
            },
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_full_or_unwritable_artifact_store_fails_the_job_cleanly(service: FaultService) -> None:
    started = time.monotonic()
    tenant = make_tenant(service.sessions, service.settings)  # its own directory in the store
    with service.client(tenant) as client:
        dataset = client.post("/v1/datasets", json={"builtin": "digits"}).json()
        tenant_dir = service.store / str(tenant.id)
        before = _files_under(tenant_dir)
        assert len(before) == 1, before  # the dataset
        body = service.train_body({**TINY_RECIPE, "epochs": 3}, seed=3, dataset_id=dataset["id"])
        cases: dict[str, dict[str, Any]] = {}

        def run_failing(case: str, expected_reason: str) -> None:
            job_id = service.submit(client, body)
            job = service.wait_finished([job_id], timeout=120)[job_id]
            assert job.status is JobStatus.failed, (case, job.status, job.error)
            assert job.error is not None and job.error["code"] == "storage-error", job.error
            assert expected_reason in job.error["detail"], job.error
            assert job.attempt == 1  # a clear failure, not a retry loop
            assert job.output_model_id is None and job.checkpoint_key is None
            with service.sessions() as session:
                assert (
                    session.scalar(select(func.count()).select_from(Model).where(Model.job_id == job.id)) == 0
                )
                assert (
                    session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job.id))
                    == 0
                )
            # Nothing half-written: no temporary file, no checkpoint, nothing but the dataset.
            assert _files_under(tenant_dir) == before, _files_under(tenant_dir)
            api_view = client.get(f"/v1/jobs/{job_id}").json()
            assert api_view["status"] == "failed" and api_view["error"]["code"] == "storage-error"
            assert api_view["output_model_id"] is None and api_view["metrics"] == {}
            cases[case] = {"code": job.error["code"], "detail": job.error["detail"]}

        if service.tmpfs is not None:
            filled = service.tmpfs.fill()
            try:
                assert service.tmpfs.free_bytes() == 0
                run_failing("full", "No space left on device")
            finally:
                (service.store / "filler").unlink()
            service.tmpfs.read_only(True)
            try:
                run_failing("read_only", "Read-only file system")
            finally:
                service.tmpfs.read_only(False)
            mode = f"tmpfs {ARTIFACT_TMPFS_SIZE}, filled with {filled} bytes, then remounted read-only"
        else:
            # No mount permission: a file where the store needs a directory makes every write fail.
            obstruction = tenant_dir / "checkpoints"
            obstruction.write_bytes(b"")
            before = _files_under(tenant_dir)
            try:
                run_failing("unwritable", "cannot write artifact")
            finally:
                obstruction.unlink()
            mode = "directory obstructed by a file (no permission to mount a tmpfs)"

        # The same job succeeds once the store has room again.
        recovered = service.submit(client, body)
        job = service.wait_finished([recovered], timeout=120)[recovered]
        assert job.status is JobStatus.succeeded, job.error
    service.record(
        "artifact_storage",
        {
            "mode": mode,
            "cases": cases,
            "partial_files_visible": 0,
            "model_rows_for_failed_jobs": 0,
            "job_after_space_freed": "succeeded",
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def test_redis_killed_under_submission_load_loses_no_job(service: FaultService) -> None:
    started = time.monotonic()
    body = service.train_body(TINY_RECIPE, seed=5)
    latencies_down: list[float] = []

    def submit_many(count: int, timed: list[float] | None = None) -> list[str]:
        """``count`` submissions from SUBMIT_THREADS clients at once; each must be accepted (202)."""

        def one(_: int) -> tuple[int, str, float]:
            with service.client() as client:
                t0 = time.monotonic()
                response = client.post("/v1/jobs", json=body)
                return response.status_code, response.text, time.monotonic() - t0

        with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
            answers = list(pool.map(one, range(count)))
        assert [status for status, _, _ in answers] == [202] * count, answers
        if timed is not None:
            timed.extend(elapsed for _, _, elapsed in answers)
        return [str(json.loads(text)["id"]) for _, text, _ in answers]

    submitted = submit_many(REDIS_BEFORE)
    service.redis.kill()  # SIGKILL without persistence: messages not yet consumed are gone
    killed_at = time.monotonic()
    with service.sessions() as session:
        # Jobs whose message sat in Redis when it died: published, not started.
        in_broker = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.id.in_([uuid.UUID(j) for j in submitted]),
                Job.status == JobStatus.queued,
                Job.enqueued_at.is_not(None),
            )
        )
    try:
        during = submit_many(REDIS_DURING, latencies_down)
        time.sleep(max(0.0, REDIS_MIN_OUTAGE_S - (time.monotonic() - killed_at)))
    finally:
        service.redis.start()
    outage_s = time.monotonic() - killed_at
    with service.sessions() as session:
        unpublished = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.id.in_([uuid.UUID(j) for j in during]), Job.enqueued_at.is_(None))
        )
    after = submit_many(REDIS_AFTER)
    all_jobs = submitted + during + after
    assert len(set(all_jobs)) == REDIS_BEFORE + REDIS_DURING + REDIS_AFTER
    rows = service.wait_finished(all_jobs)
    with service.sessions() as session:
        for job_id in all_jobs:
            _assert_finished_once(session, rows[job_id])
    succeeded = sum(1 for r in rows.values() if r.status is JobStatus.succeeded)
    service.record(
        "redis_outage",
        {
            "submitted": len(all_jobs),
            "submitted_while_down": len(during),
            "accepted_202": len(all_jobs),
            "unpublished_when_redis_returned": unpublished,
            "messages_lost_with_redis": in_broker,
            "succeeded": succeeded,
            "lost": len(all_jobs) - succeeded,
            "outage_s": round(outage_s, 1),
            "submit_latency_while_down_s": {
                "p50": round(float(np.median(latencies_down)), 3),
                "max": round(max(latencies_down), 3),
            },
            "seconds": round(time.monotonic() - started, 1),
        },
    )
