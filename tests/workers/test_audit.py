"""Audit jobs through the API with real workers: K = 16 on digits with an MLP, then the same audit again,
which must reuse every stored shadow (visibly faster, counted in the result)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import ShadowModel
from tests.workers.test_job_flow import run, train_original

pytestmark = [pytest.mark.broker, pytest.mark.slow]

QUICK_FT = {"epochs": 2, "lr": 0.01, "batch_size": 64}
SHADOWS = 16


@pytest.fixture(scope="module")
def setup(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    tenant, dataset, train = train_original(live_api, sessions, migrated)
    response = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    return {
        "tenant": tenant,
        "dataset": dataset["id"],
        "model": train["output_model_id"],
        "train_job": train["id"],
        "forget_set": response.json()["id"],
    }


def test_audit_runs_reuses_its_shadows_and_stores_per_example_scores(
    live_api: TestClient, setup, sessions
) -> None:
    tenant = setup["tenant"]
    body = {
        "kind": "audit",
        "model_id": setup["model"],
        "forget_set_id": setup["forget_set"],
        "params": {"method": "ft", "method_params": QUICK_FT, "shadows": SHADOWS, "n_bootstrap": 50},
        "seed": 5,
    }
    first = run(live_api, tenant, body)
    assert first["status"] == "succeeded", first.get("error")
    assert first["method"] == "ft" and first["kind"] == "audit"
    metrics = first["metrics"]
    # base, retrain, pool, unlearned pipelines + the released Kaggle runs + the Kaggle calibration retrains.
    assert metrics["models_trained"] == 6 * SHADOWS and metrics["models_reused"] == 0
    for name in ("ulira_auc", "ulira_accuracy", "kaggle_score", "lira_unlearned_auc", "rmia_unlearned_auc"):
        assert name in metrics, name
    assert 0.0 <= metrics["ulira_auc_ci_low"] <= metrics["ulira_auc"] <= metrics["ulira_auc_ci_high"] <= 1.0
    result = first["result"]
    assert result["store"]["base"] == {"reused": 0, "trained": SHADOWS}
    tpr = result["attacks"]["ulira"]["tpr_at_fpr"]
    # 16 pipelines x 144 forget examples = 2304 non-member trials: enough for 1 %, not for 0.1 %.
    assert tpr["0.01"]["value"] is not None and tpr["0.001"]["value"] is None
    assert "non-members" in tpr["0.001"]["reason"]
    assert result["arrays_key"] and "ulira_member_scores" in result["arrays"]
    arrays = live_api.get(f"/v1/jobs/{first['id']}/arrays", headers=tenant.headers("read")).json()
    assert len(arrays["ulira_member_scores"]) == len(arrays["ulira_nonmember_scores"]) == SHADOWS * 144
    assert len(arrays["kaggle_epsilons_0"]) == len(arrays["forget_indices_0"]) == 144
    # LiRA and RMIA per-example scores too, with their (model, example) layout: 16 unlearned targets.
    assert len(arrays["lira_online_fixed_unlearned_member_scores"]) == SHADOWS * 144
    assert len(arrays["rmia_unlearned_member_scores"]) == len(arrays["trials_unlearned_member_model_ids"])
    assert result["attacks"]["ulira"]["interval"]["method"].startswith("two-way cluster bootstrap")
    kaggle = result["attacks"]["kaggle"]
    assert kaggle["protocol"] == "released" and kaggle["n_models"] == SHADOWS and kaggle["points_cap"] == 3.0
    assert kaggle["warnings"] and "kaggle_ceiling_forgetting_quality" in metrics
    # The audit lists the same library versions as every other job.
    import sklearn

    assert first["environment"]["sklearn"] == sklearn.__version__
    assert {"torch", "numpy", "python", "device", "code_version"} <= set(first["environment"])
    with sessions() as session:
        stored = session.scalar(select(func.count()).select_from(ShadowModel))
    assert stored is not None and stored >= 6 * SHADOWS

    second = run(live_api, tenant, body)
    assert second["status"] == "succeeded", second.get("error")
    assert second["metrics"]["models_trained"] == 0
    assert second["metrics"]["models_reused"] == 6 * SHADOWS
    assert second["metrics"]["ulira_auc"] == metrics["ulira_auc"]
    # Reuse replaces every training and unlearning run by a fetch from the store.
    stages = ("base_s", "retrain_s", "pool_s", "unlearned_s", "unlearned_original_s", "calibration_s")
    training_first = sum(first["timings"][stage] for stage in stages)
    training_second = sum(second["timings"][stage] for stage in stages)
    assert training_second < training_first / 2, (training_first, training_second)
    assert second["timings"]["wall_s"] < first["timings"]["wall_s"]
    listed = live_api.get(
        "/v1/shadow-models", params={"role": "base", "limit": 100}, headers=tenant.headers("read")
    ).json()["data"]
    assert len(listed) == SHADOWS
    assert all(row["job_id"] == first["id"] and row["use_count"] >= 1 for row in listed)
    assert len({row["spec"]["seed"] for row in listed}) == SHADOWS
    events = live_api.get(f"/v1/jobs/{first['id']}/events", headers=tenant.headers("read")).json()
    stages = {e["data"].get("info", {}).get("stage") for e in events if e["type"] == "progress"}
    assert {"base", "retrain", "pool", "unlearned", "unlearned_original", "calibration"} <= stages


def test_audit_submission_errors_are_problems(live_api: TestClient, setup) -> None:
    tenant = setup["tenant"]
    base = {"kind": "audit", "model_id": setup["model"], "forget_set_id": setup["forget_set"]}
    cases = [
        ({**base, "params": {"method": "train"}}, "invalid-params"),
        ({**base, "params": {"method": "ft", "shadows": 1}}, "invalid-params"),
        ({**base, "method": "ft", "params": {"method": "ft"}}, "unexpected-method"),
        ({"kind": "audit", "model_id": setup["model"], "params": {"method": "ft"}}, "missing-field"),
        # gaussian_ft redraws regression targets: a classifier cannot be audited with it.
        ({**base, "params": {"method": "gaussian_ft"}}, "task-mismatch"),
    ]
    for body, code in cases:
        response = live_api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code


def test_jobs_without_per_example_arrays_answer_404(live_api: TestClient, setup) -> None:
    tenant = setup["tenant"]
    response = live_api.get(f"/v1/jobs/{setup['train_job']}/arrays", headers=tenant.headers("read"))
    assert response.status_code == 404
    assert response.json()["code"] == "arrays-not-found"


def test_a_class_forget_set_audit_takes_lira_and_rmia_non_members_from_the_forgotten_class(
    live_api: TestClient, setup
) -> None:
    """Issue 14 §3 through the job path: the worker passes the forget set's kind, so LiRA / RMIA compare the
    forgotten class's training samples with its test samples, not with every class."""
    from workers.engine.datasets import build_dataset

    tenant = setup["tenant"]
    forgotten = 3
    forget = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": setup["dataset"], "spec": {"kind": "class", "class": forgotten}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    audit = run(
        live_api,
        tenant,
        {
            "kind": "audit",
            "model_id": setup["model"],
            "forget_set_id": forget.json()["id"],
            "params": {"method": "identity", "shadows": 3, "attacks": ["lira", "rmia"], "n_bootstrap": 10},
            "seed": 7,
        },
    )
    class_test = int((build_dataset("digits").y_test == forgotten).sum())
    for attack in ("lira", "rmia"):
        chosen = audit["result"]["nonmembers"][attack]
        assert chosen["rule"] == "forgotten_class_test" and chosen["n"] == class_test, chosen
    arrays = live_api.get(f"/v1/jobs/{audit['id']}/arrays", headers=tenant.headers("read")).json()
    assert len(arrays["trials_original_nonmember_example_ids"]) == class_test
