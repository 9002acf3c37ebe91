"""Submission validation reads a kind's registry entry: a kind registered by a test is validated without
edits to the submission code.

``JobCreate.kind`` is validated against the registry and ``jobs.kind`` stores the name, so the same entry also
reaches the HTTP API, the database and the job runner (the last test).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.problems import DomainError
from app.core.security import Principal, Scope
from app.schemas.jobs import JobCreate
from app.services.jobs.submission import build_job
from tests.app.api.test_bad_input_corpus import mlp_state
from tests.app.api.test_compliance import upload_model
from tests.app.api.test_resources import assert_problem, create_digits
from tests.in_process import run_job_in_process
from tests.workers.engine.trivial_kinds import COPIED_METRIC, COPY_MODEL, registered


def _body(**fields: Any) -> JobCreate:
    return JobCreate(kind=COPY_MODEL.name, **fields)


def test_a_kind_registered_in_a_test_is_validated_from_its_entry(
    api: TestClient, tenant, sessions, migrated: Settings
) -> None:
    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, dataset["id"])
    principal = Principal(tenant_id=tenant.id, key_id="test", scopes=frozenset(Scope))
    model_id = uuid.UUID(model["id"])
    with registered(), sessions() as session:
        job = build_job(session, principal, _body(model_id=model_id), migrated)
        assert job.kind == COPY_MODEL.name and job.model_id == model_id
        # The model's training data: the entry requires model_id only.
        assert str(job.dataset_id) == dataset["id"]
        assert job.method is None and job.params == {} and job.cache_key is None and job.forget_set_id is None
        refusals = [
            (_body(model_id=model_id, forget_set_id=uuid.uuid4()), "unexpected-field"),
            (_body(model_id=model_id, method="ft"), "unexpected-method"),
            (_body(model_id=model_id, params={"epochs": 1}), "invalid-params"),
            (_body(), "missing-field"),
        ]
        for body, code in refusals:
            with pytest.raises(DomainError) as refused:
                build_job(session, principal, body, migrated)
            assert refused.value.code == code
        session.rollback()


def test_a_kind_registered_in_a_test_runs_through_the_api_and_the_job_runner(
    api: TestClient, tenant, sessions, migrated: Settings
) -> None:
    """One registry entry and nothing else: the API accepts, stores, lists and describes the kind, the job
    runner runs it and stores its output model, which downloads as a copy of the input."""
    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, dataset["id"])
    with registered():
        kinds = {
            entry["name"]: entry for entry in api.get("/v1/job-kinds", headers=tenant.headers("read")).json()
        }
        assert kinds[COPY_MODEL.name]["required"] == ["model_id"]
        assert kinds[COPY_MODEL.name]["produces"] == ["model"]
        refused = api.post(
            "/v1/jobs",
            json={"kind": COPY_MODEL.name, "model_id": model["id"], "forget_set_id": str(uuid.uuid4())},
            headers=tenant.headers("submit"),
        )
        assert_problem(refused, 422)
        submitted = api.post(
            "/v1/jobs",
            json={"kind": COPY_MODEL.name, "model_id": model["id"]},
            headers=tenant.headers("submit"),
        )
        assert submitted.status_code == 202, submitted.text
        job_id = uuid.UUID(submitted.json()["id"])
        run_job_in_process(sessions, migrated, job_id)
    # The stored row outlives the registration: it reads back as the plain name.
    done = api.get(f"/v1/jobs/{job_id}", headers=tenant.headers("read")).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["kind"] == COPY_MODEL.name and done["metrics"] == {COPIED_METRIC: float(len(mlp_state()))}
    listed = api.get("/v1/jobs", params={"kind": COPY_MODEL.name}, headers=tenant.headers("read")).json()
    assert [row["id"] for row in listed["data"]] == [str(job_id)]
    original = api.get(f"/v1/models/{model['id']}/weights", headers=tenant.headers("read"))
    copied = api.get(f"/v1/models/{done['output_model_id']}/weights", headers=tenant.headers("read"))
    assert copied.headers["ETag"] == original.headers["ETag"]  # the same tensors (the canonical digest)


def test_a_kind_outside_the_registry_is_refused(api: TestClient, tenant) -> None:
    response = api.post("/v1/jobs", json={"kind": COPY_MODEL.name}, headers=tenant.headers("submit"))
    assert_problem(response, 422)
    assert COPY_MODEL.name not in api.get("/v1/job-kinds", headers=tenant.headers("read")).text
