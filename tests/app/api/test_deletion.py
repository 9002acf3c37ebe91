"""DELETE for datasets, models, forget sets and jobs: rows, files, audit, refusals, cascade, orphan sweep."""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import AuditEvent, Job, JobEvent, JobKind, JobStatus, Metric, Model, ShadowModel
from app.services.compliance import audit as audit_service
from app.services.data import deletion
from app.services.data.artifacts import FileReport, sweep_orphans
from app.services.jobs import lifecycle as job_service
from app.services.jobs.lifecycle import JobOutcome
from app.storage import LocalArtifactStore
from app.storage.local import content_key, sha256_hex
from tests.app.api.test_resources import assert_problem, create_digits, model_weights

file_sha256 = sha256_hex  # the artifact store keys model files by their bytes

MLP_CONFIG = {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 10}
RECIPE = {"epochs": 1, "batch_size": 64, "lr": 0.05}


@pytest.fixture(scope="module")
def weights() -> bytes:
    return model_weights("mlp", MLP_CONFIG)


@pytest.fixture
def store(artifacts_dir: Path) -> LocalArtifactStore:
    return LocalArtifactStore(artifacts_dir)


def upload_model(api: TestClient, tenant, weights: bytes, dataset_id: str | None = None) -> dict:
    data = {"architecture": "mlp", "config": json.dumps(MLP_CONFIG)}
    if dataset_id:
        data["dataset_id"] = dataset_id
    response = api.post(
        "/v1/models",
        data=data,
        files={"weights": ("m.safetensors", weights)},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    return response.json()


def create_forget_set(api: TestClient, tenant, dataset_id: str, cls: int = 3) -> dict:
    response = api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset_id, "spec": {"kind": "class", "class": cls}},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    return response.json()


def submit(api: TestClient, tenant, body: dict) -> dict:
    response = api.post("/v1/jobs", json=body, headers=tenant.headers("submit"))
    assert response.status_code == 202, response.text
    return response.json()


def train_body(dataset_id: str) -> dict:
    return {
        "kind": "train",
        "dataset_id": dataset_id,
        "architecture": "mlp",
        "arch_config": {"hidden": [16]},
        "params": {"recipe": RECIPE},
    }


def delete(api: TestClient, tenant, path: str, scope: str = "submit", cascade: bool = False):
    return api.delete(path, params={"cascade": "true"} if cascade else None, headers=tenant.headers(scope))


def row(sessions: sessionmaker[Session], entity, row_id) -> object | None:
    with sessions() as session:
        found = session.get(entity, uuid.UUID(str(row_id)))
        if found is not None:
            session.expunge(found)
        return found


def files_of(artifacts_dir: Path, tenant) -> dict[str, bytes]:
    root = artifacts_dir / str(tenant.id)
    return {p.relative_to(artifacts_dir).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def audit_actions(sessions: sessionmaker[Session], tenant) -> list[AuditEvent]:
    with sessions() as session:
        rows = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.id)
            )
        )
        for event in rows:
            session.expunge(event)
        return rows


def run_job_to_success(
    sessions: sessionmaker[Session],
    store: LocalArtifactStore,
    job_id: str,
    *,
    arrays: bool = False,
) -> uuid.UUID:
    """Stand in for a worker: claim, write an epoch checkpoint, store an output model, finish once."""
    claim = job_service.claim(sessions, uuid.UUID(job_id), "test-worker", 60.0)
    assert claim is not None
    with sessions() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        session.expunge(job)
    checkpoint = f"{job.tenant_id}/checkpoints/{job.id}.safetensors"
    store.put(checkpoint, b"checkpoint of " + job.id.bytes)
    job_service.save_checkpoint_pointer(sessions, claim, checkpoint, 1)
    blob = b"weights of " + job.id.bytes
    digest = sha256_hex(blob)
    key = content_key("models", str(job.tenant_id), digest, ".safetensors")
    store.put(key, blob)
    output = Model(
        tenant_id=job.tenant_id,
        name="output",
        architecture="mlp",
        arch_config=MLP_CONFIG,
        dataset_id=job.dataset_id,
        source="job",
        job_id=job.id,
        train_recipe=(job.params or {}).get("recipe"),
        seed=job.seed,
        sha256=digest,
        storage_key=key,
        size_bytes=len(blob),
        num_params=1,
    )
    result: dict = {}
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, scores=np.arange(5, dtype=np.float64))
        arrays_key = content_key("audits", str(job.tenant_id), sha256_hex(buffer.getvalue()), ".npz")
        store.put(arrays_key, buffer.getvalue())
        result["arrays_key"] = arrays_key
    outcome = JobOutcome(
        metrics={"UA": 1.0, "RA": 99.0}, result=result, environment={}, timings={}, output_model=output
    )
    assert job_service.finish_succeeded(sessions, claim, job, outcome)
    return output.id


