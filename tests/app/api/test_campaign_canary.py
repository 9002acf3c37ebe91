"""The poisoning canary as a campaign option: ``{"canary": true}`` forgets exactly the Gaussian-poisoned
points of the campaign model's ``gaussian_poisoned`` dataset (computed from its recorded config); on any other
dataset it is refused with problem+json before anything is written."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Campaign, ForgetSet, Job
from tests.app.api.test_campaign_quota import MLP_CONFIG, RETRAIN
from tests.app.api.test_deletion import upload_model
from tests.app.api.test_resources import assert_problem, create_digits, model_weights
from workers.engine.datasets.poisoned import poison_indices

CANARY = {"fraction": 0.05, "sigma": 0.5, "seed": 4}


def _campaign(model: dict[str, Any], **ref: Any) -> dict[str, Any]:
    return {
        "name": "canary",
        "model_id": model["id"],
        "methods": [{"method": "ft", "params": {"epochs": 1}}],
        "forget_sets": [{"canary": True, **ref}],
        "seeds": [0],
        "retrain_params": RETRAIN,
    }


def test_canary_forget_set_is_the_poisoned_points(api: TestClient, tenant, sessions) -> None:
    created = api.post(
        "/v1/datasets",
        json={"builtin": "gaussian_poisoned", "config": CANARY},
        headers=tenant.headers("submit"),
    )
    assert created.status_code in (200, 201), created.text
    dataset = created.json()
    model = upload_model(api, tenant, model_weights("mlp", MLP_CONFIG), dataset["id"])
    response = api.post("/v1/campaigns", json=_campaign(model), headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    forget_set_id = response.json()["spec"]["forget_set_ids"][0]
    indices = api.get(f"/v1/forget-sets/{forget_set_id}/indices", headers=tenant.headers("read")).json()
    expected = poison_indices(dataset["n_train"], CANARY["fraction"], CANARY["seed"])
    assert indices["indices"] == expected.tolist() and len(expected) == round(0.05 * dataset["n_train"])
    forget_set = api.get(f"/v1/forget-sets/{forget_set_id}", headers=tenant.headers("read")).json()
    assert forget_set["name"] == "canary"


def test_canary_needs_a_poisoned_dataset(api: TestClient, tenant, sessions) -> None:
    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, model_weights("mlp", MLP_CONFIG), dataset["id"])

    def counts() -> tuple[int, int, int]:
        with sessions() as session:
            return tuple(  # type: ignore[return-value]
                session.scalar(select(func.count()).select_from(table))
                for table in (Campaign, Job, ForgetSet)
            )

    before = counts()
    refused = api.post("/v1/campaigns", json=_campaign(model), headers=tenant.headers("submit"))
    assert_problem(refused, 422, "not-a-canary-dataset")
    both = _campaign(model, spec={"kind": "class", "class": 3})
    assert_problem(api.post("/v1/campaigns", json=both, headers=tenant.headers("submit")), 422)
    assert counts() == before
    bad = api.post(
        "/v1/datasets",
        json={"builtin": "gaussian_poisoned", "config": {"fraction": 2}},
        headers=tenant.headers("submit"),
    )
    assert_problem(bad, 422, "invalid-dataset-config")
