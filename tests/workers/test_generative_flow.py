"""Generative unlearning through the API with real workers: train a (tiny) DDPM teacher on digits, forget a
class with SFD and its distil-only control, retrain the gold reference without the class, evaluate the
teacher, sample the generator; then the comparison (teacher / control / SFD / gold with sample grids), the
grid and sample routes, and deletion of a job's images.

The models are tiny and briefly trained: this test checks the service path. SFD's effect on real data is
shown by tests/workers/engine/diffusion/test_diffusion_sfd_digits.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.client import LetheClient
from tests.app.api.test_resources import create_digits
from tests.workers.engine.diffusion.test_diffusion_jobs import TINY
from tests.workers.test_job_flow import run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FORGET_CLASS = 3
EVALUATION = {
    "samples": {"samples_per_class": 4, "forget_samples": 16},
    "sampler": {"steps": 5},
    "classifier": {"epochs": 3},
    "grid_per_class": 3,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def generative_world(live_api: TestClient, tenant) -> dict:
    """A tiny teacher on digits, a class forget set, and the four comparison rows: the teacher's evaluation,
    the gold retrain, SFD and the distil-only control (each job run to success)."""
    dataset = create_digits(live_api, tenant)
    teacher = run(
        live_api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "unet_ddpm",
            "arch_config": TINY,
            "params": {"steps": 40, "batch_size": 32},
            "seed": 1,
        },
    )
    response = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": FORGET_CLASS}},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    class_set = response.json()
    base = {"model_id": teacher["output_model_id"], "forget_set_id": class_set["id"], "seed": 2}
    sfd_params = {"steps": 4, "batch_size": 8, "evaluation": EVALUATION}
    jobs = {
        "teacher": run(live_api, tenant, {"kind": "evaluate", **base, "params": EVALUATION}),
        "gold": run(live_api, tenant, {"kind": "retrain", **base, "params": {"evaluation": EVALUATION}}),
        "sfd": run(live_api, tenant, {"kind": "unlearn", "method": "sfd", **base, "params": sfd_params}),
        "control": run(
            live_api, tenant, {"kind": "unlearn", "method": "sfd_control", **base, "params": sfd_params}
        ),
    }
    return {"tenant": tenant, "dataset": dataset, "train": teacher, "class_set": class_set, **jobs}


@pytest.fixture(scope="module")
def flow(live_api: TestClient, worker_group, sessions, migrated) -> dict:
    from tests.conftest import make_tenant

    return generative_world(live_api, make_tenant(sessions, migrated))


def test_teacher_training_records_a_ddpm_recipe(live_api: TestClient, flow) -> None:
    tenant, train = flow["tenant"], flow["train"]
    assert train["method"] == "ddpm" and np.isfinite(train["metrics"]["final_loss"])
    model = live_api.get(f"/v1/models/{train['output_model_id']}", headers=tenant.headers("read")).json()
    assert model["architecture"] == "unet_ddpm"
    assert model["train_recipe"]["steps"] == 40


def test_sfd_outputs_a_one_step_generator_and_gold_excludes_the_class(live_api: TestClient, flow) -> None:
    tenant = flow["tenant"]
    for name in ("sfd", "control"):
        job = flow[name]
        model = live_api.get(f"/v1/models/{job['output_model_id']}", headers=tenant.headers("read")).json()
        assert model["architecture"] == "unet_one_step" and model["arch_config"]["t_init"] == 440
        assert job["result"]["params"]["forget_class"] == FORGET_CLASS
        assert job["metrics"]["nfe_per_sample"] == 1.0
        assert job["timings"]["seconds_per_sample"] > 0
    assert flow["control"]["result"]["params"]["generator_forget_coef"] == 0.0
    gold = flow["gold"]
    assert gold["result"]["params"]["recipe"]["exclude_classes"] == [FORGET_CLASS]
    gold_model = live_api.get(f"/v1/models/{gold['output_model_id']}", headers=tenant.headers("read")).json()
    assert gold_model["architecture"] == "unet_ddpm"
    # All four were scored by one metric classifier, trained once and then reused.
    keys = {flow[n]["result"]["metric_classifier_key"] for n in ("teacher", "gold", "sfd", "control")}
    assert len(keys) == 1
    # Each ran once (heartbeats during classifier training and sampling kept their leases).
    retried = {n: flow[n]["id"] for n in ("teacher", "gold", "sfd", "control") if flow[n]["attempt"] != 1}
    events = {
        n: live_api.get(f"/v1/jobs/{job_id}/events", headers=tenant.headers("read")).json()
        for n, job_id in retried.items()
    }
    assert not retried, events
    reused = {n: flow[n]["result"]["metric_classifier_reused"] for n in ("teacher", "gold", "sfd", "control")}
    assert sum(not r for r in reused.values()) == 1, reused


def test_comparison_shows_teacher_control_sfd_and_gold_with_grids(live_api: TestClient, flow) -> None:
    tenant = flow["tenant"]
    comparison = live_api.get(
        f"/v1/forget-sets/{flow['class_set']['id']}/comparison", headers=tenant.headers("read")
    ).json()
    assert comparison["task"] == "generative"
    assert comparison["columns"][:4] == ["ua", "override_rate", "forget_entropy", "retain_accuracy"]
    rows = {(row["kind"], row["method"]): row for row in comparison["rows"]}
    assert set(rows) == {
        ("retrain", "ddpm_retrain"),
        ("evaluate", None),
        ("unlearn", "sfd"),
        ("unlearn", "sfd_control"),
    }
    assert comparison["rows"][0]["kind"] == "retrain"  # the gold reference first
    gold_id = flow["gold"]["id"]
    for row in comparison["rows"]:
        assert row["grid_url"] == f"/v1/jobs/{row['job_id']}/grid.png"
        assert 0.0 <= row["metrics"]["ua"] <= 1.0 and "fd_retain" in row["metrics"]
        assert row["metrics"]["seconds_per_sample"] > 0
        if row["kind"] == "unlearn":
            assert row["reference_job_id"] == gold_id and row["avg_gap"] is not None
        png = live_api.get(row["grid_url"], headers=tenant.headers("read"))
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(PNG_SIGNATURE)
    plot = live_api.get(
        f"/v1/forget-sets/{flow['class_set']['id']}/plots/tradeoff.svg", headers=tenant.headers("read")
    )
    assert plot.status_code == 200 and b"retained-class conditional accuracy" in plot.content


def test_sample_job_stores_images_and_a_grid(live_api: TestClient, flow, artifacts_dir) -> None:
    tenant = flow["tenant"]
    generator = flow["sfd"]["output_model_id"]
    job = run(
        live_api,
        tenant,
        {"kind": "sample", "model_id": generator, "params": {"classes": [0, 7], "n_per_class": 5}, "seed": 4},
    )
    assert job["metrics"]["nfe_per_sample"] == 1.0 and job["metrics"]["n_samples"] == 10.0
    npz = live_api.get(f"/v1/jobs/{job['id']}/samples.npz", headers=tenant.headers("read"))
    assert npz.status_code == 200
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as arrays:
        assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (10, 1, 8, 8)
        assert arrays["labels"].tolist() == [0] * 5 + [7] * 5
    grid = live_api.get(job["result"]["grid_url"], headers=tenant.headers("read"))
    assert grid.status_code == 200 and grid.content.startswith(PNG_SIGNATURE)
    # The typed client reads the same.
    client = LetheClient(str(live_api.base_url), tenant.read, http=live_api)
    assert client.job_grid(job["id"]) == grid.content
    samples = client.job_samples(job["id"])
    assert samples["labels"].tolist() == [0] * 5 + [7] * 5 and samples["images"].dtype == np.uint8
    # The model's newest grid is this job's.
    newest = live_api.get(f"/v1/models/{generator}/samples.png", headers=tenant.headers("read"))
    assert newest.status_code == 200 and newest.content == grid.content
    # Deleting the job removes its images from the artifact store.
    files = [artifacts_dir / job["result"]["samples_key"], artifacts_dir / job["result"]["grids"]["samples"]]
    assert all(path.exists() for path in files)
    deleted = live_api.delete(f"/v1/jobs/{job['id']}", headers=tenant.headers("submit"))
    assert deleted.status_code in (200, 204), deleted.text
    assert not any(path.exists() for path in files)
    older = live_api.get(f"/v1/models/{generator}/samples.png", headers=tenant.headers("read"))
    assert older.status_code == 200 and older.content.startswith(PNG_SIGNATURE)  # the SFD job's grid


def test_recovery_audit_of_the_sfd_generator_runs_through_the_worker(live_api: TestClient, flow) -> None:
    """A recovery audit of SFD's generator (422 task-mismatch before): the teacher and the gold retrain are
    resolved as its controls, the worker runs it, and the metrics, result and plot are stored."""
    tenant = flow["tenant"]
    params = {
        "relearn_steps": [2],
        "relearn_samples": 8,
        "relearn_batch_size": 4,
        "sparsities": [0.5],
        "relearn_sources": ["forget_subset", "unrelated"],
        "evaluation": EVALUATION,
    }
    audit = run(
        live_api,
        tenant,
        {
            "kind": "recovery",
            "model_id": flow["sfd"]["output_model_id"],
            "forget_set_id": flow["class_set"]["id"],
            "params": params,
            "seed": 2,
        },
    )
    assert audit["params"]["original_model_id"] == flow["train"]["output_model_id"]
    assert audit["params"]["retrain_model_id"] == flow["gold"]["output_model_id"]
    assert audit["seed"] == 2 and audit["code_version"] and audit["environment"]["device"] == "cpu"
    assert audit["timings"]["relearn_s"] > 0 and audit["timings"]["transforms_s"] > 0
    metrics, recovery = audit["metrics"], audit["result"]["recovery"]
    # Before any transform: the SFD and gold jobs' own figures (same evaluation, classifier and seed), in %.
    assert metrics["forget_class_rate"] == pytest.approx(100 * (1 - flow["sfd"]["metrics"]["ua"]))
    assert metrics["control.forget_class_rate"] == pytest.approx(100 * (1 - flow["gold"]["metrics"]["ua"]))
    assert audit["result"]["metric_classifier_reused"] is True
    assert recovery["metric"] == "forget_class_rate"
    assert {row["name"] for row in recovery["transforms"]} == {"int8", "int4", "nf4", "prune_50"}
    assert "transform.int4.gap_to_control" in metrics
    assert "relearn.forget_subset.step_2.gap_to_control" in metrics
    plot = live_api.get(f"/v1/jobs/{audit['id']}/plots/recovery.png", headers=tenant.headers("read"))
    assert plot.status_code == 200 and plot.content.startswith(PNG_SIGNATURE)