def test_forget_set_delete_is_scoped_audited_and_final(
    api: TestClient, tenant, other_tenant, sessions
) -> None:
    dataset = create_digits(api, tenant)
    forget_set = create_forget_set(api, tenant, dataset["id"])
    path = f"/v1/forget-sets/{forget_set['id']}"
    assert_problem(delete(api, tenant, path, scope="read"), 403, "insufficient-scope")
    assert_problem(delete(api, other_tenant, path, scope="admin"), 404, "forget-set-not-found")
    assert_problem(delete(api, other_tenant, path, scope="admin", cascade=True), 404, "forget-set-not-found")

    response = delete(api, tenant, path)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["deleted"]["forget_sets"] == [forget_set["id"]] and report["cascade"] is False
    assert report["deleted"]["datasets"] == [] and report["deleted"]["jobs"] == []
    assert_problem(api.get(path, headers=tenant.headers("read")), 404, "forget-set-not-found")
    assert_problem(delete(api, tenant, path), 404, "forget-set-not-found")
    assert api.get(f"/v1/datasets/{dataset['id']}", headers=tenant.headers("read")).status_code == 200

    events = audit_actions(sessions, tenant)
    last = events[-1]
    assert last.action == "forget_set.delete" and last.resource_id == forget_set["id"]
    assert last.id == report["audit_event_id"] and last.actor.startswith("key:")
    assert last.details["sha256"] == forget_set["sha256"] and "indices" not in json.dumps(last.details)
    with sessions() as session:
        assert audit_service.verify_chain(session, tenant.id)


def test_model_bytes_leave_the_store_only_with_the_last_row(
    api: TestClient, tenant, other_tenant, sessions, artifacts_dir: Path, weights: bytes
) -> None:
    first = upload_model(api, tenant, weights)
    second = upload_model(api, tenant, weights)  # same bytes: one content-addressed file, two rows
    foreign = upload_model(api, other_tenant, weights)
    assert first["sha256"] == second["sha256"] == foreign["sha256"]
    path = artifacts_dir / content_key("models", str(tenant.id), file_sha256(weights), ".safetensors")
    assert path.read_bytes() == weights

    report = delete(api, tenant, f"/v1/models/{first['id']}").json()
    assert report["deleted"]["models"] == [first["id"]]
    assert report["artifacts_deleted"] == 0 and report["artifacts_shared"] == 1
    assert path.exists()
    download = api.get(f"/v1/models/{second['id']}/weights", headers=tenant.headers("read"))
    assert download.status_code == 200 and download.content == weights

    report = delete(api, tenant, f"/v1/models/{second['id']}").json()
    assert report["artifacts_deleted"] == 1 and report["bytes_freed"] == len(weights)
    assert not path.exists()
    assert all(weights not in content for content in files_of(artifacts_dir, tenant).values())
    # Tenants never share files: the other tenant's copy is untouched.
    download = api.get(f"/v1/models/{foreign['id']}/weights", headers=other_tenant.headers("read"))
    assert download.status_code == 200 and download.content == weights


