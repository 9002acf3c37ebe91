"""Worst-case forget-set search as a job, and random-vs-worst-case campaigns, with real workers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.workers.test_campaigns import setup, wait_campaign  # noqa: F401  (module fixture)
from tests.workers.test_job_flow import run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# A quick search: the default T=10, K=5 is more than a retrain's worth of work on digits.
QUICK_SEARCH = {"fraction": 0.1, "outer_iterations": 3, "lower_epochs": 1, "batch_size": 128}


def test_search_job_produces_a_forget_set_with_provenance_and_scores(live_api: TestClient, setup) -> None:  # noqa: F811
    tenant = setup["tenant"]
    job = run(
        live_api,
        tenant,
        {"kind": "worst_case_search", "model_id": setup["model"], "params": QUICK_SEARCH, "seed": 4},
    )
    forget_set_id = job["result"]["forget_set_id"]
    assert job["output_model_id"] is None
    assert {
        "upper_objective_initial",
        "upper_objective_final",
        "overlap_with_initial",
        "objective_initial_set",
        "objective_final_set",
    } <= set(job["metrics"])
    # The API stores the preset-resolved params, and the result records what the search ran with.
    result = job["result"]
    assert job["params"]["preset"] == "lethe" and job["params"]["w_step"] == "normalized"
    assert result["params"] == job["params"]
    assert result["overlap_with_initial"] == job["metrics"]["overlap_with_initial"]
    assert result["objective_final_set"] == job["metrics"]["objective_final_set"]
    assert isinstance(result["warnings"], list)
    assert result["inherited"]["batch_size"] == {"value": 128, "source": "params"}
    forget_set = live_api.get(f"/v1/forget-sets/{forget_set_id}", headers=tenant.headers("read")).json()
    assert forget_set["kind"] == "worst_case" and forget_set["job_id"] == job["id"]
    assert forget_set["size"] == round(0.1 * setup["dataset"]["n_train"])
    model = live_api.get(f"/v1/models/{setup['model']}", headers=tenant.headers("read")).json()
    provenance = forget_set["spec"]
    assert provenance["model_sha256"] == model["sha256"]
    assert provenance["dataset_sha256"] == setup["dataset"]["sha256"]
    assert provenance["seed"] == 4 and provenance["search_params"]["outer_iterations"] == 3
    assert provenance["cost"] is not None
    scores = live_api.get(f"/v1/forget-sets/{forget_set_id}/scores", headers=tenant.headers("read")).json()
    assert len(scores["scores"]) == setup["dataset"]["n_train"]
    assert abs(sum(scores["scores"]) - forget_set["size"]) < 1e-3
    assert len(scores["objective_history"]) >= 3
    indices = live_api.get(f"/v1/forget-sets/{forget_set_id}/indices", headers=tenant.headers("read")).json()
    selected = set(indices["indices"])
    assert len(selected) == forget_set["size"]
    # the read-off is the top-m of the final weights (ties broken by the last loss)
    chosen = [s for i, s in enumerate(scores["scores"]) if i in selected]
    others = [s for i, s in enumerate(scores["scores"]) if i not in selected]
    assert min(chosen) >= max(others)
    events = live_api.get(f"/v1/jobs/{job['id']}/events", headers=tenant.headers("read")).json()
    search_epochs = [e for e in events if e["type"] == "progress" and e["data"].get("phase") == "search"]
    assert len(search_epochs) >= 3
    plain = live_api.get(f"/v1/forget-sets/{forget_set_id}/scores", headers=tenant.headers("read"))
    assert plain.status_code == 200


def test_random_vs_worst_case_campaign_side_by_side(live_api: TestClient, setup) -> None:  # noqa: F811
    tenant = setup["tenant"]
    body = {
        "name": "random vs worst-case",
        "model_id": setup["model"],
        "seeds": [0],
        "forget_sets": [
            {"spec": {"kind": "random", "fraction": 0.1, "seed": 0}, "name": "random 10%"},
            {"worst_case": QUICK_SEARCH, "name": "worst-case 10%"},
        ],
        "methods": [
            {"method": "ft", "params": {"epochs": 2, "batch_size": 64}},
            {"method": "rl", "params": {"epochs": 2, "batch_size": 64}},
        ],
    }
    response = live_api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    assert response.json()["stage"] == "search"
    campaign = wait_campaign(live_api, tenant, response.json()["id"])
    assert campaign["status"] == "finished" and not campaign["spec"]["search_failures"]
    assert len(campaign["spec"]["forget_set_ids"]) == 2
    table = live_api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read")).json()
    names = {row["forget_set_name"] for row in table["rows"]}
    assert "random 10%" in names and any(name.startswith("worst-case") for name in names)
    for method in ("ft", "rl", "retrain"):
        per_set = [r for r in table["rows"] if r["row"] == method]
        assert len(per_set) == 2 and all(r["metrics"]["UA"]["n"] == 1 for r in per_set)
    no_scores = live_api.get(
        f"/v1/forget-sets/{campaign['spec']['forget_set_ids'][0]}/scores", headers=tenant.headers("read")
    )
    assert no_scores.status_code == 404
