"""The whole job path with real parts: API → DB → broker → Celery prefork worker → engine → DB.

Runs on SQLite + the embedded broker by default and on Postgres + Redis when the Makefile's second
pass sets LETHE_TEST_DATABASE_URL / LETHE_TEST_BROKER_URL.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.models import Job, JobEvent, Metric
from tests.app.api.test_resources import create_digits

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FAST_RECIPE = {"epochs": 8, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "schedule": "cosine"}
LONG_RECIPE = {"epochs": 400, "batch_size": 32, "lr": 0.01, "momentum": 0.9}
JOB_TIMEOUT_S = 240.0


def wait_for(api: TestClient, tenant, job_id: str, predicate, timeout: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}", headers=tenant.headers("read")).json()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting on job {job_id}: {job}")


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def run(api: TestClient, tenant, body: dict) -> dict:
    response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    job = wait_for(api, tenant, response.json()["id"], finished)
    assert job["status"] == "succeeded", job
    return job


def train_original(live_api: TestClient, sessions, migrated) -> tuple[object, dict, dict]:
    """A fresh tenant, the digits dataset and an MLP trained on it: (tenant, dataset, train job)."""
    from tests.conftest import make_tenant

    tenant = make_tenant(sessions, migrated)
    dataset = create_digits(live_api, tenant)
    job = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp",
            "arch_config": {"hidden": [64]},
            "params": {"recipe": FAST_RECIPE},
            "seed": 3,
        },
    )
    return tenant, dataset, job


@pytest.fixture(scope="module")
def trained(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    tenant, dataset, job = train_original(live_api, sessions, migrated)
    return {"tenant": tenant, "dataset": dataset, "train": job}


def test_train_produces_a_model_with_recorded_provenance(trained) -> None:
    job = trained["train"]
    assert job["output_model_id"] and job["attempt"] == 1
    assert job["metrics"]["test_accuracy"] > 85.0
    env = job["environment"]
    assert env["device"] == "cpu" and env["torch"].startswith("2.") and env["code_version"]
    assert job["timings"]["method_s"] > 0 and job["seed"] == 3


def test_retrain_and_ft_give_a_comparison_with_avg_gap(live_api: TestClient, trained, sessions) -> None:
    tenant, dataset = trained["tenant"], trained["dataset"]
    original = trained["train"]["output_model_id"]
    for spec, name in (
        ({"kind": "random", "fraction": 0.1, "seed": 0}, "random"),
        ({"kind": "class", "class": 3}, "class"),
    ):
        forget = live_api.post(
            "/v1/forget-sets",
            json={"dataset_id": dataset["id"], "spec": spec},
            headers=tenant.headers("submit"),
        ).json()
        common = {"model_id": original, "forget_set_id": forget["id"], "seed": 5}
        retrain = run(live_api, tenant, {"kind": "retrain", **common})
        ft = run(
            live_api,
            tenant,
            {"kind": "unlearn", "method": "ft", "params": {"epochs": 2, "batch_size": 64}, **common},
        )
        run(live_api, tenant, {"kind": "evaluate", **common})
        comparison = live_api.get(
            f"/v1/forget-sets/{forget['id']}/comparison", headers=tenant.headers("read")
        ).json()
        rows = {r["job_id"]: r for r in comparison["rows"]}
        assert comparison["rows"][0]["kind"] == "retrain"
        assert rows[retrain["id"]]["avg_gap"] == pytest.approx(0.0)
        ft_row = rows[ft["id"]]
        assert ft_row["reference_job_id"] == retrain["id"] and ft_row["avg_gap"] is not None
        expected_gap = (
            sum(abs(ft_row["metrics"][k] - retrain["metrics"][k]) for k in ("UA", "MIA-Efficacy", "RA", "TA"))
            / 4
        )
        assert ft_row["avg_gap"] == pytest.approx(expected_gap)
        assert ft_row["rte_seconds"] > 0
        nonmembers = retrain["result"]["attacks"]["population"]["nonmembers"]
        if name == "class":
            assert retrain["metrics"]["UA"] == 100.0
            # Members and non-members from the forgotten class: the attack cannot just tell classes apart.
            assert nonmembers["rule"] == "forgotten_class_test" and "class 3" in nonmembers["description"]
            assert abs(retrain["metrics"]["mia_auc"] - 0.5) < 0.25
        else:
            assert nonmembers["rule"] == "test_split"
            test_error = 100.0 - retrain["metrics"]["TA"]
            assert abs(retrain["metrics"]["UA"] - test_error) < 8.0
        with sessions() as session:
            count = session.scalar(
                select(func.count()).select_from(Metric).where(Metric.job_id == uuid.UUID(ft["id"]))
            )
            assert count == len(ft["metrics"])


def test_same_seed_gives_identical_metrics(live_api: TestClient, trained) -> None:
    tenant, dataset = trained["tenant"], trained["dataset"]
    body = {
        "kind": "train",
        "dataset_id": dataset["id"],
        "architecture": "mlp",
        "arch_config": {"hidden": [64]},
        "params": {"recipe": FAST_RECIPE},
        "seed": 3,
    }
    again = run(live_api, tenant, body)
    assert again["metrics"] == trained["train"]["metrics"]
    # The model's identity is its weights: two jobs' bit-identical outputs share one sha256, although each
    # file's metadata names its own job (so the stored files differ).
    first_id, second_id = trained["train"]["output_model_id"], again["output_model_id"]
    first, second = (
        live_api.get(f"/v1/models/{model_id}", headers=tenant.headers("read")).json()
        for model_id in (first_id, second_id)
    )
    assert first["id"] != second["id"] and first["sha256"] == second["sha256"]
    files = [
        live_api.get(f"/v1/models/{model_id}/weights", headers=tenant.headers("read"))
        for model_id in (first_id, second_id)
    ]
    assert files[0].content != files[1].content
    assert files[0].headers["etag"] == files[1].headers["etag"] == f'"{first["sha256"]}"'
    assert files[0].headers["digest"] != files[1].headers["digest"]


def test_events_stream_replays_and_ends(live_api: TestClient, trained) -> None:
    tenant = trained["tenant"]
    job_id = trained["train"]["id"]
    with live_api.stream(
        "GET", f"/v1/jobs/{job_id}/events/stream", headers=tenant.headers("read")
    ) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "event: queued" in body and "event: started" in body and "event: succeeded" in body
    with live_api.stream(
        "GET",
        f"/v1/jobs/{job_id}/events/stream",
        headers={**tenant.headers("read"), "Last-Event-ID": "999999999"},
    ) as response:
        assert "event: queued" not in "".join(response.iter_text())


def test_cancel_running_job_stops_within_a_heartbeat(
    live_api: TestClient, trained, sessions, migrated
) -> None:
    tenant, dataset = trained["tenant"], trained["dataset"]
    body = {
        "kind": "train",
        "dataset_id": dataset["id"],
        "architecture": "mlp",
        "params": {"recipe": LONG_RECIPE},
        "seed": 1,
    }
    job = live_api.post("/v1/jobs", json=body, headers=tenant.headers("submit")).json()
    wait_for(
        live_api,
        tenant,
        job["id"],
        lambda j: j["status"] == "running" and j["progress"].get("phase") == "train",
    )
    assert live_api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit")).status_code == 202
    done = wait_for(live_api, tenant, job["id"], finished, timeout=30)
    assert done["status"] == "cancelled" and done["metrics"] == {} and done["output_model_id"] is None
    events = {
        e["type"]: e
        for e in live_api.get(f"/v1/jobs/{job['id']}/events", headers=tenant.headers("read")).json()
    }
    requested = datetime.fromisoformat(events["cancel_requested"]["ts"])
    stopped = datetime.fromisoformat(events["cancelled"]["ts"])
    # The worker sees the flag at its next heartbeat; allow one interval plus the final write.
    assert (stopped - requested).total_seconds() < migrated.heartbeat_seconds + 1.0, (requested, stopped)


def test_worker_sigkill_mid_job_resumes_and_finishes_once(
    live_api: TestClient, trained, worker_group, sessions
) -> None:
    tenant, dataset = trained["tenant"], trained["dataset"]
    recipe = {**LONG_RECIPE, "epochs": 30}
    body = {
        "kind": "train",
        "dataset_id": dataset["id"],
        "architecture": "mlp",
        "params": {"recipe": recipe},
        "seed": 2,
    }
    job = live_api.post("/v1/jobs", json=body, headers=tenant.headers("submit")).json()
    wait_for(
        live_api,
        tenant,
        job["id"],
        lambda j: j["status"] == "running" and (j["progress"].get("info") or {}).get("epoch", 0) >= 3,
    )
    gpu_worker = worker_group.processes[0]
    os.killpg(gpu_worker.pid, signal.SIGKILL)  # the worker's main process and its prefork child
    gpu_worker.wait()
    worker_group.processes[0] = worker_group.start_gpu_worker()
    done = wait_for(live_api, tenant, job["id"], finished)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    with sessions() as session:
        job_id = uuid.UUID(job["id"])
        job_row = session.get(Job, job_id)
        assert job_row is not None and job_row.checkpoint_epoch is not None and job_row.checkpoint_epoch >= 3
        attempts = set(session.scalars(select(Metric.attempt).where(Metric.job_id == job_id)))
        assert attempts == {2}
        types = list(
            session.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )
    assert types.count("succeeded") == 1 and "requeued" in types and types.count("started") == 2
    # Progress said epoch 3 was running, so at least 2 had completed and been checkpointed.
    assert done["result"].get("resumed_from_epoch", 0) >= 2
