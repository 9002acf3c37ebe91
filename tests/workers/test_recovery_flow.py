"""A recovery audit through the API with a real worker: the original and the retrain control are resolved at
submission and recorded in the params, the job stores its figures as metrics rows with its provenance, the
recovery plot is served, and bad submissions are refused with problem+json before anything is written."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Job, Metric
from tests.workers.test_job_flow import finished, run, train_original, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SMALL_AUDIT = {"relearn_steps": [1, 5, 20], "sparsities": [0.5], "relearn_samples": 16}


def _forget_set(api: TestClient, tenant, dataset: dict, forget_class: int) -> dict:
    response = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": forget_class}},
        headers=tenant.headers("submit"),
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def _refused(api: TestClient, tenant, body: dict, code: str, sessions) -> dict:
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(Job))
    response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code, problem
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before  # nothing half-written
    return problem


def test_recovery_audit_through_the_api(live_api: TestClient, worker_group, sessions, migrated) -> None:
    tenant, dataset, train = train_original(live_api, sessions, migrated)
    original = train["output_model_id"]
    forget = _forget_set(live_api, tenant, dataset, 3)
    common = {"forget_set_id": forget["id"], "seed": 3}
    retrain = run(live_api, tenant, {"kind": "retrain", "model_id": original, **common})
    ga = run(
        live_api,
        tenant,
        {
            "kind": "unlearn",
            "method": "ga",
            "params": {"lr": 1e-2, "epochs": 5},
            "model_id": original,
            **common,
        },
    )
    audit = run(
        live_api,
        tenant,
        {"kind": "recovery", "model_id": ga["output_model_id"], "params": SMALL_AUDIT, **common},
    )
    # The controls were resolved from the unlearn job and the forget set's retrain, and recorded.
    assert audit["params"]["original_model_id"] == original
    assert audit["params"]["retrain_model_id"] == retrain["output_model_id"]
    assert audit["params"]["relearn_steps"] == [0, 1, 5, 20]
    assert audit["seed"] == 3 and audit["code_version"]
    assert audit["environment"]["device"] == "cpu" and audit["timings"]["relearn_s"] > 0
    recovery = audit["result"]["recovery"]
    metrics = audit["metrics"]
    assert metrics["forget_accuracy"] == recovery["before"]["unlearned"]["forget_accuracy"]
    assert metrics["control.forget_accuracy"] == recovery["before"]["retrain"]["forget_accuracy"]
    assert metrics["forget_accuracy"] == pytest.approx(ga["metrics"]["forget_accuracy"])
    assert metrics["control.forget_accuracy"] == pytest.approx(retrain["metrics"]["forget_accuracy"])
    assert 0.0 <= metrics["recovery_robustness"] <= 1.0
    assert {"int8", "int4", "nf4", "prune_50"} == {row["name"] for row in recovery["transforms"]}
    assert "relearn.forget_subset.step_20.gap_to_control" in metrics
    with sessions() as session:
        rows = session.scalar(
            select(func.count()).select_from(Metric).where(Metric.job_id == uuid.UUID(audit["id"]))
        )
    assert rows == len(metrics)
    listed = live_api.get(f"/v1/jobs/{audit['id']}/metrics", headers=tenant.headers("read"))
    assert listed.status_code == 200
    plot = live_api.get(f"/v1/jobs/{audit['id']}/plots/recovery.png", headers=tenant.headers("read"))
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")
    missing = live_api.get(f"/v1/jobs/{ga['id']}/plots/recovery.png", headers=tenant.headers("read"))
    assert missing.status_code == 404 and missing.json()["code"] == "plot-data-not-found"

    # No retrain of the original on this forget set yet: refused, naming the way out.
    other = _forget_set(live_api, tenant, dataset, 5)
    ga_other = run(
        live_api,
        tenant,
        {"kind": "unlearn", "method": "ga", "model_id": original, "forget_set_id": other["id"], "seed": 3},
    )
    body = {"kind": "recovery", "model_id": ga_other["output_model_id"], "forget_set_id": other["id"]}
    problem = _refused(live_api, tenant, body, "missing-retrain", sessions)
    assert "retrain_model_id" in problem["detail"]
    # An explicit retrain id works around it (the class-3 retrain as a stand-in control is accepted).
    explicit = {**body, "params": {**SMALL_AUDIT, "retrain_model_id": retrain["output_model_id"]}}
    accepted = live_api.post("/v1/jobs", json=explicit, headers=tenant.headers("submit"))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["params"]["original_model_id"] == original
    # The original itself has no original; bad params and a foreign control id are refused too.
    _refused(
        live_api,
        tenant,
        {"kind": "recovery", "model_id": original, "forget_set_id": forget["id"]},
        "missing-original",
        sessions,
    )
    _refused(live_api, tenant, {**body, "params": {"sparsities": [1.5]}}, "invalid-params", sessions)
    _refused(
        live_api,
        tenant,
        {**body, "params": {"retrain_model_id": str(uuid.uuid4())}},
        "control-not-found",
        sessions,
    )
    run_id = accepted.json()["id"]
    assert wait_for(live_api, tenant, run_id, finished)["status"] == "succeeded"
