"""Job submission, reading, listing and cancelling through the API (no worker runs these jobs)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.app.api.test_resources import assert_problem, create_digits

RECIPE = {"epochs": 2, "batch_size": 64, "lr": 0.05}


def train_body(dataset_id: str, **extra) -> dict:
    return {
        "kind": "train",
        "dataset_id": dataset_id,
        "architecture": "mlp",
        "arch_config": {"hidden": [16]},
        "params": {"recipe": RECIPE},
        **extra,
    }


@pytest.fixture
def dataset(api: TestClient, tenant) -> dict:
    return create_digits(api, tenant)


def test_submit_returns_202_location_and_records_everything(
    api: TestClient, tenant, dataset, recording_publisher
) -> None:
    response = api.post("/v1/jobs", json=train_body(dataset["id"], seed=11), headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["seed"] == 11 and job["method"] == "train"
    assert (
        job["params"]["recipe"]["epochs"] == 2 and "momentum" in job["params"]["recipe"]
    )  # defaults filled in
    assert job["arch_config"]["num_classes"] == 10  # derived from the dataset
    assert job["code_version"]
    assert uuid.UUID(job["id"]) in recording_publisher.published


def test_seed_is_drawn_and_recorded_when_omitted(api: TestClient, tenant, dataset) -> None:
    job = api.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit")).json()
    assert isinstance(job["seed"], int)


def test_idempotency_key_replays_and_rejects_other_bodies(api: TestClient, tenant, dataset) -> None:
    headers = {**tenant.headers("submit"), "Idempotency-Key": "abc-123"}
    first = api.post("/v1/jobs", json=train_body(dataset["id"], seed=1), headers=headers)
    again = api.post("/v1/jobs", json=train_body(dataset["id"], seed=1), headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = api.post("/v1/jobs", json=train_body(dataset["id"], seed=2), headers=headers)
    assert_problem(other, 422, "idempotency-key-reused")
    listing = api.get("/v1/jobs", headers=tenant.headers("read")).json()
    assert len(listing["data"]) == 1


def test_etag_and_304(api: TestClient, tenant, dataset) -> None:
    job = api.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit")).json()
    first = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read"))
    tag = first.headers["etag"]
    cached = api.get(f"/v1/jobs/{job['id']}", headers={**tenant.headers("read"), "If-None-Match": tag})
    assert cached.status_code == 304 and cached.content == b""
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit"))
    changed = api.get(f"/v1/jobs/{job['id']}", headers={**tenant.headers("read"), "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


def test_cancel_queued_job_is_immediate_and_idempotent(api: TestClient, tenant, dataset) -> None:
    job = api.post("/v1/jobs", json=train_body(dataset["id"]), headers=tenant.headers("submit")).json()
    first = api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit"))
    assert first.status_code == 202 and first.json()["status"] == "cancelled"
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit"))
    assert again.status_code == 202 and again.json()["status"] == "cancelled"
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant.headers("read")).json()
    assert [e["type"] for e in events] == ["queued", "cancelled"]


def test_cursor_pagination_and_filters(api: TestClient, tenant, dataset) -> None:
    ids = [
        api.post("/v1/jobs", json=train_body(dataset["id"], seed=s), headers=tenant.headers("submit")).json()[
            "id"
        ]
        for s in range(5)
    ]
    api.post(f"/v1/jobs/{ids[0]}/cancel", headers=tenant.headers("submit"))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params, headers=tenant.headers("read")).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    cancelled = api.get("/v1/jobs", params={"status": "cancelled"}, headers=tenant.headers("read")).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert_problem(
        api.get("/v1/jobs", params={"cursor": "!!!"}, headers=tenant.headers("read")), 400, "invalid-cursor"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "unlearn", "method": "nope"}, "unknown-method"),
        ({"kind": "train"}, "missing-field"),
        ({"kind": "evaluate", "method": "ft"}, "unexpected-method"),
        ({"kind": "unlearn", "method": "train"}, "unexpected-method"),
        ({"kind": "teleport"}, "validation-error"),
        ({"kind": "train", "seed": -1}, "validation-error"),
        ({"kind": "train", "device": "tpu"}, "validation-error"),
        ({"kind": "train", "bogus": 1}, "validation-error"),
    ],
)
def test_invalid_submissions(api: TestClient, tenant, body: dict, code: str) -> None:
    assert_problem(api.post("/v1/jobs", json=body, headers=tenant.headers("submit")), 422, code)


@pytest.mark.parametrize(
    "recipe",
    [
        {"epochs": 10**9},
        {"lr": "NaN"},
        {"lr": "Infinity"},
        {"lr": -1},
        {"batch_size": 0},
        {"unknown_knob": 1},
    ],
)
def test_absurd_hyperparameters_rejected(api: TestClient, tenant, dataset, recipe: dict) -> None:
    body = train_body(dataset["id"])
    body["params"] = {"recipe": {**RECIPE, **recipe}}
    problem = assert_problem(
        api.post("/v1/jobs", json=body, headers=tenant.headers("submit")), 422, "invalid-params"
    )
    assert problem["errors"]


def test_architecture_must_match_dataset(api: TestClient, tenant, dataset) -> None:
    body = train_body(dataset["id"])
    body["arch_config"] = {"hidden": [16], "num_classes": 3}
    assert_problem(
        api.post("/v1/jobs", json=body, headers=tenant.headers("submit")),
        422,
        "architecture-dataset-mismatch",
    )


def test_malformed_json_is_problem(api: TestClient, tenant) -> None:
    response = api.post(
        "/v1/jobs",
        content=b"{not json",
        headers={**tenant.headers("submit"), "content-type": "application/json"},
    )
    assert_problem(response, 422, "validation-error")


def test_unknown_job_is_404(api: TestClient, tenant) -> None:
    assert_problem(api.get(f"/v1/jobs/{uuid.uuid4()}", headers=tenant.headers("read")), 404, "job-not-found")


def test_oversized_architecture_rejected(api: TestClient, tenant, dataset) -> None:
    body = train_body(dataset["id"])
    body["arch_config"] = {"hidden": [16_384] * 3}  # ~540M parameters, within each field's range
    problem = assert_problem(api.post("/v1/jobs", json=body, headers=tenant.headers("submit")), 422)
    assert "parameters" in problem["detail"]
