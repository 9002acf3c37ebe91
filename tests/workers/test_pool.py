"""workers/pool.py: the prefork pool that replaces a finished one-task child at once."""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import click
import pytest
from celery import concurrency
from celery.bin.worker import WorkersPool
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.config import Settings
from app.models import Job
from tests.app.api.test_resources import create_digits
from tests.workers.test_job_flow import finished, wait_for
from workers import pool as pool_module
from workers.celery_app import make_celery
from workers.pool import POLL_SECONDS, PromptExitWorker, ReplacingAsynPool, TaskPool

TINY_RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}


def test_every_lethe_worker_gets_the_pool_even_with_dash_p_prefork(migrated: Settings) -> None:
    app = make_celery(migrated)
    assert concurrency.get_implementation(app.conf.worker_pool) is TaskPool
    # app.services.ops.processes starts workers with `-P prefork`: Celery's CLI must still pick the setting.
    ctx = click.Context(click.Command("worker"), obj=SimpleNamespace(app=app))
    assert WorkersPool().convert("prefork", None, ctx) is TaskPool
    assert TaskPool.Pool is ReplacingAsynPool and ReplacingAsynPool.Worker is PromptExitWorker


class FakeHub:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.later.append((delay, fn, args))

    def run_next(self) -> None:
        _, fn, args = self.later.pop(0)
        fn(*args)


def _bare_pool() -> tuple[ReplacingAsynPool, list[str]]:
    pool = object.__new__(ReplacingAsynPool)  # only the exit handling is exercised
    calls: list[str] = []
    pool.maintain_pool = lambda: calls.append("maintain")  # type: ignore[method-assign]
    pool._untrack_child_process = lambda proc, hub: calls.append("untrack")  # type: ignore[method-assign]
    return pool, calls


def test_an_exited_child_not_yet_reapable_is_replaced_once_it_is() -> None:
    pool, calls = _bare_pool()
    hub = FakeHub()
    proc = SimpleNamespace(exitcode=None)  # sentinel closed, waitpid does not see it yet
    pool._event_process_exit(hub, proc)
    assert calls == ["untrack"] and hub.later[0][0] == POLL_SECONDS
    hub.run_next()
    assert calls == ["untrack"] and len(hub.later) == 1  # still looking, not waiting for the 5 s timer
    proc.exitcode = 155
    hub.run_next()
    assert calls == ["untrack", "maintain"] and not hub.later


def test_looking_stops_at_the_deadline() -> None:
    pool, calls = _bare_pool()
    hub = FakeHub()
    pool._replace_when_reaped(hub, SimpleNamespace(exitcode=None), time.monotonic() - 1)
    assert calls == ["maintain"] and not hub.later


class Counter:
    def __init__(self) -> None:
        self.value = 0


def test_the_child_notices_its_result_consumed_within_milliseconds() -> None:
    worker = object.__new__(PromptExitWorker)
    worker.on_ready_counter = Counter()
    threading.Timer(0.01, lambda: setattr(worker.on_ready_counter, "value", 1)).start()
    started = time.monotonic()
    assert worker._ensure_messages_consumed(completed=1)
    assert time.monotonic() - started < 0.08  # billiard polls every 0.1 s


def test_the_child_gives_up_waiting_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "CONSUMED_WAIT_SECONDS", 0.02)
    worker = object.__new__(PromptExitWorker)
    worker.on_ready_counter = Counter()
    assert not worker._ensure_messages_consumed(completed=1)


class PipeQueue:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def put(self, message: object) -> None:
        os.write(self.fd, pickle.dumps(message))


def test_the_child_reports_death_and_exits_at_once() -> None:
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        try:
            worker = object.__new__(PromptExitWorker)
            worker.on_exit = None
            worker.outq = PipeQueue(write_fd)
            worker._do_exit(os.getpid(), 155)
        finally:
            os._exit(99)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    message = pickle.loads(os.read(read_fd, 4096))
    os.close(read_fd)
    assert os.waitstatus_to_exitcode(status) == 155
    assert message == (pool_module.DEATH, (pid, 155))
    assert elapsed < 0.8, elapsed  # billiard's child sleeps 1 s after the report


@pytest.mark.broker
@pytest.mark.slow
def test_a_worker_runs_queued_jobs_back_to_back(
    live_api: TestClient, worker_group, migrated: Settings, sessions, tenant
) -> None:
    """Jobs queued together run one after another (one gpu worker, one task per child), each starting as
    soon as the previous child is gone: 0.14-0.2 s apart on Redis, where Celery's stock pool left 0.5-5 s
    (the child's 0.1 s polling and 1 s sleep, a 0.25 s gc before the fork and often the 5 s timer)."""
    dataset = create_digits(live_api, tenant)
    ids = []
    for seed in range(4):
        body = {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp",
            "arch_config": {"hidden": [8]},
            "params": {"recipe": TINY_RECIPE},
            "seed": seed,
        }
        response = live_api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
        assert response.status_code == 202, response.text
        ids.append(uuid.UUID(response.json()["id"]))
    for job_id in ids:
        assert wait_for(live_api, tenant, str(job_id), finished)["status"] == "succeeded"
    with sessions() as session:
        mine = sorted(session.scalars(select(Job).where(Job.id.in_(ids))), key=lambda j: j.started_at)
        gaps = []
        for previous, following in itertools.pairwise(mine):
            assert following.started_at >= previous.finished_at  # one at a time
            # The gap after the worker's previous job, whoever's it was: tenants take turns
            # (app.services.jobs.lifecycle.next_fair_job), so another test's tenant may run a job between two
            # of these.
            previous_end = session.scalar(
                select(func.max(Job.finished_at)).where(
                    Job.started_at.is_not(None), Job.finished_at <= following.started_at
                )
            )
            assert previous_end is not None
            gaps.append((following.started_at - previous_end).total_seconds())
    assert len(gaps) >= 2, gaps
    # Redis (the event-loop pool this module fixes): well under the stock pool's 1.4 s minimum. The embedded
    # broker's blocking pool replaces children from a 0.8 s supervisor loop and polls the broker: looser.
    limit = 1.0 if migrated.broker.startswith("redis") else 3.0
    assert max(gaps) < limit, gaps