def test_dataset_refused_while_in_use_and_with_dependents_then_cascade(
    api: TestClient, tenant, sessions, artifacts_dir: Path, store: LocalArtifactStore, weights: bytes
) -> None:
    dataset = create_digits(api, tenant)
    forget_set = create_forget_set(api, tenant, dataset["id"])
    model = upload_model(api, tenant, weights, dataset_id=dataset["id"])
    job = submit(
        api,
        tenant,
        {"kind": "unlearn", "method": "ft", "model_id": model["id"], "forget_set_id": forget_set["id"]},
    )
    # An audit shadow model trained on this dataset: owned by the dataset, not a dependent.
    shadow_blob = b"shadow weights " + uuid.uuid4().bytes
    shadow_key = content_key("shadows", str(tenant.id), sha256_hex(shadow_blob), ".safetensors")
    store.put(shadow_key, shadow_blob)
    with sessions() as session:
        shadow = ShadowModel(
            tenant_id=tenant.id,
            key=uuid.uuid4().hex,
            role="base",
            architecture="mlp",
            dataset_sha256=dataset["sha256"],
            spec={},
            sha256=sha256_hex(shadow_blob),
            storage_key=shadow_key,
            size_bytes=len(shadow_blob),
            use_count=0,
        )
        session.add(shadow)
        session.commit()
        shadow_id = shadow.id
    dataset_path = artifacts_dir / content_key("datasets", str(tenant.id), dataset["sha256"], ".npz")
    model_path = artifacts_dir / content_key("models", str(tenant.id), file_sha256(weights), ".safetensors")
    assert dataset_path.exists() and model_path.exists()
    dataset_url = f"/v1/datasets/{dataset['id']}"

    # Datasets need the admin scope; so does any cascade.
    assert_problem(delete(api, tenant, dataset_url, scope="submit"), 403, "insufficient-scope")
    assert_problem(delete(api, tenant, f"/v1/models/{model['id']}", cascade=True), 403, "insufficient-scope")

    # A queued job uses it: refused, with or without cascade, naming the job.
    for cascade in (False, True):
        problem = assert_problem(
            delete(api, tenant, dataset_url, scope="admin", cascade=cascade), 409, "resource-in-use"
        )
        assert {"resource_type": "job", "id": job["id"], "status": "queued"} in problem["errors"]
        assert "cancel" in problem["detail"]
    assert_problem(delete(api, tenant, f"/v1/models/{model['id']}"), 409, "resource-in-use")
    assert_problem(delete(api, tenant, f"/v1/forget-sets/{forget_set['id']}"), 409, "resource-in-use")
    problem = assert_problem(delete(api, tenant, f"/v1/jobs/{job['id']}"), 409, "resource-in-use")
    assert f"/v1/jobs/{job['id']}/cancel" in problem["detail"]

    assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers("submit")).status_code == 202
    problem = assert_problem(delete(api, tenant, dataset_url, scope="admin"), 409, "resource-has-dependents")
    listed = {(e["resource_type"], e["id"]) for e in problem["errors"]}
    assert listed == {("model", model["id"]), ("forget_set", forget_set["id"]), ("job", job["id"])}
    assert "cascade=true" in problem["detail"]
    assert all(e["reason"] for e in problem["errors"])
    assert dataset_path.exists() and row(sessions, ShadowModel, shadow_id) is not None  # nothing changed

    response = delete(api, tenant, dataset_url, scope="admin", cascade=True)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["cascade"] is True
    assert report["deleted"]["datasets"] == [dataset["id"]]
    assert report["deleted"]["models"] == [model["id"]]
    assert report["deleted"]["forget_sets"] == [forget_set["id"]]
    assert report["deleted"]["jobs"] == [job["id"]]
    assert report["deleted"]["shadow_models"] == [str(shadow_id)]
    assert report["artifacts_deleted"] == 3 and report["artifacts_deferred"] == 0
    for url in (dataset_url, f"/v1/models/{model['id']}", f"/v1/forget-sets/{forget_set['id']}"):
        assert api.get(url, headers=tenant.headers("read")).status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")).status_code == 404
    assert not dataset_path.exists() and not model_path.exists()
    assert not (artifacts_dir / shadow_key).exists()
    assert files_of(artifacts_dir, tenant) == {}  # the bytes are gone from the artifact store
    with sessions() as session:
        assert session.scalar(select(func.count()).where(JobEvent.job_id == uuid.UUID(job["id"]))) == 0
        assert session.get(ShadowModel, shadow_id) is None
        assert audit_service.verify_chain(session, tenant.id)
    last = audit_actions(sessions, tenant)[-1]
    assert last.action == "dataset.delete" and last.details["cascade"] is True
    assert last.details["counts"] == {
        "datasets": 1,
        "models": 1,
        "forget_sets": 1,
        "jobs": 1,
        "campaigns": 0,
        "shadow_models": 1,
    }
    assert last.details["deleted"]["jobs"] == [job["id"]]


