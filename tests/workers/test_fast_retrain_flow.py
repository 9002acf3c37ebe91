"""The speed-run network and recipe through the job path (issue 20): an original trained with the
``speedrun`` recipe base on a procedural CIFAR-shaped set, a campaign whose retrain oracle inherits that
recipe next to ``ft``, the comparison, and a U-LiRA audit whose shadows train with the same recipe.

Scaled down for the CI's CPU (16 x 16 images, narrow blocks, 3 epochs): every job takes about a second.
"""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from tests.workers.test_campaigns import wait_campaign
from tests.workers.test_job_flow import run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

IMAGES = {"n_train": 160, "n_test": 60, "image_size": 16, "channels": 3, "num_classes": 10}
ARCH_CONFIG = {"widths": [8, 16, 16]}
RECIPE = {"base": "speedrun", "epochs": 3, "batch_size": 64, "lr": 0.1}
QUICK_FT = {"epochs": 1, "lr": 0.01}


@pytest.fixture(scope="module")
def original(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    from tests.conftest import make_tenant

    tenant = make_tenant(sessions, migrated)
    dataset = live_api.post(
        "/v1/datasets", json={"builtin": "procedural", "config": IMAGES}, headers=tenant.headers("submit")
    )
    assert dataset.status_code in (200, 201), dataset.text
    train = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset.json()["id"],
            "architecture": "speedrun_cnn",
            "arch_config": ARCH_CONFIG,
            "params": {"recipe": RECIPE},
            "seed": 1,
        },
    )
    return {"tenant": tenant, "dataset": dataset.json(), "train": train}


def test_the_original_records_the_expanded_recipe(live_api: TestClient, original: dict) -> None:
    tenant, train = original["tenant"], original["train"]
    model = live_api.get(f"/v1/models/{train['output_model_id']}", headers=tenant.headers("read")).json()
    recipe = model["train_recipe"]
    assert recipe["whiten"] is True and recipe["nesterov"] is True and recipe["label_smoothing"] == 0.2
    assert recipe["schedule"] == "warmup_linear" and recipe["lookahead_steps"] == 5 and "base" not in recipe
    assert train["result"]["whitened"] is True and train["result"]["augment_applied"] is True


def test_campaign_with_the_fast_recipe_as_retrain_oracle(live_api: TestClient, original: dict) -> None:
    tenant = original["tenant"]
    body = {
        "name": "fast oracle",
        "model_id": original["train"]["output_model_id"],
        "methods": [{"method": "ft", "params": QUICK_FT}],
        "forget_sets": [{"spec": {"kind": "random", "fraction": 0.1, "seed": 0}, "name": "random 10%"}],
        "seeds": [0],
    }
    response = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    campaign = wait_campaign(live_api, tenant, response.json()["id"])
    assert campaign["status"] == "finished", campaign
    table = live_api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read")).json()
    assert [row["row"] for row in table["rows"]] == ["original", "retrain", "ft"]
    assert all(job["status"] == "succeeded" for row in table["rows"] for job in row["jobs"])

    forget_set = campaign["spec"]["forget_set_ids"][0]
    comparison = live_api.get(
        f"/v1/forget-sets/{forget_set}/comparison", headers=tenant.headers("read")
    ).json()
    rows = {row["kind"]: row for row in comparison["rows"]}
    assert comparison["rows"][0]["kind"] == "retrain" and rows["retrain"]["avg_gap"] == pytest.approx(0.0)
    ft = next(row for row in comparison["rows"] if row["kind"] == "unlearn")
    assert ft["reference_job_id"] == rows["retrain"]["job_id"] and math.isfinite(ft["avg_gap"])
    # The oracle retrained with the original's speed-run recipe, whitening from the retain set.
    retrain = live_api.get(f"/v1/jobs/{rows['retrain']['job_id']}", headers=tenant.headers("read")).json()
    assert retrain["result"]["params"]["recipe_source"] == "original"
    assert retrain["result"]["params"]["recipe"]["whiten"] is True and retrain["result"]["whitened"] is True


def test_ulira_audit_trains_its_shadows_with_the_fast_recipe(live_api: TestClient, original: dict) -> None:
    tenant = original["tenant"]
    forget = live_api.post(
        "/v1/forget-sets",
        json={
            "dataset_id": original["dataset"]["id"],
            "spec": {"kind": "random", "fraction": 0.1, "seed": 1},
        },
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    audit = run(
        live_api,
        tenant,
        {
            "kind": "audit",
            "model_id": original["train"]["output_model_id"],
            "forget_set_id": forget.json()["id"],
            "params": {
                "method": "ft",
                "method_params": QUICK_FT,
                "shadows": 3,
                "attacks": ["ulira"],
                "n_bootstrap": 20,
            },
            "seed": 2,
        },
    )
    metrics = audit["metrics"]
    assert metrics["models_trained"] == 3 * 3 and 0.0 <= metrics["ulira_auc"] <= 1.0, metrics
    assert audit["result"]["recipe"]["whiten"] is True
