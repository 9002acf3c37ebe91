"""Paper-scale presets through the API: listed, and a campaign named by one gets the preset's methods, forget
sets and retrain params, with the fields the body gives winning."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.api.test_campaign_quota import MLP_CONFIG, RETRAIN
from tests.app.api.test_deletion import upload_model
from tests.app.api.test_resources import assert_problem, create_digits, model_weights


def test_presets_are_listed_with_their_parts(api: TestClient, tenant) -> None:
    presets = {p["name"]: p for p in api.get("/v1/paper-presets", headers=tenant.headers("read")).json()}
    assert set(presets) == {"optml-cifar10-resnet18", "salun-cifar10-resnet18", "worstcase-cifar10-resnet18"}
    optml = presets["optml-cifar10-resnet18"]
    assert optml["train_recipe"]["epochs"] == 182 and set(optml["methods"]) == {"ft", "ga", "iu", "l1_sparse"}
    assert optml["deviations"]


def test_a_campaign_named_by_a_preset_runs_its_methods_and_forget_sets(api: TestClient, tenant) -> None:
    dataset = create_digits(api, tenant)
    model = upload_model(api, tenant, model_weights("mlp", MLP_CONFIG), dataset["id"])
    body = {
        "name": "optml",
        "model_id": model["id"],
        "paper_preset": "optml-cifar10-resnet18",
        "seeds": [0],
        "retrain_params": RETRAIN,  # given: wins over the preset's 160-epoch retrain
    }
    created = api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert created.status_code == 202, created.text
    spec = created.json()["spec"]
    assert spec["paper_preset"] == "optml-cifar10-resnet18"
    assert [m["method"] for m in spec["methods"]] == ["ft", "ga", "iu", "l1_sparse"]
    assert all(m["params"] == {"preset": "reference"} for m in spec["methods"])
    assert spec["retrain_params"] == RETRAIN and len(spec["forget_set_ids"]) == 1
    forget_set = api.get(
        f"/v1/forget-sets/{spec['forget_set_ids'][0]}", headers=tenant.headers("read")
    ).json()
    assert forget_set["name"] == "random-10pct" and forget_set["size"] == round(0.1 * dataset["n_train"])
    jobs = api.get("/v1/jobs", params={"limit": 100}, headers=tenant.headers("read")).json()["data"]
    unlearning = {job["method"]: job["params"] for job in jobs if job["kind"] == "unlearn"}
    assert (
        unlearning["ft"]["preset"] == "reference" and unlearning["ga"]["lr"] == 1e-4
    )  # resolved and recorded


def test_an_unknown_preset_is_refused(api: TestClient, tenant) -> None:
    body = {
        "name": "x",
        "model_id": "00000000-0000-0000-0000-000000000000",
        "paper_preset": "nope",
        "seeds": [0],
    }
    refused = api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert_problem(refused, 422)
    assert "optml-cifar10-resnet18" in refused.text