def test_job_deletion_takes_events_metrics_checkpoint_and_arrays(
    api: TestClient, tenant, sessions, artifacts_dir: Path, store: LocalArtifactStore
) -> None:
    dataset = create_digits(api, tenant)
    job = submit(api, tenant, train_body(dataset["id"]))
    output_id = run_job_to_success(sessions, store, job["id"], arrays=True)
    finished = row(sessions, Job, job["id"])
    assert isinstance(finished, Job) and finished.checkpoint_key and finished.result
    checkpoint = artifacts_dir / finished.checkpoint_key
    arrays = artifacts_dir / finished.result["arrays_key"]
    output = row(sessions, Model, output_id)
    assert isinstance(output, Model)
    model_file = artifacts_dir / output.storage_key
    assert checkpoint.exists() and arrays.exists() and model_file.exists()

    # The job's output model depends on it.
    problem = assert_problem(delete(api, tenant, f"/v1/jobs/{job['id']}"), 409, "resource-has-dependents")
    assert problem["errors"] == [
        {"resource_type": "model", "id": str(output_id), "reason": f"output of job {job['id']}"}
    ]

    # Deleting the model also removes the producing job's epoch checkpoint (the same weights); the job stays.
    report = delete(api, tenant, f"/v1/models/{output_id}").json()
    assert report["artifacts_deleted"] == 2
    assert not model_file.exists() and not checkpoint.exists()
    body = api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")).json()
    assert body["output_model_id"] is None and body["metrics"] == {"RA": 99.0, "UA": 1.0}

    report = delete(api, tenant, f"/v1/jobs/{job['id']}").json()
    assert report["deleted"]["jobs"] == [job["id"]] and report["artifacts_deleted"] == 1
    assert not arrays.exists()
    with sessions() as session:
        job_uuid = uuid.UUID(job["id"])
        assert session.scalar(select(func.count()).where(JobEvent.job_id == job_uuid)) == 0
        assert session.scalar(select(func.count()).where(Metric.job_id == job_uuid)) == 0
    assert_problem(api.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("read")), 404, "job-not-found")
    assert api.get(f"/v1/datasets/{dataset['id']}", headers=tenant.headers("read")).status_code == 200


