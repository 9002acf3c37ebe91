"""Audit submissions on regression models (issue 14): accepted since the attacks have regression scores;
what is still refused is an audited method that does not support the model's task (no workers needed)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.app.api.test_regression_resources import create_diabetes, forget_set
from tests.app.api.test_resources import assert_problem, create_digits, model_weights

REGRESSOR_CONFIG = {"input_shape": [10], "hidden": [8]}
CLASSIFIER_CONFIG = {"input_shape": [1, 8, 8], "hidden": [8], "num_classes": 10}
RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.01}


def _upload(api: TestClient, tenant, dataset_id: str, architecture: str, config: dict) -> str:
    response = api.post(
        "/v1/models",
        data={"architecture": architecture, "config": json.dumps(config), "dataset_id": dataset_id},
        files={"weights": ("m.safetensors", model_weights(architecture, config))},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _audit(api: TestClient, tenant, model: str, forget: str, method: str):
    body = {
        "kind": "audit",
        "model_id": model,
        "forget_set_id": forget,
        "params": {"method": method, "shadows": 3, "recipe": RECIPE},
    }
    return api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))


def test_a_regression_model_is_audited_with_a_regression_method(api: TestClient, tenant) -> None:
    dataset = create_diabetes(api, tenant)
    model = _upload(api, tenant, dataset["id"], "mlp_regressor", REGRESSOR_CONFIG)
    forget = forget_set(api, tenant, dataset["id"], {"kind": "target_range", "high": 100})
    assert forget.status_code == 201, forget.text
    for method in ("ft", "gaussian_ft", "retrain"):
        response = _audit(api, tenant, model, forget.json()["id"], method)
        assert response.status_code == 202, (method, response.text)
        assert response.json()["kind"] == "audit" and response.json()["method"] == method
    # salun computes saliency from the cross-entropy of class labels: no regression counterpart.
    assert_problem(_audit(api, tenant, model, forget.json()["id"], "salun"), 422, "task-mismatch")


def test_a_classifier_audit_refuses_a_regression_only_method(api: TestClient, tenant) -> None:
    dataset = create_digits(api, tenant)
    model = _upload(api, tenant, dataset["id"], "mlp", CLASSIFIER_CONFIG)
    forget = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    assert _audit(api, tenant, model, forget.json()["id"], "ft").status_code == 202
    assert_problem(_audit(api, tenant, model, forget.json()["id"], "gaussian_ft"), 422, "task-mismatch")
