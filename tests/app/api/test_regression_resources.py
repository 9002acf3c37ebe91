"""Regression datasets and target-range forget sets through the API (no workers needed)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.api.test_resources import create_digits
from workers.engine.datasets import build_dataset


def create_diabetes(api: TestClient, tenant) -> dict:
    response = api.post("/v1/datasets", json={"builtin": "diabetes"}, headers=tenant.headers("submit"))
    assert response.status_code in (200, 201), response.text
    return response.json()


def forget_set(api: TestClient, tenant, dataset_id: str, spec: dict):
    return api.post(
        "/v1/forget-sets", json={"dataset_id": dataset_id, "spec": spec}, headers=tenant.headers("submit")
    )


def test_regression_builtins_are_listed_with_their_task(api: TestClient, tenant) -> None:
    builtins = {d["name"]: d for d in api.get("/v1/datasets/builtins", headers=tenant.headers("read")).json()}
    assert builtins["diabetes"]["task_types"] == ["regression"]
    assert builtins["procedural_regression"]["task_types"] == ["regression"]
    methods = {m["name"]: m for m in api.get("/v1/methods", headers=tenant.headers("read")).json()}
    assert methods["gaussian_ft"]["task_types"] == ["regression"]
    for name in ("train", "retrain", "ft", "ga", "blindspot"):
        assert "regression" in methods[name]["task_types"]
    architectures = {
        a["name"]: a for a in api.get("/v1/architectures", headers=tenant.headers("read")).json()
    }
    assert architectures["resnet18_regressor"]["task_types"] == ["regression"]


def test_a_regression_dataset_has_no_classes(api: TestClient, tenant) -> None:
    dataset = create_diabetes(api, tenant)
    assert dataset["task"] == "regression" and dataset["num_classes"] == 1
    assert dataset["class_counts"] == [] and dataset["n_train"] == 354 and dataset["input_shape"] == [10]


@pytest.mark.parametrize(
    ("spec", "select"),
    [
        ({"kind": "target_range", "high": 100}, lambda y: y <= 100),
        ({"kind": "target_range", "low": 250.5}, lambda y: y >= 250.5),
        ({"kind": "target_range", "low": 100, "high": 150}, lambda y: (y >= 100) & (y <= 150)),
    ],
)
def test_target_range_forget_sets(api: TestClient, tenant, spec: dict, select) -> None:
    dataset = create_diabetes(api, tenant)
    response = forget_set(api, tenant, dataset["id"], spec)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "target_range" and body["spec"] == {"low": None, "high": None, **spec}
    targets = build_dataset("diabetes").y_train
    expected = np.flatnonzero(select(targets)).tolist()
    indices = api.get(f"/v1/forget-sets/{body['id']}/indices", headers=tenant.headers("read")).json()
    assert indices["indices"] == expected and body["size"] == len(expected) and body["forget_class"] is None


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ({"kind": "target_range", "low": 500}, "empty-forget-set"),
        ({"kind": "target_range", "low": 0}, "whole-dataset"),
        ({"kind": "class", "class": 1}, "task-mismatch"),
    ],
)
def test_bad_regression_forget_sets_are_refused(api: TestClient, tenant, spec: dict, code: str) -> None:
    dataset = create_diabetes(api, tenant)
    response = forget_set(api, tenant, dataset["id"], spec)
    assert response.status_code == 422 and response.json()["code"] == code, response.text


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "target_range"},
        {"kind": "target_range", "low": 5, "high": 1},
        {"kind": "target_range", "high": "nan"},
    ],
)
def test_malformed_target_ranges_are_validation_errors(api: TestClient, tenant, spec: dict) -> None:
    dataset = create_diabetes(api, tenant)
    assert forget_set(api, tenant, dataset["id"], spec).status_code == 422


def test_target_range_needs_a_regression_dataset(api: TestClient, tenant) -> None:
    digits = create_digits(api, tenant)
    response = forget_set(api, tenant, digits["id"], {"kind": "target_range", "high": 3})
    assert response.status_code == 422 and response.json()["code"] == "task-mismatch"


def test_training_a_classifier_on_regression_data_is_refused(api: TestClient, tenant) -> None:
    dataset = create_diabetes(api, tenant)
    body = {"kind": "train", "dataset_id": dataset["id"], "architecture": "mlp", "params": {}}
    response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 422 and response.json()["code"] == "task-mismatch"
    body["architecture"] = "mlp_regressor"
    response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    assert response.json()["arch_config"]["input_shape"] == [10]


def _regression_npz(**overrides: np.ndarray) -> bytes:
    from tests.app.api.test_resources import npz_bytes

    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((30, 4), dtype=np.float32),
        "y_train": rng.normal(50.0, 10.0, 30),  # float64 targets
        "x_test": rng.random((10, 4), dtype=np.float32),
        "y_test": np.arange(10),  # integer targets are fine too
        **overrides,
    }
    return npz_bytes(**arrays)


def test_upload_a_regression_npz(api: TestClient, tenant) -> None:
    response = api.post(
        "/v1/datasets/upload",
        files={"file": ("r.npz", _regression_npz())},
        data={"task": "regression"},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["task"] == "regression" and body["num_classes"] == 1 and body["class_counts"] == []
    ranged = forget_set(api, tenant, body["id"], {"kind": "target_range", "high": 50.0})
    assert ranged.status_code == 201, ranged.text


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"y_train": np.full(30, np.nan)}, "non-finite-values"),
        ({"num_classes": np.int64(3)}, "npz-unexpected-array"),
    ],
)
def test_bad_regression_uploads_are_refused(api: TestClient, tenant, overrides: dict, code: str) -> None:
    response = api.post(
        "/v1/datasets/upload",
        files={"file": ("r.npz", _regression_npz(**overrides))},
        data={"task": "regression"},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 422 and response.json()["code"] == code, response.text


def test_fractional_targets_are_refused_as_class_labels(api: TestClient, tenant) -> None:
    response = api.post(
        "/v1/datasets/upload", files={"file": ("r.npz", _regression_npz())}, headers=tenant.headers("submit")
    )
    assert response.status_code == 422 and response.json()["code"] == "non-integer-labels"
