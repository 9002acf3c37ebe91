"""Campaign cells count toward the active-jobs quota (issue 17: a campaign created 422 active jobs against a
limit of 100). Creation is refused up front with 429 naming active / limit / requested; a later stage that
would not fit when its turn comes stops the campaign with the reason instead of exceeding the quota."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import Job, JobStatus
from app.services.jobs import campaigns as campaign_service
from tests.app.api.test_deletion import create_forget_set, submit, train_body, upload_model
from tests.app.api.test_resources import assert_problem, create_digits, model_weights
from tests.conftest import RecordingPublisher, Tenant

LIMIT = 10
MLP_CONFIG = {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 10}
RETRAIN = {"recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}}


@pytest.fixture(scope="module")
def limited_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(update={"max_active_jobs_per_tenant": LIMIT})


@pytest.fixture(scope="module")
def limited(limited_settings: Settings) -> Iterator[TestClient]:
    """The API with a small active-jobs quota; nothing runs the jobs (a recording publisher)."""
    from app.main import create_app

    with TestClient(create_app(limited_settings, publisher=RecordingPublisher())) as client:
        yield client


@pytest.fixture
def setup(limited: TestClient, tenant: Tenant) -> dict[str, Any]:
    dataset = create_digits(limited, tenant)
    model = upload_model(limited, tenant, model_weights("mlp", MLP_CONFIG), dataset["id"])
    return {
        "dataset": dataset,
        "model": model,
        "sweep": create_forget_set(limited, tenant, dataset["id"], cls=3),
        "forget": create_forget_set(limited, tenant, dataset["id"], cls=5),
    }


def _campaign(setup: dict[str, Any], seeds: int, methods: int = 2, grid: bool = False) -> dict[str, Any]:
    """Without a grid: one stage of 1 evaluation + seeds x (1 retrain + methods) jobs."""
    entries: list[dict[str, Any]] = [
        {"method": "ft", "label": f"ft-{i}", "params": {"epochs": 1 + i}} for i in range(methods)
    ]
    body: dict[str, Any] = {
        "name": "quota",
        "model_id": setup["model"]["id"],
        "methods": entries,
        "forget_sets": [{"forget_set_id": setup["forget"]["id"]}],
        "seeds": list(range(seeds)),
        "retrain_params": RETRAIN,
    }
    if grid:
        entries[0]["grid"] = {"lr": [0.01, 0.02]}
        body["sweep_forget_set"] = {"forget_set_id": setup["sweep"]["id"]}
    return body


def _fill(limited: TestClient, tenant: Tenant, setup: dict[str, Any], count: int) -> None:
    for seed in range(count):
        submit(limited, tenant, train_body(setup["dataset"]["id"]) | {"seed": 1000 + seed})


def _active(sessions: sessionmaker[Session], tenant: Tenant) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count(Job.id)).where(
                    Job.tenant_id == tenant.id, Job.status.in_((JobStatus.queued, JobStatus.running))
                )
            )
            or 0
        )


def test_campaign_over_the_quota_is_refused_up_front(
    limited: TestClient, tenant: Tenant, setup: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    _fill(limited, tenant, setup, 4)
    body = _campaign(setup, seeds=2)  # 1 + 2 x (1 + 2) = 7 jobs; 4 + 7 > 10
    refused = limited.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    problem = assert_problem(refused, 429, "too-many-active-jobs")
    assert problem["errors"] == [{"active": 4, "limit": LIMIT, "requested": 7, "stage": "main"}]
    assert "4 queued or running" in problem["detail"] and f"limit is {LIMIT}" in problem["detail"]
    assert int(refused.headers["retry-after"]) > 0
    assert _active(sessions, tenant) == 4  # nothing of the campaign was kept
    listing = limited.get("/v1/campaigns", headers=tenant.headers("read")).json()["data"]
    assert listing == []


def test_campaign_that_fits_is_accepted_and_counts(
    limited: TestClient, tenant: Tenant, setup: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    _fill(limited, tenant, setup, 3)
    accepted = limited.post("/v1/campaigns", json=_campaign(setup, seeds=2), headers=tenant.headers("submit"))
    assert accepted.status_code == 202, accepted.text
    assert _active(sessions, tenant) == LIMIT  # 3 + 7: exactly at the limit
    # Its cells count: the next job is refused.
    refused = limited.post(
        "/v1/jobs", json=train_body(setup["dataset"]["id"]) | {"seed": 7}, headers=tenant.headers("submit")
    )
    assert_problem(refused, 429, "too-many-active-jobs")


def test_campaign_larger_than_the_quota_says_to_split_it(
    limited: TestClient, tenant: Tenant, setup: dict[str, Any]
) -> None:
    body = _campaign(setup, seeds=4)  # 1 + 4 x 3 = 13 jobs: never fits under 10
    refused = limited.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    problem = assert_problem(refused, 429, "too-many-active-jobs")
    assert problem["errors"] == [{"active": 0, "limit": LIMIT, "requested": 13, "stage": "main"}]
    assert "split the campaign" in problem["detail"] and "retry-after" not in refused.headers

    # A grid campaign whose later stage could never fit is refused before its tuning stage runs.
    grid = _campaign(setup, seeds=4, grid=True)
    problem = assert_problem(
        limited.post("/v1/campaigns", json=grid, headers=tenant.headers("submit")),
        429,
        "too-many-active-jobs",
    )
    assert problem["errors"] == [{"active": 0, "limit": LIMIT, "requested": 13, "stage": "main"}]
    assert "up to 13 new jobs" in problem["detail"]


def test_later_stage_over_the_quota_stops_the_campaign(
    limited: TestClient,
    tenant: Tenant,
    setup: dict[str, Any],
    sessions: sessionmaker[Session],
    limited_settings: Settings,
) -> None:
    # Tuning: the sweep set's evaluation + retrain + 2 grid candidates = 4 jobs; main: 1 + 1 x (1 + 1) = 3.
    body = _campaign(setup, seeds=1, methods=1, grid=True)
    created = limited.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert created.status_code == 202, created.text
    campaign = created.json()
    assert campaign["stage"] == "tuning" and _active(sessions, tenant) == 4
    campaign_id = uuid.UUID(campaign["id"])

    # The tuning jobs end (failed is enough to advance), and meanwhile the tenant fills its quota.
    with sessions() as session:
        session.execute(update(Job).where(Job.campaign_id == campaign_id).values(status=JobStatus.failed))
        session.commit()
    _fill(limited, tenant, setup, 8)  # 8 + 3 > 10

    assert campaign_service.advance(sessions, campaign_id, limited_settings) == []
    after = limited.get(f"/v1/campaigns/{campaign_id}", headers=tenant.headers("read")).json()
    assert after["status"] == "cancelled" and after["finished_at"] is not None
    failure = after["spec"]["failure"]
    assert failure["code"] == "too-many-active-jobs" and failure["stage"] == "main"
    assert (failure["active"], failure["limit"], failure["requested"]) == (8, LIMIT, 3)
    assert "LETHE_MAX_ACTIVE_JOBS_PER_TENANT" in failure["detail"]
    assert _active(sessions, tenant) == 8  # the main stage created nothing
    with sessions() as session:
        assert session.scalar(select(func.count(Job.id)).where(Job.campaign_id == campaign_id)) == 4
    # A later tick leaves the stopped campaign alone.
    assert campaign_service.advance(sessions, campaign_id, limited_settings) == []
