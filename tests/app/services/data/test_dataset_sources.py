"""Dataset sources are registry entries: a trivial source registered here, with one entry and no edit
anywhere else, is created through the registry, read by the API (forget-set labels) and loaded by the
worker for a training job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import Job, JobStatus
from app.services.data.dataset_sources import (
    DATASET_SOURCES,
    DatasetRef,
    DatasetSource,
    Intake,
    IntakeContext,
    create_dataset,
    load_dataset,
)
from app.services.data.datasets import store_dataset
from app.services.jobs import lifecycle as job_service
from app.storage import ArtifactStore, LocalArtifactStore
from workers.engine.datasets import ArrayDataset
from workers.engine.task_types import TaskType

SOURCE = "stripes"
FEATURES = 4


class StripesRequest(BaseModel):
    n: int
    seed: int


def stripes(n: int, seed: int) -> ArrayDataset:
    """Two classes told apart by the sign of the first feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n // 2, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return ArrayDataset(
        x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:], num_classes=2,
        task=TaskType.classification, input_shape=(FEATURES,),
    ).validate()  # fmt: skip


class StripesSource:
    """Regenerates the arrays from the row's config when loading, as an operator data-root source reads
    its files instead of a stored copy; records every load to show who asked."""

    def __init__(self) -> None:
        self.loads: list[DatasetRef] = []

    def create(self, context: IntakeContext, request: StripesRequest) -> Intake:
        row, created = store_dataset(
            context.session, context.store, context.settings, tenant_id=context.tenant_id,
            dataset=stripes(request.n, request.seed), name=f"stripes-{request.seed}", source=SOURCE,
            builtin=None, config=request.model_dump(),
        )  # fmt: skip
        return Intake(row, created, "dataset.create", {"source": SOURCE, "sha256": row.sha256})

    def load(self, store: ArtifactStore, ref: DatasetRef) -> ArrayDataset:
        self.loads.append(ref)
        return stripes(ref.config["n"], ref.config["seed"])


@pytest.fixture
def source() -> Iterator[StripesSource]:
    entry = StripesSource()
    DATASET_SOURCES.register(
        DatasetSource(
            name=SOURCE,
            description="Two noisy stripes (tests only).",
            request_type=StripesRequest,
            create=entry.create,
            load=entry.load,
        )
    )
    yield entry
    DATASET_SOURCES.unregister(SOURCE)


def test_a_registered_source_serves_the_api_and_the_worker(
    source: StripesSource,
    api: TestClient,
    tenant,
    sessions: sessionmaker[Session],
    migrated: Settings,
) -> None:
    from workers import jobrunner
    from workers.runtime import WorkerRuntime

    store = LocalArtifactStore(migrated.artifacts)
    with sessions() as session:
        context = IntakeContext(session=session, store=store, settings=migrated, tenant_id=tenant.id)
        with pytest.raises(TypeError):
            create_dataset(SOURCE, context, {"n": 40, "seed": 1})  # not the source's request type
        intake = create_dataset(SOURCE, context, StripesRequest(n=40, seed=1))
        assert intake.created
        session.commit()
        dataset_id = str(intake.row.id)
        assert load_dataset(store, intake.row).n_train == 40

    read = api.get(f"/v1/datasets/{dataset_id}", headers=tenant.headers("read"))
    assert read.status_code == 200 and read.json()["source"] == SOURCE
    source.loads.clear()
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset_id, "spec": {"kind": "class", "class": 1}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    labels = stripes(40, 1).y_train
    assert forget.json()["size"] == int((labels == 1).sum())
    assert [ref.source for ref in source.loads] == [SOURCE]  # the API read the labels through the source

    submitted = api.post(
        "/v1/jobs",
        json={
            "kind": "train",
            "dataset_id": dataset_id,
            "architecture": "mlp",
            "arch_config": {"input_shape": [FEATURES], "hidden": [8], "num_classes": 2},
            "params": {"recipe": {"epochs": 1, "batch_size": 16, "lr": 0.1}},
            "seed": 1,
        },
        headers=tenant.headers("submit"),
    )
    assert submitted.status_code == 202, submitted.text
    job_id = uuid.UUID(submitted.json()["id"])
    source.loads.clear()
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
    assert [(ref.source, str(ref.id)) for ref in source.loads] == [(SOURCE, dataset_id)]


def test_unknown_sources_are_refused_by_name(tmp_path) -> None:
    ref = DatasetRef(id=uuid.uuid4(), source="nowhere", storage_key="k", sha256="0" * 64)
    available = "available: builtin, data_root, upload"
    with pytest.raises(LookupError, match=f"unknown dataset source 'nowhere'; {available}"):
        load_dataset(LocalArtifactStore(tmp_path), ref)
