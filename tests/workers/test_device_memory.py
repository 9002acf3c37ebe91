"""Running out of device memory: a clear ``device-out-of-memory`` failure that frees what the job held, or,
opted in, one retry with half the batch size (workers/device_memory.py, workers/jobrunner.py).

There is no GPU here: the engine is wrapped so that its first run raises torch's own ``OutOfMemoryError``
(the class ``torch.cuda.OutOfMemoryError`` is) while holding a tensor, as a CUDA allocation failure mid-step
would. The jobs run in this process through the real job runner on a private service (its own home and
database, so no other test's queued job is the one claimed).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Profile, Settings
from app.core.db import make_engine, make_session_factory
from app.models import Job
from app.storage import create_store
from tests.app.api.test_resources import create_digits
from tests.conftest import TEST_DATABASE_URL, RecordingPublisher, Tenant, _fresh_postgres, make_tenant
from workers import device_memory, jobrunner
from workers.device_memory import halved_batch, is_out_of_memory
from workers.engine import execute as engine_execute
from workers.runtime import WorkerRuntime

TINY_RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}


# ------------------------------------------------------------------------------------------ pure functions
def test_torch_out_of_memory_is_recognised_through_wrapping_errors() -> None:
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom)
    try:
        try:
            raise oom
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("the engine's step failed") from inner
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)
    # A message that merely says so is not the error class.
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))


def test_halved_batch_reads_each_params_schema() -> None:
    train = halved_batch("train", {"recipe": {"epochs": 2, "batch_size": 64}}, None)
    assert train is not None and (train.batch_size_from, train.batch_size_to) == (64, 32)
    assert train.params["recipe"]["batch_size"] == 32 and train.params["recipe"]["epochs"] == 2
    # ft inherits the original's batch size unless given.
    inherited = halved_batch("ft", {"epochs": 1}, {"batch_size": 100, "epochs": 5})
    assert inherited is not None and inherited.params == {"epochs": 1, "batch_size": 50}
    assert halved_batch("ft", {"batch_size": 8}, None).params["batch_size"] == 4  # type: ignore[union-attr]
    # retrain with the original's recipe: the same recipe at half the batch.
    retrain = halved_batch("retrain", {}, {"epochs": 3, "batch_size": 64, "lr": 0.05})
    assert retrain is not None and retrain.params["recipe"]["epochs"] == 3
    assert retrain.params["recipe"]["batch_size"] == 32
    # Nothing to halve: evaluate (no method), a batch of one, an unknown method, no resolvable size.
    assert halved_batch(None, {}, None) is None
    assert halved_batch("ft", {"batch_size": 1}, None) is None
    assert halved_batch("no-such-method", {"batch_size": 8}, None) is None
    assert halved_batch("identity", {}, None) is None


# ------------------------------------------------------------------------------------ through the runner
@dataclass
class Service:
    settings: Settings
    sessions: sessionmaker[Session]
    api: TestClient
    tenant: Tenant
    dataset: dict[str, Any]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from app.core import migrate
    from app.main import create_app

    # Postgres in the Postgres pass (a database of its own), else SQLite: the runner's writes (the failure,
    # the retry's cache-key removal) are conditional UPDATEs on the job row.
    database_url = None
    if TEST_DATABASE_URL:
        url = make_url(TEST_DATABASE_URL)
        database_url = _fresh_postgres(url.set(database=f"{url.database}_oom").render_as_string(False))
    settings = Settings(
        profile=Profile.embedded, home=tmp_path_factory.mktemp("oom-home"), database_url=database_url
    )
    migrate.upgrade(settings)
    engine = make_engine(settings.db_url)
    sessions = make_session_factory(engine)
    with TestClient(create_app(settings, publisher=RecordingPublisher())) as api:
        tenant = make_tenant(sessions, settings)
        yield Service(settings, sessions, api, tenant, create_digits(api, tenant))
    engine.dispose()


def _submit_train(service: Service) -> uuid.UUID:
    body = {
        "kind": "train",
        "dataset_id": service.dataset["id"],
        "architecture": "mlp",
        "arch_config": {"hidden": [16]},
        "params": {"recipe": TINY_RECIPE},
        "seed": 1,
        "device": "cpu",
    }
    response = service.api.post("/v1/jobs", json=body, headers=service.tenant.headers("submit"))
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


class OutOfMemoryOnce:
    """The engine, except that its first ``limit`` runs allocate a tensor and run out of memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: int = 1) -> None:
        self.real = engine_execute.execute
        self.limit = limit
        self.batch_sizes: list[int] = []
        self.held: list[weakref.ref[torch.Tensor]] = []
        monkeypatch.setattr(engine_execute, "execute", self)

    def __call__(self, request: engine_execute.EngineRequest, hooks: Any = None) -> Any:
        self.batch_sizes.append(request.params["recipe"]["batch_size"])
        if len(self.batch_sizes) <= self.limit:
            activations = torch.ones(256, 256)  # what a step holds when the allocator gives up
            self.held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.10 GiB total capacity)\nmore text"
            )
        return self.real(request, hooks)


