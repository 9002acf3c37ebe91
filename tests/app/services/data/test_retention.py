"""Retention of regenerable intermediates, with a fake clock: shadows, checkpoints, per-example arrays."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import AuditEvent, ForgetSet, Job, JobKind, JobStatus, ShadowModel
from app.models.base import utcnow
from app.services.compliance import audit as audit_service
from app.services.data.retention import purge_intermediates
from app.services.jobs import lifecycle as job_service
from app.storage import LocalArtifactStore
from app.storage.local import content_key, sha256_hex
from tests.app.api.test_deletion import run_job_to_success, submit, train_body
from tests.app.api.test_resources import assert_problem, create_digits

DAYS = 30


@pytest.fixture
def store(artifacts_dir: Path) -> LocalArtifactStore:
    return LocalArtifactStore(artifacts_dir)


@pytest.fixture
def retained(migrated: Settings) -> Settings:
    return migrated.model_copy(update={"retention_days_intermediate": DAYS})


def put(store: LocalArtifactStore, tenant_id: uuid.UUID, kind: str, blob: bytes, suffix: str) -> str:
    key = content_key(kind, str(tenant_id), sha256_hex(blob), suffix)
    store.put(key, blob)
    return key


def add_shadow(
    sessions: sessionmaker[Session], store: LocalArtifactStore, tenant_id: uuid.UUID, **kw
) -> ShadowModel:
    blob = b"shadow " + uuid.uuid4().bytes
    key = put(store, tenant_id, "shadows", blob, ".safetensors")
    with sessions() as session:
        shadow = ShadowModel(
            tenant_id=tenant_id,
            key=uuid.uuid4().hex,
            role="base",
            architecture="mlp",
            dataset_sha256="0" * 64,
            spec={},
            sha256=sha256_hex(blob),
            storage_key=key,
            size_bytes=len(blob),
            use_count=0,
            **kw,
        )
        session.add(shadow)
        session.commit()
        session.expunge(shadow)
        return shadow


def add_audit_job(
    sessions: sessionmaker[Session], store: LocalArtifactStore, tenant_id: uuid.UUID, status: JobStatus
) -> Job:
    buffer = io.BytesIO()
    np.savez(buffer, scores=np.linspace(0, 1, 7))
    key = put(store, tenant_id, "audits", buffer.getvalue(), ".npz")
    with sessions() as session:
        job = Job(
            tenant_id=tenant_id,
            kind=JobKind.audit,
            method="ft",
            status=status,
            params={},
            seed=0,
            device_requested="cpu",
            progress={},
            attempt=1,
            max_attempts=1,
            code_version="test",
            version=1,
            result={"arrays_key": key, "arrays": ["scores"]} if status is JobStatus.succeeded else None,
            finished_at=utcnow() if status is JobStatus.succeeded else None,
        )
        session.add(job)
        session.commit()
        session.expunge(job)
        return job


def add_searched_forget_set(
    sessions: sessionmaker[Session], store: LocalArtifactStore, tenant_id: uuid.UUID, dataset_id: str
) -> ForgetSet:
    key = put(store, tenant_id, "scores", b'{"scores": [0.5, 0.25]}' + uuid.uuid4().bytes, ".json")
    with sessions() as session:
        forget_set = ForgetSet(
            tenant_id=tenant_id,
            dataset_id=uuid.UUID(dataset_id),
            name="worst-case",
            kind="worst_case",
            spec={"granularity": "data"},
            size=2,
            indices=[0, 1],
            sha256="1" * 64,
            scores_key=key,
        )
        session.add(forget_set)
        session.commit()
        session.expunge(forget_set)
        return forget_set


def load(sessions: sessionmaker[Session], entity, row_id: uuid.UUID):
    with sessions() as session:
        found = session.get(entity, row_id)
        if found is not None:
            session.expunge(found)
        return found


def test_retention_is_off_by_default(migrated: Settings, sessions, store, tenant) -> None:
    assert migrated.retention_days_intermediate is None
    shadow = add_shadow(sessions, store, tenant.id)
    report = purge_intermediates(sessions, store, migrated, now=utcnow() + timedelta(days=3650))
    assert report.purged == 0 and load(sessions, ShadowModel, shadow.id) is not None


def test_intermediates_are_purged_after_the_retention_period(
    api: TestClient, retained: Settings, sessions, store, artifacts_dir: Path, tenant
) -> None:
    dataset = create_digits(api, tenant)
    train = submit(api, tenant, train_body(dataset["id"]))
    model_id = run_job_to_success(sessions, store, train["id"])
    running = submit(api, tenant, train_body(dataset["id"]) | {"seed": 5})
    claim = job_service.claim(sessions, uuid.UUID(running["id"]), "test-worker", 60.0)
    assert claim is not None
    running_checkpoint = f"{tenant.id}/checkpoints/{running['id']}.safetensors"
    store.put(running_checkpoint, b"in progress")
    job_service.save_checkpoint_pointer(sessions, claim, running_checkpoint, 1)
    audit_job = add_audit_job(sessions, store, tenant.id, JobStatus.succeeded)
    searched = add_searched_forget_set(sessions, store, tenant.id, dataset["id"])
    stale = add_shadow(sessions, store, tenant.id)
    recently_used = add_shadow(sessions, store, tenant.id, last_used_at=utcnow() + timedelta(days=DAYS - 1))
    finished = load(sessions, Job, uuid.UUID(train["id"]))
    assert finished.checkpoint_key

    # Within the period nothing is touched.
    early = purge_intermediates(
        sessions, store, retained, now=utcnow() + timedelta(days=DAYS - 2), tenant_ids=[tenant.id]
    )
    assert early.purged == 0

    later = utcnow() + timedelta(days=DAYS + 1)
    report = purge_intermediates(sessions, store, retained, now=later, tenant_ids=[tenant.id])
    assert report.shadow_models == [stale.id]
    assert report.checkpoints == [finished.id]
    assert report.audit_arrays == [audit_job.id]
    assert report.search_scores == [searched.id]
    assert len(report.files.deleted) == 4 and report.files.bytes_freed > 0

    # Rows: the shadow is gone, the others only lost their pointers; files: the bytes are gone.
    assert load(sessions, ShadowModel, stale.id) is None
    assert load(sessions, ShadowModel, recently_used.id) is not None
    assert not (artifacts_dir / stale.storage_key).exists()
    assert (artifacts_dir / recently_used.storage_key).exists()
    assert load(sessions, Job, finished.id).checkpoint_key is None
    assert not (artifacts_dir / finished.checkpoint_key).exists()
    assert (artifacts_dir / running_checkpoint).exists()  # a running job's checkpoint is never purged
    assert load(sessions, Job, uuid.UUID(running["id"])).checkpoint_key == running_checkpoint
    assert not (artifacts_dir / audit_job.result["arrays_key"]).exists()
    assert not (artifacts_dir / searched.scores_key).exists()

    # What stays: models, metrics, the searched forget set; purged arrays answer 410 Gone.
    weights = api.get(f"/v1/models/{model_id}/weights", headers=tenant.headers("read"))
    assert weights.status_code == 200
    job = api.get(f"/v1/jobs/{train['id']}", headers=tenant.headers("read")).json()
    assert job["metrics"] == {"RA": 99.0, "UA": 1.0}
    assert_problem(
        api.get(f"/v1/jobs/{audit_job.id}/arrays", headers=tenant.headers("read")), 410, "arrays-purged"
    )
    assert (
        api.get(f"/v1/jobs/{audit_job.id}", headers=tenant.headers("read")).json()["result"][
            "arrays_purged_at"
        ]
        == later.isoformat()
    )
    assert_problem(
        api.get(f"/v1/forget-sets/{searched.id}/scores", headers=tenant.headers("read")), 410, "scores-purged"
    )
    indices = api.get(f"/v1/forget-sets/{searched.id}/indices", headers=tenant.headers("read"))
    assert indices.status_code == 200 and indices.json()["indices"] == [0, 1]

    # Audited once for the tenant, on the chain.
    with sessions() as session:
        events = list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.tenant_id == tenant.id, AuditEvent.action == "retention.purge"
                )
            )
        )
        assert audit_service.verify_chain(session, tenant.id)
    assert len(events) == 1 and events[0].actor == "system:retention"
    assert events[0].details["counts"] == {
        "audit_arrays": 1,
        "checkpoints": 1,
        "search_scores": 1,
        "shadow_models": 1,
    }

    # A second run finds nothing more.
    again = purge_intermediates(sessions, store, retained, now=later, tenant_ids=[tenant.id])
    assert again.purged == 0 and again.tenants == []


def test_shadows_wait_while_an_audit_is_queued_or_running(
    retained: Settings, sessions, store, artifacts_dir: Path, tenant
) -> None:
    shadow = add_shadow(sessions, store, tenant.id)
    add_audit_job(sessions, store, tenant.id, JobStatus.queued)
    later = utcnow() + timedelta(days=DAYS + 1)
    report = purge_intermediates(sessions, store, retained, now=later, tenant_ids=[tenant.id])
    assert report.shadow_models == []
    assert load(sessions, ShadowModel, shadow.id) is not None
    assert (artifacts_dir / shadow.storage_key).exists()


def test_a_shared_shadow_file_stays_while_another_row_uses_it(
    retained: Settings, sessions, store, artifacts_dir: Path, tenant
) -> None:
    old = add_shadow(sessions, store, tenant.id)
    with sessions() as session:
        twin = ShadowModel(  # another key whose training produced identical bytes: one file
            tenant_id=tenant.id,
            key=uuid.uuid4().hex,
            role="retrain",
            architecture="mlp",
            dataset_sha256="0" * 64,
            spec={},
            sha256=old.sha256,
            storage_key=old.storage_key,
            size_bytes=old.size_bytes,
            use_count=1,
            last_used_at=utcnow() + timedelta(days=DAYS),
        )
        session.add(twin)
        session.commit()
    report = purge_intermediates(
        sessions, store, retained, now=utcnow() + timedelta(days=DAYS + 1), tenant_ids=[tenant.id]
    )
    assert report.shadow_models == [old.id]
    assert report.files.shared == [old.storage_key] and report.files.deleted == []
    assert (artifacts_dir / old.storage_key).exists()
