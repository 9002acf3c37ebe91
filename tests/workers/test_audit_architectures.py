"""An audit with every attack family on every registry architecture that audits accept, through the job
path (API → broker → prefork worker → shadow store → result), not only the engine.

BatchNorm models (small_cnn, resnet18) carry a 0-d ``num_batches_tracked`` buffer per layer; the shadow
store once failed to save it (issue 14). Each architecture is tiny so that its 6·K models train in seconds.

The regression heads run the same audit with the regression scores (``metrics/regression_scores.py``) on a
target-range forget set: ``mlp_regressor`` on diabetes (real tabular data), the two convolutional heads on
procedural_regression (diabetes has 10 features, not images, so a CNN cannot take it).
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.workers.test_job_flow import run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHADOWS = 3
TINY_RECIPE = {"epochs": 2, "batch_size": 128, "lr": 0.05, "momentum": 0.9}
QUICK_FT = {"epochs": 1, "lr": 0.01, "batch_size": 128}
ARCHITECTURES = {
    "mlp": {"input_shape": [1, 8, 8], "hidden": [16]},
    "small_cnn": {"in_channels": 1, "image_size": 8, "channels": [4, 8]},
    "resnet18": {"in_channels": 1, "width": 2},
}
ATTACK_METRICS = ("ulira_auc", "kaggle_score", "lira_unlearned_auc", "rmia_unlearned_auc")


@pytest.fixture(scope="module")
def digits(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    from tests.app.api.test_resources import create_digits
    from tests.conftest import make_tenant

    tenant = make_tenant(sessions, migrated)
    dataset = create_digits(live_api, tenant)
    forget = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    return {"tenant": tenant, "dataset": dataset, "forget_set": forget.json()["id"]}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_audit_with_every_attack_succeeds_on_each_architecture(
    live_api: TestClient, digits: dict, architecture: str
) -> None:
    tenant = digits["tenant"]
    train = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": digits["dataset"]["id"],
            "architecture": architecture,
            "arch_config": ARCHITECTURES[architecture],
            "params": {"recipe": TINY_RECIPE},
            "seed": 1,
        },
    )
    audit = run(
        live_api,
        tenant,
        {
            "kind": "audit",
            "model_id": train["output_model_id"],
            "forget_set_id": digits["forget_set"],
            "params": {"method": "ft", "method_params": QUICK_FT, "shadows": SHADOWS, "n_bootstrap": 20},
            "seed": 2,
        },
    )
    metrics = audit["metrics"]
    assert metrics["models_trained"] == 6 * SHADOWS, metrics
    for name in ATTACK_METRICS:
        assert np.isfinite(metrics[name]), (architecture, name, metrics[name])
    assert set(audit["result"]["attacks"]) >= {"ulira", "kaggle", "lira", "rmia"}
    stored = live_api.get("/v1/shadow-models", headers=tenant.headers("read"))
    assert stored.status_code == 200, stored.text


# Regression heads: (builtin dataset, its config, the target-range forget set, the architecture's config).
REGRESSION_IMAGES = {"n_train": 96, "n_test": 64, "channels": 1, "image_size": 8}
REGRESSION_ARCHITECTURES: dict[str, tuple[str, dict, dict, dict]] = {
    "mlp_regressor": ("diabetes", {}, {"kind": "target_range", "high": 100}, {"hidden": [16]}),
    "small_cnn_regressor": (
        "procedural_regression",
        REGRESSION_IMAGES,
        {"kind": "target_range", "high": 40},
        {"in_channels": 1, "image_size": 8, "channels": [4, 8]},
    ),
    "resnet18_regressor": (
        "procedural_regression",
        REGRESSION_IMAGES,
        {"kind": "target_range", "high": 40},
        {"in_channels": 1, "width": 2},
    ),
}


@pytest.fixture(scope="module")
def regression_tenant(live_api: TestClient, worker_group, sessions, migrated):
    from tests.conftest import make_tenant

    return make_tenant(sessions, migrated)


@pytest.mark.parametrize("architecture", sorted(REGRESSION_ARCHITECTURES))
def test_audit_with_every_attack_succeeds_on_each_regression_head(
    live_api: TestClient, regression_tenant, architecture: str
) -> None:
    tenant = regression_tenant
    builtin, dataset_config, forget_spec, arch_config = REGRESSION_ARCHITECTURES[architecture]
    dataset = live_api.post(
        "/v1/datasets", json={"builtin": builtin, "config": dataset_config}, headers=tenant.headers("submit")
    )
    assert dataset.status_code in (200, 201), dataset.text
    dataset_id = dataset.json()["id"]
    forget = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset_id, "spec": forget_spec},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    train = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset_id,
            "architecture": architecture,
            "arch_config": arch_config,
            "params": {"recipe": TINY_RECIPE},
            "seed": 1,
        },
    )
    audit = run(
        live_api,
        tenant,
        {
            "kind": "audit",
            "model_id": train["output_model_id"],
            "forget_set_id": forget.json()["id"],
            "params": {"method": "ft", "method_params": QUICK_FT, "shadows": SHADOWS, "n_bootstrap": 20},
            "seed": 2,
        },
    )
    metrics, result = audit["metrics"], audit["result"]
    assert metrics["models_trained"] == 6 * SHADOWS, metrics
    for name in ATTACK_METRICS:
        assert np.isfinite(metrics[name]), (architecture, name, metrics[name])
    assert set(result["attacks"]) >= {"ulira", "kaggle", "lira", "rmia"}
    # LiRA / RMIA's non-members: the test samples inside the forgotten target range.
    for attack in ("lira", "rmia"):
        assert result["nonmembers"][attack]["rule"] == "forgotten_range_test", result["nonmembers"]
    assert result["attacks"]["kaggle"]["per_forget_set"][0]["utility"] == "mae"
