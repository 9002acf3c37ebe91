"""The data_root dataset source end to end: a tiny CIFAR-10-format directory under the test data root is
registered over HTTP (validated, digested, recorded with its normalisation), a model is trained on it
through the job path (the worker reads the files through the source's ``load``, uint8 to the device), and
the refusals answer problem+json: traversal, a link out of the root, malformed files, a disabled root,
files changed after registration."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, reset_settings_cache
from app.models import Dataset, Job, JobStatus
from app.services.data.dataset_sources import (
    DATA_ROOT,
    DatasetRef,
    IntakeContext,
    create_dataset,
    load_dataset,
)
from app.services.jobs import lifecycle as job_service
from app.storage import LocalArtifactStore
from tests.workers.engine.datasets.data_root_files import write_cifar10
from workers.engine.errors import InvalidInputError

NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
PROBLEM = "application/problem+json"


@pytest.fixture
def data_root(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test data root, also seen by get_settings() (the worker-side load reads its process settings)."""
    assert migrated.data_root is not None
    monkeypatch.setenv("LETHE_DATA_ROOT", str(migrated.data_root))
    reset_settings_cache()
    yield migrated.data_root
    reset_settings_cache()


def register(api: TestClient, tenant, body: dict[str, object]):  # type: ignore[no-untyped-def]
    return api.post("/v1/datasets/data-root", json=body, headers=tenant.headers("submit"))


def test_register_then_train_through_the_job_path(
    data_root: Path, api: TestClient, tenant, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    from workers import jobrunner
    from workers.runtime import WorkerRuntime

    name = f"cifar-{uuid.uuid4().hex[:8]}"
    write_cifar10(data_root / name, per_batch=8, test=6)
    body = {
        "source": "data_root",
        "format": "cifar10",
        "path": name,
        "config": {"normalization": NORMALIZATION},
    }
    created = register(api, tenant, body)
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["source"] == DATA_ROOT and dataset["n_train"] == 40 and dataset["n_test"] == 6
    assert dataset["input_shape"] == [3, 32, 32] and dataset["num_classes"] == 10
    assert sum(dataset["class_counts"]) == 40
    again = register(api, tenant, body)
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]  # same files, same options
    other = register(api, tenant, {**body, "config": {}})
    assert other.status_code == 201 and other.json()["id"] != dataset["id"]  # the normalisation differs
    with sessions() as session:
        row = session.get(Dataset, uuid.UUID(dataset["id"]))
        assert row is not None
        assert row.config["options"]["normalization"] == NORMALIZATION and row.config["files"] == 7
        assert len(row.config["files_sha256"]) == 64 and row.size_bytes < 4096  # a manifest, not the arrays

    submitted = api.post(
        "/v1/jobs",
        json={
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp",
            "arch_config": {"input_shape": [3, 32, 32], "hidden": [8], "num_classes": 10},
            "params": {"recipe": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
            "seed": 3,
        },
        headers=tenant.headers("submit"),
    )
    assert submitted.status_code == 202, submitted.text
    job_id = uuid.UUID(submitted.json()["id"])
    store = LocalArtifactStore(migrated.artifacts)
    runtime = WorkerRuntime(settings=migrated, sessions=sessions, store=store)
    claim = job_service.claim(sessions, job_id, runtime.worker_name, migrated.lease_seconds)
    assert claim is not None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
    jobrunner._run(runtime, claim, job)
    with sessions() as session:
        finished = session.get(Job, job_id)
        assert finished is not None and finished.status is JobStatus.succeeded, finished.error
        inputs = finished.result["dataset_inputs"]
        assert {key: inputs[key] for key in ("dtype", "scale", "mean", "std")} == {
            "dtype": "uint8", "scale": 1 / 255, "mean": NORMALIZATION["mean"], "std": NORMALIZATION["std"],
        }  # fmt: skip
        # The dataset's source and config (format, path, options with the normalisation, file digest).
        assert inputs["dataset"]["source"] == DATA_ROOT and inputs["dataset"]["id"] == dataset["id"]
        assert inputs["dataset"]["config"]["options"]["normalization"] == NORMALIZATION
        assert inputs["dataset"]["config"]["files_sha256"] == row.config["files_sha256"]

    # The files change after registration: the worker (and the API's label reads) refuse them.
    write_cifar10(data_root / name, per_batch=8, test=6, seed=99)
    with pytest.raises(InvalidInputError, match="changed since it was registered"):
        load_dataset(store, DatasetRef.of(row))
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": 1}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 409 and forget.json()["code"] == "dataset-unreadable"


def test_refusals_are_problems(data_root: Path, api: TestClient, tenant) -> None:
    outside = data_root.parent / f"outside-{uuid.uuid4().hex[:8]}"
    write_cifar10(outside)
    link = f"link-{uuid.uuid4().hex[:8]}"
    os.symlink(outside, data_root / link)
    broken = f"broken-{uuid.uuid4().hex[:8]}"
    write_cifar10(data_root / broken)
    (data_root / broken / "batches.meta").unlink()
    cases = [
        ({"format": "cifar10", "path": "../" + outside.name}, "invalid-data-root-path"),
        ({"format": "cifar10", "path": str(outside)}, "invalid-data-root-path"),
        ({"format": "cifar10", "path": link}, "invalid-data-root-path"),
        ({"format": "cifar10", "path": broken}, "invalid-dataset-files"),
        ({"format": "cifar10", "path": "missing"}, "invalid-dataset-files"),
        ({"format": "imagenet", "path": broken}, "unknown-data-root-format"),
        ({"format": "cifar10", "path": broken, "config": {"label": "fine"}}, "invalid-dataset-config"),
    ]
    for body, code in cases:
        response = register(api, tenant, body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith(PROBLEM) and response.json()["code"] == code, body


def test_without_a_data_root_the_source_is_off(
    tenant, sessions: sessionmaker[Session], migrated: Settings, tmp_path: Path
) -> None:
    from app.core.problems import DomainError
    from app.schemas.resources import DataRootDatasetCreate

    settings = migrated.model_copy(update={"data_root": None})
    with sessions() as session:
        context = IntakeContext(
            session=session, store=LocalArtifactStore(tmp_path), settings=settings, tenant_id=tenant.id
        )
        with pytest.raises(DomainError) as refused:
            create_dataset(DATA_ROOT, context, DataRootDatasetCreate(format="cifar10", path="x"))
    assert refused.value.status == 409 and refused.value.code == "data-root-disabled"
    assert "LETHE_DATA_ROOT" in refused.value.detail