def _run(
    service: Service, job_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch, engine: OutOfMemoryOnce, retry: bool
) -> dict[str, Any]:
    """Run the job in this process; ``_freed_at_release``: at each release, whether the failed runs' tensors
    were already gone."""
    settings = service.settings.model_copy(update={"oom_retry_half_batch": retry})
    runtime = WorkerRuntime(settings=settings, sessions=service.sessions, store=create_store(settings))
    freed: list[bool] = []
    real_release = device_memory.release

    def release() -> dict[str, int] | None:
        stats = real_release()
        freed.append(all(ref() is None for ref in engine.held))
        return stats

    monkeypatch.setattr(device_memory, "release", release)
    jobrunner.run_claimed_job(runtime, job_id)
    job = service.api.get(f"/v1/jobs/{job_id}", headers=service.tenant.headers("read")).json()
    job["_freed_at_release"] = freed
    return job


def test_out_of_memory_fails_the_job_with_its_code_and_frees_what_it_held(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = OutOfMemoryOnce(monkeypatch, limit=1)
    job = _run(service, _submit_train(service), monkeypatch, engine, retry=False)
    assert job["status"] == "failed"
    error = job["error"]
    assert error["code"] == "device-out-of-memory"
    assert error["first_error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB " + (
        "(GPU 0; 79.10 GiB total capacity)"
    )
    assert "batch_size" not in error  # no retry unless opted in
    assert engine.batch_sizes == [64]
    # Memory was released with the failed run's tensor already gone, before the job was marked failed, and
    # again when the job ended.
    assert job["_freed_at_release"] == [True, True]
    assert job["environment"]["worker"] and "worker_gpu" in job["environment"]


def test_opted_in_retry_halves_the_batch_records_it_and_skips_the_cache(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = OutOfMemoryOnce(monkeypatch, limit=1)
    job_id = _submit_train(service)
    job = _run(service, job_id, monkeypatch, engine, retry=True)
    assert job["status"] == "succeeded", job["error"]
    assert engine.batch_sizes == [64, 32]
    retry = job["result"]["device_memory_retry"]
    assert retry["batch_size"] == {"from": 64, "to": 32}
    assert retry["first_error"].startswith("OutOfMemoryError: CUDA out of memory")
    # The stored recipe is what ran; the job's params stay what was asked.
    assert job["result"]["params"]["recipe"]["batch_size"] == 32
    assert job["params"]["recipe"]["batch_size"] == 64
    with service.sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.cache_key is None
    # Freed before the retry started, and after the job.
    assert job["_freed_at_release"] == [True, True]


def test_a_retry_that_runs_out_again_fails_with_both_errors(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = OutOfMemoryOnce(monkeypatch, limit=2)
    job = _run(service, _submit_train(service), monkeypatch, engine, retry=True)
    assert job["status"] == "failed"
    assert engine.batch_sizes == [64, 32]
    error = job["error"]
    assert error["code"] == "device-out-of-memory" and "also with batch size 32" in error["detail"]
    assert error["batch_size"] == {"from": 64, "to": 32}
    assert error["retry_error"].startswith("OutOfMemoryError")
    assert job["_freed_at_release"] == [True, True, True]


def test_release_never_initialises_cuda_to_answer() -> None:
    # release() never initialises CUDA to answer: nothing here is initialised, so there is nothing to report.
    assert device_memory.release() is None
    assert not torch.cuda.is_initialized()
