"""Campaigns and prune-first through the API with real workers (SQLite/embedded and Postgres/Redis)."""

from __future__ import annotations

import csv
import io
import time
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors
from sqlalchemy import func, select

from app.models import Job, JobKind
from tests.workers.test_job_flow import FAST_RECIPE, finished, run, train_original, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CAMPAIGN_TIMEOUT_S = 600.0
SEEDS = [0, 1, 2]
# Small, fast settings: the point is the grid machinery, not tuned forgetting.
FOUR_METHODS = [
    {"method": "ft", "params": {"epochs": 2, "batch_size": 64}},
    {"method": "ga", "params": {"epochs": 2, "lr": 1e-3, "batch_size": 64}},
    {"method": "rl", "params": {"epochs": 2, "batch_size": 64}},
    {"method": "l1_sparse", "params": {"epochs": 2, "batch_size": 64}},
]
FORGET_SETS = [
    {"spec": {"kind": "random", "fraction": 0.1, "seed": 0}, "name": "random 10%"},
    {"spec": {"kind": "class", "class": 3}, "name": "class 3"},
]


def wait_campaign(api: TestClient, tenant, campaign_id: str) -> dict:
    deadline = time.monotonic() + CAMPAIGN_TIMEOUT_S
    campaign: dict = {}
    while time.monotonic() < deadline:
        campaign = api.get(f"/v1/campaigns/{campaign_id}", headers=tenant.headers("read")).json()
        if campaign["status"] != "running":
            return campaign
        time.sleep(0.5)
    raise AssertionError(f"campaign {campaign_id} did not finish: {campaign}")


@pytest.fixture(scope="module")
def setup(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    tenant, dataset, train = train_original(live_api, sessions, migrated)
    return {"tenant": tenant, "dataset": dataset, "model": train["output_model_id"]}


@pytest.fixture(scope="module")
def first_campaign(live_api: TestClient, setup) -> dict:
    tenant = setup["tenant"]
    body = {
        "name": "four methods",
        "model_id": setup["model"],
        "methods": FOUR_METHODS,
        "forget_sets": FORGET_SETS,
        "seeds": SEEDS,
    }
    response = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/campaigns/{response.json()['id']}"
    campaign = wait_campaign(live_api, tenant, response.json()["id"])
    assert campaign["status"] == "finished" and campaign["progress"]["fraction"] == 1.0
    return campaign


def test_campaign_table_has_mean_and_std_over_seeds(
    live_api: TestClient, setup, first_campaign, sessions
) -> None:
    tenant = setup["tenant"]
    table = live_api.get(f"/v1/campaigns/{first_campaign['id']}/table", headers=tenant.headers("read")).json()
    rows = table["rows"]
    assert len(rows) == len(FORGET_SETS) * (2 + len(FOUR_METHODS))
    for row in rows:
        assert all(job["status"] == "succeeded" for job in row["jobs"]), row
        expected_n = 1 if row["row"] == "original" else len(SEEDS)
        for metric in ("UA", "RA", "TA", "MIA-Efficacy"):
            stat = row["metrics"][metric]
            assert stat["n"] == expected_n and stat["mean"] is not None and stat["std"] >= 0
        if row["row"] == "retrain":
            assert row["avg_gap"]["mean"] == 0.0
            if row["forget_set_name"] == "class 3":
                assert row["metrics"]["UA"]["mean"] == 100.0
        elif row["row"] != "original":
            assert row["avg_gap"]["n"] == len(SEEDS) and row["rte_seconds"]["mean"] > 0
    ft_class = next(r for r in rows if r["row"] == "ft" and r["forget_set_name"] == "class 3")
    assert sorted(job["seed"] for job in ft_class["jobs"]) == SEEDS

    csv_response = live_api.get(
        f"/v1/campaigns/{first_campaign['id']}/table",
        params={"format": "csv"},
        headers=tenant.headers("read"),
    )
    assert csv_response.headers["content-type"].startswith("text/csv")
    records = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert len(records) == len(rows) and {"UA_mean", "UA_std", "avg_gap_mean", "rte_seconds_mean"} <= set(
        records[0]
    )

    with sessions() as session:
        retrains = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant.id, Job.kind == JobKind.retrain)
        )
    assert retrains == len(FORGET_SETS) * len(SEEDS)  # once per (forget set, seed)


def test_second_campaign_reuses_the_retrains_and_flags_a_destructive_method(
    live_api: TestClient, setup, first_campaign, sessions
) -> None:
    tenant = setup["tenant"]
    forget_refs = [{"forget_set_id": f} for f in first_campaign["spec"]["forget_set_ids"]]
    body = {
        "name": "reuse",
        "model_id": setup["model"],
        "seeds": SEEDS,
        "forget_sets": forget_refs,
        "methods": [
            {"method": "ft", "params": {"epochs": 1, "batch_size": 64}},
            {"method": "ga", "label": "ga destructive", "params": {"epochs": 2, "lr": 0.5, "batch_size": 64}},
        ],
    }
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
    campaign = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit")).json()
    first_cells = {
        (c["forget_set_id"], c["seed"]): c["job_id"]
        for c in first_campaign_cells(live_api, setup, first_campaign)
    }
    with sessions() as session:
        after = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
    # only the unlearning cells are new: retrains and evaluations of the original are reused
    assert after - before == len(FORGET_SETS) * len(SEEDS) * 2
    campaign = wait_campaign(live_api, tenant, campaign["id"])
    table = live_api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read")).json()
    for row in table["rows"]:
        if row["row"] == "retrain":
            for job in row["jobs"]:
                assert first_cells[(str(row["forget_set_id"]), job["seed"])] == job["job_id"]
    destructive = [r for r in table["rows"] if r["row"] == "ga destructive"]
    assert destructive and all(r["flags"] for r in destructive), destructive
    for row in destructive:
        assert {"ra-collapse", "ta-collapse", "single-class"} <= set(row["flags"]), row["flags"]
    gentle = [r for r in table["rows"] if r["row"] == "ft"]
    assert all(not r["flags"] for r in gentle), gentle