def test_cascade_from_a_model_follows_outputs_and_campaigns(
    api: TestClient, tenant, sessions, artifacts_dir: Path, store: LocalArtifactStore, weights: bytes
) -> None:
    dataset = create_digits(api, tenant)
    forget_set = create_forget_set(api, tenant, dataset["id"])
    original = upload_model(api, tenant, weights, dataset_id=dataset["id"])
    unlearn = submit(
        api,
        tenant,
        {"kind": "unlearn", "method": "ft", "model_id": original["id"], "forget_set_id": forget_set["id"]},
    )
    unlearned_id = run_job_to_success(sessions, store, unlearn["id"])
    evaluate = submit(
        api,
        tenant,
        {"kind": "evaluate", "model_id": str(unlearned_id), "forget_set_id": forget_set["id"]},
    )
    api.post(f"/v1/jobs/{evaluate['id']}/cancel", headers=tenant.headers("submit"))
    campaign = api.post(
        "/v1/campaigns",
        json={
            "name": "deletion",
            "model_id": original["id"],
            "methods": [{"method": "ft", "params": {"epochs": 1}}],
            "forget_sets": [{"forget_set_id": forget_set["id"]}],
            "seeds": [0],
            "retrain_params": {"recipe": RECIPE},
        },
        headers=tenant.headers("submit"),
    )
    assert campaign.status_code == 202, campaign.text
    campaign_id = campaign.json()["id"]

    problem = assert_problem(
        delete(api, tenant, f"/v1/forget-sets/{forget_set['id']}"), 409, "resource-in-use"
    )
    assert {"resource_type": "campaign", "id": campaign_id, "status": "running"} in problem["errors"]
    api.post(f"/v1/campaigns/{campaign_id}/cancel", headers=tenant.headers("submit"))

    problem = assert_problem(
        delete(api, tenant, f"/v1/models/{original['id']}"), 409, "resource-has-dependents"
    )
    kinds = {e["resource_type"] for e in problem["errors"]}
    assert kinds == {"job", "model", "campaign"}
    assert {
        "resource_type": "model",
        "id": str(unlearned_id),
        "reason": f"output of job {unlearn['id']}",
    } in (problem["errors"])

    report = delete(api, tenant, f"/v1/models/{original['id']}", scope="admin", cascade=True).json()
    assert set(report["deleted"]["models"]) == {original["id"], str(unlearned_id)}
    assert report["deleted"]["campaigns"] == [campaign_id]
    assert {unlearn["id"], evaluate["id"]} <= set(report["deleted"]["jobs"])
    assert report["deleted"]["forget_sets"] == [] and report["deleted"]["datasets"] == []
    assert api.get(f"/v1/campaigns/{campaign_id}", headers=tenant.headers("read")).status_code == 404
    remaining = api.get("/v1/jobs", headers=tenant.headers("read")).json()["data"]
    assert remaining == []  # the campaign's cells were all on the deleted model
    assert {Path(k).parent.parent.name for k in files_of(artifacts_dir, tenant)} == {"datasets"}
    # The forget set has nothing left depending on it now.
    assert delete(api, tenant, f"/v1/forget-sets/{forget_set['id']}").status_code == 200


def test_running_job_blocks_deletion_of_itself_and_its_inputs(api: TestClient, tenant, sessions) -> None:
    dataset = create_digits(api, tenant)
    job = submit(api, tenant, train_body(dataset["id"]))
    assert job_service.claim(sessions, uuid.UUID(job["id"]), "test-worker", 60.0) is not None
    problem = assert_problem(
        delete(api, tenant, f"/v1/jobs/{job['id']}", "admin", True), 409, "resource-in-use"
    )
    assert problem["errors"] == [{"resource_type": "job", "id": job["id"], "status": "running"}]
    assert_problem(
        delete(api, tenant, f"/v1/datasets/{dataset['id']}", "admin", True), 409, "resource-in-use"
    )


def test_crash_between_commit_and_file_deletion_is_swept(
    api: TestClient,
    tenant,
    sessions,
    artifacts_dir: Path,
    store: LocalArtifactStore,
    weights: bytes,
    monkeypatch,
) -> None:
    model = upload_model(api, tenant, weights)
    key = content_key("models", str(tenant.id), file_sha256(weights), ".safetensors")
    kept_weights = model_weights("mlp", MLP_CONFIG)  # other random weights
    upload_model(api, tenant, kept_weights)
    kept_key = content_key("models", str(tenant.id), file_sha256(kept_weights), ".safetensors")
    # The process dies after the commit, before any file is deleted.
    monkeypatch.setattr(deletion, "delete_unreferenced", lambda *args, **kwargs: FileReport())
    assert delete(api, tenant, f"/v1/models/{model['id']}").status_code == 200
    monkeypatch.undo()
    assert row(sessions, Model, model["id"]) is None and (artifacts_dir / key).exists()

    # A leftover temporary file of an interrupted write, and a fresh unreferenced file (a write whose row
    # is not committed yet) that the grace period protects.
    temp = artifacts_dir / str(tenant.id) / "models" / ".tmp-interrupted"
    temp.write_bytes(b"half")
    fresh_key = content_key("models", str(tenant.id), "f" * 64, ".safetensors")
    store.put(fresh_key, b"about to be committed")
    hour_ago = time.time() - 2 * 3600
    for path in (artifacts_dir / key, artifacts_dir / kept_key, temp):
        os.utime(path, (hour_ago, hour_ago))

    report = sweep_orphans(sessions, store, grace_seconds=3600, tenant_ids=[tenant.id])
    assert report.deleted == [key] and report.bytes_freed == len(weights)
    assert report.temp_deleted == [temp.relative_to(artifacts_dir).as_posix()]
    assert not (artifacts_dir / key).exists() and not temp.exists()
    assert (artifacts_dir / kept_key).exists() and (artifacts_dir / fresh_key).exists()  # referenced / young
    last = audit_actions(sessions, tenant)[-1]
    assert last.action == "artifacts.sweep" and last.actor == "system:maintenance"
    assert last.details["files"] == 1 and last.details["kinds"] == {"models": 1}
    assert sweep_orphans(sessions, store, grace_seconds=3600, tenant_ids=[tenant.id]).deleted == []


