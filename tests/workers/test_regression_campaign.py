"""A regression campaign through the API with real workers: diabetes, an MLP regressor, a target-range
forget set, blindspot and gaussian_ft against the retrain oracle; the table has the regression columns
(forget/retain/test MAE, MIA-Efficacy, W1, AIN) and an Avg-Gap over them."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient

from tests.app.api.test_regression_resources import create_diabetes
from tests.workers.test_campaigns import wait_campaign
from tests.workers.test_job_flow import run
from workers.engine.metrics.regression import REGRESSION_COLUMNS, REGRESSION_GAP_KEYS

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RECIPE = {
    "epochs": 40,
    "batch_size": 32,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "augment": False,
}
SEEDS = [0, 1]
METHODS = [
    {
        "method": "blindspot",
        "params": {"blindspot_epochs": 12, "blindspot_batch_size": 32, "epochs": 4, "batch_size": 32},
    },
    {"method": "gaussian_ft", "params": {"epochs": 2, "batch_size": 32}},
]


@pytest.fixture(scope="module")
def campaign(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    from tests.conftest import make_tenant

    tenant = make_tenant(sessions, migrated)
    dataset = create_diabetes(live_api, tenant)
    train = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp_regressor",
            "arch_config": {"hidden": [32, 32]},
            "params": {"recipe": RECIPE},
            "seed": 0,
        },
    )
    assert set(train["metrics"]) == {"train_mae", "train_mse", "test_mae", "test_mse"}
    body = {
        "name": "regression",
        "model_id": train["output_model_id"],
        "methods": METHODS,
        "forget_sets": [{"spec": {"kind": "target_range", "high": 100}, "name": "target <= 100"}],
        "seeds": SEEDS,
    }
    response = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    finished = wait_campaign(live_api, tenant, response.json()["id"])
    assert finished["status"] == "finished", finished
    return {"tenant": tenant, "campaign": finished}


def test_regression_campaign_table(live_api: TestClient, campaign: dict) -> None:
    tenant, campaign_id = campaign["tenant"], campaign["campaign"]["id"]
    table = live_api.get(f"/v1/campaigns/{campaign_id}/table", headers=tenant.headers("read")).json()
    assert table["columns"] == [*REGRESSION_COLUMNS, "avg_gap", "rte_seconds"]
    rows = {row["row"]: row for row in table["rows"]}
    assert set(rows) == {"original", "retrain", "blindspot", "gaussian_ft"}
    for name, row in rows.items():
        assert all(job["status"] == "succeeded" for job in row["jobs"]), row
        for key in ("forget_mae", "retain_mae", "test_mae", "forget_test_mae", "MIA-Efficacy", "W1"):
            stat = row["metrics"][key]
            assert stat["mean"] is not None and stat["n"] == len(SEEDS) if key == "W1" else stat["n"] >= 1, (
                name,
                key,
                stat,
            )
    retrain = rows["retrain"]
    assert retrain["metrics"]["W1"]["mean"] == 0.0 and retrain["metrics"]["AIN"]["mean"] == 1.0
    assert retrain["avg_gap"]["mean"] == 0.0
    assert rows["original"]["metrics"]["W1"]["mean"] > 0.0  # the original against each seed's retrain
    assert rows["original"]["metrics"]["AIN"]["n"] == 0  # an evaluation does not relearn
    for method in ("blindspot", "gaussian_ft"):
        row = rows[method]
        assert row["avg_gap"]["n"] == len(SEEDS) and row["avg_gap"]["mean"] > 0.0
        assert row["metrics"]["AIN"]["n"] == len(SEEDS) and row["rte_seconds"]["mean"] > 0.0
    # blindspot's predictions on the forget set are closer to the retrained model's than the original's
    assert rows["blindspot"]["metrics"]["W1"]["mean"] < rows["original"]["metrics"]["W1"]["mean"]

    response = live_api.get(
        f"/v1/campaigns/{campaign_id}/table", params={"format": "csv"}, headers=tenant.headers("read")
    )
    records = list(csv.DictReader(io.StringIO(response.text)))
    assert len(records) == 4 and {"forget_mae_mean", "W1_mean", "AIN_std", "avg_gap_mean"} <= set(records[0])


def test_regression_comparison_view(live_api: TestClient, campaign: dict) -> None:
    tenant = campaign["tenant"]
    forget_set_id = campaign["campaign"]["spec"]["forget_set_ids"][0]
    comparison = live_api.get(
        f"/v1/forget-sets/{forget_set_id}/comparison", headers=tenant.headers("read")
    ).json()
    assert comparison["columns"] == [*REGRESSION_COLUMNS, "avg_gap", "rte_seconds"]
    rows = comparison["rows"]
    assert rows[0]["kind"] == "retrain" and rows[0]["metrics"]["W1"] == 0.0
    by_id = {row["job_id"]: row for row in rows}
    for row in rows:
        if row["kind"] != "unlearn":
            continue
        reference = by_id[row["reference_job_id"]]
        expected = sum(abs(row["metrics"][k] - reference["metrics"][k]) for k in REGRESSION_GAP_KEYS) / 4
        assert row["avg_gap"] == pytest.approx(expected)
        assert row["metrics"]["AIN"] == pytest.approx(
            row["metrics"]["relearn_steps"] / reference["metrics"]["relearn_steps"]
        )
        assert row["metrics"]["W1"] > 0.0