def first_campaign_cells(api: TestClient, setup, campaign: dict) -> list[dict]:
    table = api.get(f"/v1/campaigns/{campaign['id']}/table", headers=setup["tenant"].headers("read")).json()
    return [
        {"forget_set_id": str(r["forget_set_id"]), "seed": j["seed"], "job_id": j["job_id"]}
        for r in table["rows"]
        if r["row"] == "retrain"
        for j in r["jobs"]
    ]


def test_sweep_picks_the_smallest_avg_gap_and_reuses_it(live_api: TestClient, setup) -> None:
    tenant = setup["tenant"]
    body = {
        "name": "sweep",
        "model_id": setup["model"],
        "seeds": [0],
        "sweep_forget_set": {"spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        "forget_sets": [{"spec": {"kind": "class", "class": 5}}],
        "methods": [{"method": "ga", "params": {"epochs": 2, "batch_size": 64}, "grid": {"lr": [1e-5, 0.3]}}],
    }
    response = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    assert response.json()["stage"] == "tuning"
    campaign = wait_campaign(live_api, tenant, response.json()["id"])
    chosen = campaign["chosen_params"]["ga"]
    tried = {t["params"]["lr"]: t["avg_gap"] for t in chosen["tried"]}
    assert set(tried) == {1e-5, 0.3}
    assert chosen["params"]["lr"] == min(tried, key=lambda lr: tried[lr])
    table = live_api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read")).json()
    ga_row = next(r for r in table["rows"] if r["row"] == "ga")
    assert ga_row["params"]["lr"] == chosen["params"]["lr"]


def test_cancel_one_cell_and_the_whole_campaign(live_api: TestClient, setup) -> None:
    tenant = setup["tenant"]
    body = {
        "name": "cancel",
        "model_id": setup["model"],
        "seeds": [7, 8],
        "forget_sets": [{"spec": {"kind": "class", "class": 6}}],
        "methods": [{"method": "ft", "params": {"epochs": 200, "batch_size": 16}}],
    }
    campaign = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit")).json()
    table = live_api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read")).json()
    ft_jobs = next(r for r in table["rows"] if r["row"] == "ft")["jobs"]
    target = ft_jobs[1]["job_id"]
    response = live_api.post(
        f"/v1/campaigns/{campaign['id']}/cells/{target}/cancel", headers=tenant.headers("submit")
    )
    assert response.status_code == 202 and response.json()["status"] == "running"
    wait_for(live_api, tenant, target, finished, timeout=60)
    assert live_api.get(f"/v1/jobs/{target}", headers=tenant.headers("read")).json()["status"] == "cancelled"
    foreign = live_api.post(
        f"/v1/campaigns/{campaign['id']}/cells/{uuid.uuid4()}/cancel", headers=tenant.headers("submit")
    )
    assert foreign.status_code == 404
    stopped = live_api.post(f"/v1/campaigns/{campaign['id']}/cancel", headers=tenant.headers("submit"))
    assert stopped.status_code == 202 and stopped.json()["status"] == "cancelled"
    other = ft_jobs[0]["job_id"]
    assert wait_for(live_api, tenant, other, finished, timeout=60)["status"] == "cancelled"


def test_prune_first_then_unlearn_keeps_pruned_weights_zero(live_api: TestClient, setup) -> None:
    tenant = setup["tenant"]
    pruned_job = run(
        live_api,
        tenant,
        {
            "kind": "prune",
            "model_id": setup["model"],
            "params": {"sparsity": 0.5, "finetune_epochs": 1},
            "seed": 0,
        },
    )
    pruned = live_api.get(
        f"/v1/models/{pruned_job['output_model_id']}", headers=tenant.headers("read")
    ).json()
    assert pruned["mask_sha256"] and pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    mask_bytes = live_api.get(f"/v1/models/{pruned['id']}/mask", headers=tenant.headers("read")).content
    masks = load_safetensors(mask_bytes)
    forget = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": setup["dataset"]["id"], "spec": {"kind": "class", "class": 1}},
        headers=tenant.headers("submit"),
    ).json()
    for body in (
        {"kind": "unlearn", "method": "ft", "params": {"epochs": 1, "batch_size": 64}},
        {"kind": "retrain", "params": {"recipe": {**FAST_RECIPE, "epochs": 2}}},
    ):
        job = run(
            live_api, tenant, {**body, "model_id": pruned["id"], "forget_set_id": forget["id"], "seed": 1}
        )
        output = live_api.get(f"/v1/models/{job['output_model_id']}", headers=tenant.headers("read")).json()
        assert output["mask_sha256"] == pruned["mask_sha256"]
        weights = load_safetensors(
            live_api.get(f"/v1/models/{output['id']}/weights", headers=tenant.headers("read")).content
        )
        for name, mask in masks.items():
            assert np.all(weights[name][mask == 0] == 0.0), name
    dense = live_api.get(f"/v1/models/{setup['model']}/mask", headers=tenant.headers("read"))
    assert dense.status_code == 404