def test_the_sweep_only_touches_known_artifact_paths(sessions, tenant, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)  # its own root: nothing here is referenced by any row
    orphan = tmp_path / content_key("models", str(tenant.id), "a" * 64, ".safetensors")
    foreign = tmp_path / "not-a-tenant" / "models" / "x.safetensors"
    unknown_kind = tmp_path / str(tenant.id) / "reports" / "r.json"
    for path in (orphan, foreign, unknown_kind):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"bytes")
        os.utime(path, (0, 0))
    report = sweep_orphans(sessions, store, grace_seconds=0)
    assert report.deleted == [orphan.relative_to(tmp_path).as_posix()]
    assert not orphan.exists() and foreign.exists() and unknown_kind.exists()


def test_every_artifact_writer_uses_a_kind_the_sweep_knows() -> None:
    """A kind directory missing from ARTIFACT_KINDS would never be swept; one missing from the reference
    check would be swept while in use. The writers: intake services, the job runner, the shadow store."""
    from app.services.data.artifacts import ARTIFACT_KINDS

    root = Path(__file__).resolve().parents[3]
    sources = ["app/services/data/datasets.py", "app/services/data/models.py", "workers/jobrunner.py"]
    used: set[str] = set()
    for source in [*sources, "workers/shadow_store.py"]:
        text = (root / source).read_text()
        used |= set(re.findall(r'content_key\(\s*"(\w+)"', text))
        used |= set(re.findall(r"}/(\w+)/\{", text))
    assert {"datasets", "models", "masks", "checkpoints", "scores", "audits", "shadows"} <= used
    assert used <= ARTIFACT_KINDS, used - ARTIFACT_KINDS


def test_a_file_named_in_another_jobs_result_stays(
    api: TestClient, tenant, sessions, artifacts_dir: Path, store: LocalArtifactStore
) -> None:
    """Two audits with identical per-example arrays share one file, referenced only from their results."""
    buffer = io.BytesIO()
    np.savez(buffer, scores=np.ones(3))
    key = content_key("audits", str(tenant.id), sha256_hex(buffer.getvalue()), ".npz")
    store.put(key, buffer.getvalue())
    ids = []
    with sessions() as session:
        for _ in range(2):
            job = Job(
                tenant_id=tenant.id,
                kind=JobKind.audit,
                method="ft",
                status=JobStatus.succeeded,
                params={},
                seed=0,
                device_requested="cpu",
                progress={},
                attempt=1,
                max_attempts=1,
                code_version="test",
                version=1,
                result={"arrays_key": key, "nested": {"also": [key]}},
            )
            session.add(job)
            session.flush()
            ids.append(str(job.id))
        session.commit()
    first = delete(api, tenant, f"/v1/jobs/{ids[0]}").json()
    assert first["artifacts_shared"] == 1 and first["artifacts_deleted"] == 0
    assert (artifacts_dir / key).exists()
    arrays = api.get(f"/v1/jobs/{ids[1]}/arrays", headers=tenant.headers("read")).json()
    assert arrays == {"scores": [1.0, 1.0, 1.0]}
    second = delete(api, tenant, f"/v1/jobs/{ids[1]}").json()
    assert second["artifacts_deleted"] == 1 and not (artifacts_dir / key).exists()
