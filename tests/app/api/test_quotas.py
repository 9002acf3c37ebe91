"""Quotas and limits: concurrent jobs per tenant, epochs ceiling, time budget, upload and dataset sizes."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import Job, JobStatus
from app.models.base import utcnow
from app.services.jobs import lifecycle as job_service
from app.services.jobs.lifecycle import LeaseLost
from app.services.ops.quotas import enforce_time_budget
from tests.app.api.test_deletion import (
    MLP_CONFIG,
    create_forget_set,
    run_job_to_success,
    submit,
    train_body,
)
from tests.app.api.test_resources import assert_problem, create_digits, model_weights, npz_bytes, small_arrays
from tests.conftest import RecordingPublisher

ACTIVE_LIMIT = 2
EPOCHS_CEILING = 5
UPLOAD_LIMIT = 64 * 1024
DATASET_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def limited_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(
        update={
            "max_active_jobs_per_tenant": ACTIVE_LIMIT,
            "max_job_epochs": EPOCHS_CEILING,
            "max_upload_bytes": UPLOAD_LIMIT,
            "max_dataset_uncompressed_bytes": DATASET_LIMIT,
        }
    )


@pytest.fixture(scope="module")
def limited(limited_settings: Settings) -> Iterator[TestClient]:
    """The API with small limits, on the same database and store as ``api``."""
    from app.main import create_app

    with TestClient(create_app(limited_settings, publisher=RecordingPublisher())) as client:
        yield client


def test_active_jobs_per_tenant(limited: TestClient, tenant, other_tenant) -> None:
    dataset = create_digits(limited, tenant)
    headers = {**tenant.headers("submit"), "Idempotency-Key": "first"}
    first = limited.post("/v1/jobs", json=train_body(dataset["id"]) | {"seed": 0}, headers=headers)
    assert first.status_code == 202
    submit(limited, tenant, train_body(dataset["id"]) | {"seed": 1})

    refused = limited.post(
        "/v1/jobs", json=train_body(dataset["id"]) | {"seed": 2}, headers=tenant.headers("submit")
    )
    problem = assert_problem(refused, 429, "too-many-active-jobs")
    assert (
        f"limit is {ACTIVE_LIMIT}" in problem["detail"]
        and "LETHE_MAX_ACTIVE_JOBS_PER_TENANT" in (problem["detail"])
    )
    assert int(refused.headers["retry-after"]) > 0
    listing = limited.get("/v1/jobs", headers=tenant.headers("read")).json()["data"]
    assert len(listing) == ACTIVE_LIMIT  # nothing persisted by the refusal

    # A replay creates nothing, so it is never refused; other tenants have their own quota.
    replay = limited.post("/v1/jobs", json=train_body(dataset["id"]) | {"seed": 0}, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    submit(limited, other_tenant, train_body(create_digits(limited, other_tenant)["id"]))

    # A finished (here: cancelled) job frees its slot.
    limited.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=tenant.headers("submit"))
    submit(limited, tenant, train_body(dataset["id"]) | {"seed": 3})


def test_epochs_ceiling(limited: TestClient, api: TestClient, tenant, sessions, artifacts_dir) -> None:
    from app.storage import LocalArtifactStore

    dataset = create_digits(limited, tenant)
    body = train_body(dataset["id"])
    body["params"] = {"recipe": {"epochs": EPOCHS_CEILING + 1, "batch_size": 64, "lr": 0.05}}
    problem = assert_problem(
        limited.post("/v1/jobs", json=body, headers=tenant.headers("submit")), 422, "epochs-over-limit"
    )
    assert problem["errors"] == [
        {
            "loc": ["params", "recipe", "epochs"],
            "msg": f"at most {EPOCHS_CEILING} epochs",
            "type": "epochs_over_limit",
        }
    ]
    assert "LETHE_MAX_JOB_EPOCHS" in problem["detail"]
    nested = {"kind": "worst_case_search", "model_id": None, "params": {"lower_epochs": EPOCHS_CEILING + 5}}

    # A model trained with more epochs than the ceiling (on the default-limit API): an unlearn on it is fine,
    # a retrain that inherits its recipe is not, unless it brings its own.
    trained = train_body(dataset["id"])
    trained["params"] = {"recipe": {"epochs": EPOCHS_CEILING + 3, "batch_size": 64, "lr": 0.05}}
    job = submit(api, tenant, trained)
    model_id = str(run_job_to_success(sessions, LocalArtifactStore(artifacts_dir), job["id"]))
    forget_set = create_forget_set(limited, tenant, dataset["id"])
    on_model = {"model_id": model_id, "forget_set_id": forget_set["id"]}
    retrain = {"kind": "retrain", **on_model}
    problem = assert_problem(
        limited.post("/v1/jobs", json=retrain, headers=tenant.headers("submit")), 422, "epochs-over-limit"
    )
    assert problem["errors"][0]["loc"] == ["model", "train_recipe", "epochs"]
    own_recipe = retrain | {"params": {"recipe": {"epochs": EPOCHS_CEILING, "batch_size": 64, "lr": 0.05}}}
    submit(limited, tenant, own_recipe)
    submit(
        limited, tenant, {"kind": "unlearn", "method": "ft", "params": {"epochs": EPOCHS_CEILING}, **on_model}
    )

    nested["model_id"] = model_id
    problem = assert_problem(
        limited.post("/v1/jobs", json=nested, headers=tenant.headers("submit")), 422, "epochs-over-limit"
    )
    assert problem["errors"][0]["loc"] == ["params", "lower_epochs"]
    campaign = {
        "name": "too-long",
        "model_id": model_id,
        "methods": [{"method": "ft", "params": {"epochs": EPOCHS_CEILING + 1}}],
        "forget_sets": [{"forget_set_id": forget_set["id"]}],
        "seeds": [0],
        "retrain_params": {"recipe": {"epochs": 1}},
    }
    assert_problem(
        limited.post("/v1/campaigns", json=campaign, headers=tenant.headers("submit")),
        422,
        "epochs-over-limit",
    )


def test_time_budget_fails_an_overrunning_job_and_stops_its_worker(
    api: TestClient, migrated: Settings, sessions: sessionmaker[Session], tenant
) -> None:
    dataset = create_digits(api, tenant)
    job = submit(api, tenant, train_body(dataset["id"]))
    job_id = uuid.UUID(job["id"])
    claim = job_service.claim(sessions, job_id, "test-worker", 600.0)
    assert claim is not None
    assert enforce_time_budget(sessions, migrated, now=utcnow() + timedelta(days=365)) == []  # unset: off

    budgeted = migrated.model_copy(update={"job_time_budget_seconds": 60.0})
    assert job_id not in enforce_time_budget(sessions, budgeted, now=utcnow() + timedelta(seconds=30))
    assert job_id in enforce_time_budget(sessions, budgeted, now=utcnow() + timedelta(seconds=61))
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status is JobStatus.failed
        assert row.error is not None and row.error["code"] == "time-budget-exceeded"
        assert "60 s" in row.error["detail"] and row.lease_expires_at is None
    with pytest.raises(LeaseLost):  # the worker stops at its next heartbeat and writes nothing
        job_service.heartbeat(sessions, claim, 600.0)
    events = api.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers("read")).json()
    assert [e["type"] for e in events][-1] == "failed"
    assert enforce_time_budget(sessions, budgeted, now=utcnow() + timedelta(seconds=61)).count(job_id) == 0


def test_upload_limits(limited: TestClient, tenant) -> None:
    # A model file over the limit: refused while reading it, without storing anything.
    big = b"\0" * (UPLOAD_LIMIT + 1)
    response = limited.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(MLP_CONFIG)},
        files={"weights": ("m.safetensors", big)},
        headers=tenant.headers("submit"),
    )
    problem = assert_problem(response, 413, "upload-too-large")
    assert str(UPLOAD_LIMIT) in problem["detail"]
    # A body whose declared length is over the limit: refused before it is read.
    response = limited.post(
        "/v1/forget-sets",
        content=b"{}",
        headers={
            **tenant.headers("submit"),
            "content-type": "application/json",
            "content-length": str(10**9),
        },
    )
    assert_problem(response, 413, "payload-too-large")
    # A dataset archive that declares more uncompressed bytes than allowed (it compresses well).
    arrays = small_arrays()
    arrays["x_train"] = np.zeros((40, 1, 64, 64), dtype=np.float32)  # 655 kB > 256 kB
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    assert len(buffer.getvalue()) < UPLOAD_LIMIT
    response = limited.post(
        "/v1/datasets/upload", files={"file": ("d.npz", buffer.getvalue())}, headers=tenant.headers("submit")
    )
    assert_problem(response, 422, "zip-bomb")
    ok = limited.post(
        "/v1/datasets/upload",
        files={"file": ("d.npz", npz_bytes(**small_arrays()))},
        headers=tenant.headers("submit"),
    )
    assert ok.status_code == 201, ok.text
    assert limited.get("/v1/models", headers=tenant.headers("read")).json()["data"] == []
    assert len(model_weights("mlp", MLP_CONFIG)) < UPLOAD_LIMIT


def test_generated_dataset_size_is_checked_before_generating(
    limited: TestClient, api: TestClient, tenant
) -> None:
    # Within the generator's own cap (250M values) but over the test profile's 64 MiB dataset limit.
    huge = {"builtin": "procedural", "config": {"n_train": 50_000, "n_test": 10_000, "image_size": 32}}
    problem = assert_problem(
        api.post("/v1/datasets", json=huge, headers=tenant.headers("submit")), 422, "dataset-too-large"
    )
    assert "LETHE_MAX_DATASET_UNCOMPRESSED_BYTES" in problem["detail"]
    small = {"builtin": "procedural", "config": {"n_train": 20, "n_test": 10, "image_size": 8, "channels": 1}}
    assert limited.post("/v1/datasets", json=small, headers=tenant.headers("submit")).status_code == 201
    over = {"builtin": "procedural", "config": {"n_train": 2000, "n_test": 500, "image_size": 32}}
    assert_problem(
        limited.post("/v1/datasets", json=over, headers=tenant.headers("submit")), 422, "dataset-too-large"
    )
    # Unknown builtins and invalid configs keep their own errors.
    assert_problem(
        limited.post("/v1/datasets", json={"builtin": "nope"}, headers=tenant.headers("submit")),
        422,
        "unknown-dataset",
    )
    bad = {"builtin": "procedural", "config": {"n_train": -1}}
    assert_problem(
        limited.post("/v1/datasets", json=bad, headers=tenant.headers("submit")),
        422,
        "invalid-dataset-config",
    )


def test_concurrent_submissions_cannot_both_take_the_last_slot(
    api: TestClient, limited_settings: Settings, sessions: sessionmaker[Session], tenant
) -> None:
    from app.core.problems import DomainError
    from app.core.security import Principal, effective_scopes
    from app.schemas.jobs import JobCreate
    from app.services.jobs.submission import submit as submit_job

    dataset = create_digits(api, tenant)
    principal = Principal(tenant_id=tenant.id, key_id="race", scopes=effective_scopes(["submit"]))
    barrier = threading.Barrier(4)

    def attempt(seed: int) -> str:
        body = JobCreate.model_validate(train_body(dataset["id"]) | {"seed": seed})
        with sessions() as session:
            barrier.wait()
            try:
                submit_job(session, principal, body, limited_settings, idempotency_key=None, request_id=None)
                session.commit()
            except DomainError as exc:
                session.rollback()
                return exc.code
            return "created"

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = sorted(pool.map(attempt, range(4)))
    assert outcomes == ["created"] * ACTIVE_LIMIT + ["too-many-active-jobs"] * (4 - ACTIVE_LIMIT)
    listing = api.get("/v1/jobs", headers=tenant.headers("read")).json()["data"]
    assert len(listing) == ACTIVE_LIMIT
