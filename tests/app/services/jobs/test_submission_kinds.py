"""Submission validation reads a kind's registry entry: a kind registered by a test is validated without
edits to the submission code.

Only as far as the service layer: ``JobCreate.kind`` and the ``jobs.kind`` column use ``app.models.JobKind``
(a VARCHAR without a CHECK constraint, so a new member needs no migration), so a kind reaches the HTTP API and
the database once it is a member there too; the API's refusal of an unlisted kind is checked below.
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
from tests.app.api.test_compliance import upload_model
from tests.app.api.test_resources import assert_problem, create_digits
from tests.workers.engine.trivial_kinds import COPY_MODEL, registered


def _body(**fields: Any) -> JobCreate:
    # model_construct: JobCreate validates ``kind`` against the stored enum, which lacks the test's kind.
    return JobCreate.model_construct(kind=COPY_MODEL.name, **fields)


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


def test_the_api_lists_only_stored_kinds(api: TestClient, tenant) -> None:
    with registered():
        response = api.post("/v1/jobs", json={"kind": COPY_MODEL.name}, headers=tenant.headers("submit"))
    assert_problem(response, 422)
