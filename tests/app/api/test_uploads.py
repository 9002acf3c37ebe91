"""Resumable chunked uploads over HTTP, on an API whose single-request limit is 64 KiB: a dataset and a
model above it arrive in parts and are registered exactly as the single-request routes would; resume from
GET; every bad input is a problem+json that changes nothing (wrong offset, bad range or digest, too large,
unknown or another tenant's id, an incomplete or invalid file); per-tenant caps on incomplete bytes and
open uploads; and the retention sweep expires stale uploads with their parts."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import AuditEvent, Dataset, Model, Upload
from app.models.base import utcnow
from app.services.data import retention
from app.services.data.uploads import expire_uploads
from app.storage import LocalArtifactStore
from tests.app.api.test_resources import model_weights
from tests.conftest import RecordingPublisher

PROBLEM = "application/problem+json"
PART = 64 * 1024  # the single-request limit, and so the largest part
INCOMPLETE_CAP = 256 * 1024
OPEN_CAP = 3


@pytest.fixture(scope="module")
def chunked_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(
        update={
            "max_upload_bytes": PART,
            "max_chunked_upload_bytes": 1024 * 1024,
            "max_incomplete_upload_bytes_per_tenant": INCOMPLETE_CAP,
            "max_open_uploads_per_tenant": OPEN_CAP,
        }
    )


@pytest.fixture(scope="module")
def client(chunked_settings: Settings) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(chunked_settings, publisher=RecordingPublisher())) as test_client:
        yield test_client


def problem(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code, body
    return body


def digest_header(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def start(client: TestClient, tenant, purpose: str, data: bytes, **extra: object) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(
        "/v1/uploads",
        json={"purpose": purpose, "size_bytes": len(data), **extra},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/uploads/{response.json()['id']}"
    return response.json()


def put(client: TestClient, tenant, upload_id: str, data: bytes, offset: int, total: int | None = None,
        digest: str | None = None):  # type: ignore[no-untyped-def]  # fmt: skip
    end = offset + len(data) - 1
    return client.put(
        f"/v1/uploads/{upload_id}",
        content=data,
        headers={
            **tenant.headers("submit"),
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {offset}-{end}/{'*' if total is None else total}",
            "Content-Digest": digest or digest_header(data),
        },
    )


def send_all(client: TestClient, tenant, upload_id: str, data: bytes) -> dict:  # type: ignore[no-untyped-def]
    body: dict = {}
    for offset in range(0, len(data), PART):
        response = put(client, tenant, upload_id, data[offset : offset + PART], offset, len(data))
        assert response.status_code == 200, response.text
        body = response.json()
    return body


def image_npz(n: int = 200, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.integers(0, 256, size=(n, 3, 16, 16), dtype=np.uint8),
        y_train=np.arange(n) % 5,
        x_test=rng.integers(0, 256, size=(20, 3, 16, 16), dtype=np.uint8),
        y_test=np.arange(20) % 5,
    )
    return buffer.getvalue()


def count(sessions: sessionmaker[Session], table: type, tenant_id: uuid.UUID) -> int:
    with sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(table).where(table.tenant_id == tenant_id)) or 0
        )


def part_files(settings: Settings, tenant_id: uuid.UUID, upload_id: str) -> list[str]:
    store = LocalArtifactStore(settings.artifacts)
    return [info.key for info in store.scan(f"{tenant_id}/uploads/{upload_id}/")]


def test_a_dataset_above_the_request_limit_arrives_in_parts(
    client: TestClient, tenant, sessions: sessionmaker[Session], chunked_settings: Settings
) -> None:
    data = image_npz()
    assert len(data) > 2 * PART
    single = client.post(
        "/v1/datasets/upload", files={"file": ("d.npz", data)}, headers=tenant.headers("submit")
    )
    assert single.status_code == 413  # why the chunked path exists
    upload = start(client, tenant, "dataset", data, sha256=hashlib.sha256(data).hexdigest())
    assert upload["received_bytes"] == 0 and upload["ranges"] == [] and upload["status"] == "open"
    first = put(client, tenant, upload["id"], data[:PART], 0, len(data))
    assert first.status_code == 200 and first.json()["ranges"] == [[0, PART - 1]]
    # Resume: GET says where the next part starts.
    state = client.get(f"/v1/uploads/{upload['id']}", headers=tenant.headers("read")).json()
    assert (
        state["received_bytes"] == PART
        and state["parts"][0]["sha256"] == hashlib.sha256(data[:PART]).hexdigest()
    )
    for offset in range(PART, len(data), PART):
        assert (
            put(client, tenant, upload["id"], data[offset : offset + PART], offset, len(data)).status_code
            == 200
        )
    assert len(part_files(chunked_settings, tenant.id, upload["id"])) == 3
    done = client.post(
        f"/v1/uploads/{upload['id']}/complete",
        json={"name": "chunked", "normalization": "computed"},
        headers=tenant.headers("submit"),
    )
    assert done.status_code == 201, done.text
    body = done.json()
    assert body["status"] == "completed" and body["result_type"] == "dataset"
    assert done.headers["Location"] == f"/v1/datasets/{body['result_id']}"
    dataset = client.get(done.headers["Location"], headers=tenant.headers("read")).json()
    assert (
        dataset["name"] == "chunked" and dataset["n_train"] == 200 and dataset["input_shape"] == [3, 16, 16]
    )
    pixels = (200 + 20) * 3 * 16 * 16
    # uint8 as in the single-request path; ~250 bytes of npy and zip headers per member (8 with the norm)
    assert pixels <= dataset["size_bytes"] <= pixels + 8 * 220 + 4096
    assert part_files(chunked_settings, tenant.id, upload["id"]) == []  # parts deleted
    problem(client.post(f"/v1/uploads/{upload['id']}/complete", json={}, headers=tenant.headers("submit")),
            409, "upload-not-open")  # fmt: skip
    with sessions() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.id)
        ).all()
    assert [a for a in actions if not a.startswith("key.")] == (
        ["upload.create"] + ["upload.part"] * 3 + ["dataset.upload", "upload.complete"]
    )


def test_a_model_arrives_in_parts_and_downloads_identically(client: TestClient, tenant) -> None:
    config = {"input_shape": [1, 16, 16], "hidden": [96], "num_classes": 10}
    weights = model_weights("mlp", config)
    assert len(weights) > PART
    upload = start(client, tenant, "model", weights)
    send_all(client, tenant, upload["id"], weights)
    problem(client.post(f"/v1/uploads/{upload['id']}/complete", json={"config": config},
                        headers=tenant.headers("submit")), 422, "invalid-upload-completion")  # fmt: skip
    problem(client.post(f"/v1/uploads/{upload['id']}/complete",
                        json={"architecture": "mlp", "config": {**config, "hidden": [95]}},
                        headers=tenant.headers("submit")), 422, "shape-mismatch")  # fmt: skip
    done = client.post(
        f"/v1/uploads/{upload['id']}/complete",
        json={"architecture": "mlp", "config": config, "name": "big-mlp"},
        headers=tenant.headers("submit"),
    )
    assert done.status_code == 201, done.text
    model_id = done.json()["result_id"]
    assert done.headers["Location"] == f"/v1/models/{model_id}"
    download = client.get(f"/v1/models/{model_id}/weights", headers=tenant.headers("read"))
    assert download.content == weights


def test_bad_parts_are_problems_and_change_nothing(
    client: TestClient, tenant, sessions: sessionmaker[Session], chunked_settings: Settings
) -> None:
    data = image_npz(seed=1)
    upload = start(client, tenant, "dataset", data)
    uid = upload["id"]
    assert put(client, tenant, uid, data[:PART], 0, len(data)).status_code == 200
    wrong = problem(
        put(client, tenant, uid, data[PART : 2 * PART], PART + 1, len(data)), 409, "upload-offset-mismatch"
    )
    assert wrong["errors"] == [{"expected_offset": PART, "offset": PART + 1}]
    problem(
        put(client, tenant, uid, data[:PART], 0, len(data)), 409, "upload-offset-mismatch"
    )  # a resent part
    problem(put(client, tenant, uid, data[PART : 2 * PART], PART, len(data), digest=digest_header(b"other")),
            422, "digest-mismatch")  # fmt: skip
    problem(put(client, tenant, uid, data[PART : 2 * PART], PART, len(data), digest="md5=:abc:"),
            400, "invalid-content-digest")  # fmt: skip
    problem(put(client, tenant, uid, data[PART : 2 * PART], PART, len(data) + 1), 422, "upload-size-mismatch")
    bad_range = client.put(f"/v1/uploads/{uid}", content=b"abc", headers={
        **tenant.headers("submit"), "Content-Type": "application/octet-stream", "Content-Range": "bytes=0-2",
        "Content-Digest": digest_header(b"abc")})  # fmt: skip
    problem(bad_range, 400, "invalid-content-range")
    short = client.put(f"/v1/uploads/{uid}", content=b"abc", headers={
        **tenant.headers("submit"), "Content-Type": "application/octet-stream",
        "Content-Range": f"bytes {PART}-{PART + 9}/*", "Content-Digest": digest_header(b"abc")})  # fmt: skip
    problem(short, 400, "invalid-content-range")
    problem(put(client, tenant, uid, b"x" * (PART + 1), PART, len(data)), 413, "part-too-large")
    # A part that would run past the declared size.
    tail = len(data) - PART - 10
    small = start(client, tenant, "dataset", b"x" * 100)
    problem(put(client, tenant, small["id"], b"x" * 101, 0), 413, "upload-too-large")
    problem(client.post("/v1/uploads", json={"purpose": "dataset", "size_bytes": 2 * 1024 * 1024},
                        headers=tenant.headers("submit")), 413, "upload-too-large")  # fmt: skip
    problem(client.post("/v1/uploads", json={"purpose": "pictures", "size_bytes": 10},
                        headers=tenant.headers("submit")), 422, "validation-error")  # fmt: skip
    state = client.get(f"/v1/uploads/{uid}", headers=tenant.headers("read")).json()
    assert state["received_bytes"] == PART and len(state["parts"]) == 1 and tail > 0
    assert len(part_files(chunked_settings, tenant.id, uid)) == 1
    # Completing early is refused; the upload stays as it was.
    problem(client.post(f"/v1/uploads/{uid}/complete", json={}, headers=tenant.headers("submit")),
            409, "upload-incomplete")  # fmt: skip
    assert count(sessions, Dataset, tenant.id) == 0


def test_an_invalid_file_is_refused_at_completion_and_nothing_is_registered(
    client: TestClient, tenant, sessions: sessionmaker[Session], chunked_settings: Settings
) -> None:
    import pickle

    evil = pickle.dumps({"x": list(range(30_000))})
    upload = start(client, tenant, "dataset", evil)
    send_all(client, tenant, upload["id"], evil)
    problem(client.post(f"/v1/uploads/{upload['id']}/complete", json={}, headers=tenant.headers("submit")),
            422, "pickle-rejected")  # fmt: skip
    data = image_npz(seed=2)
    mismatch = start(client, tenant, "dataset", data, sha256="0" * 64)
    send_all(client, tenant, mismatch["id"], data)
    problem(client.post(f"/v1/uploads/{mismatch['id']}/complete", json={}, headers=tenant.headers("submit")),
            422, "digest-mismatch")  # fmt: skip
    assert count(sessions, Dataset, tenant.id) == 0
    for uid in (upload["id"], mismatch["id"]):  # still open, parts kept: fixable by the client
        assert client.get(f"/v1/uploads/{uid}", headers=tenant.headers("read")).json()["status"] == "open"
        assert part_files(chunked_settings, tenant.id, uid)
    assert client.delete(f"/v1/uploads/{upload['id']}", headers=tenant.headers("submit")).status_code == 200
    assert part_files(chunked_settings, tenant.id, upload["id"]) == []
    problem(
        client.get(f"/v1/uploads/{upload['id']}", headers=tenant.headers("read")), 404, "upload-not-found"
    )


def test_unknown_and_foreign_ids_are_not_found(client: TestClient, tenant, other_tenant) -> None:
    data = b"y" * 10
    upload = start(client, tenant, "dataset", data)
    for uid in (upload["id"], str(uuid.uuid4())):
        problem(
            client.get(f"/v1/uploads/{uid}", headers=other_tenant.headers("read")), 404, "upload-not-found"
        )
        problem(put(client, other_tenant, uid, data, 0), 404, "upload-not-found")
        problem(client.post(f"/v1/uploads/{uid}/complete", json={}, headers=other_tenant.headers("submit")),
                404, "upload-not-found")  # fmt: skip
        problem(
            client.delete(f"/v1/uploads/{uid}", headers=other_tenant.headers("submit")),
            404,
            "upload-not-found",
        )
    assert (
        client.get(f"/v1/uploads/{upload['id']}", headers=tenant.headers("read")).json()["received_bytes"]
        == 0
    )
    problem(client.post("/v1/uploads", json={"purpose": "dataset", "size_bytes": 10},
                        headers=tenant.headers("read")), 403, "insufficient-scope")  # fmt: skip


def test_incomplete_bytes_and_open_uploads_are_capped_per_tenant(
    client: TestClient, tenant, other_tenant, sessions: sessionmaker[Session]
) -> None:
    """A tenant that never completes its uploads cannot fill the disk: received parts of open uploads are
    capped (checked on every part) and so is the number of open uploads; other tenants are unaffected."""
    size = 200 * 1024
    chunk = b"z" * PART
    first, second = (
        start(client, tenant, "dataset", b"z" * size),
        start(client, tenant, "dataset", b"z" * size),
    )
    for offset in range(0, 3 * PART, PART):
        assert put(client, tenant, first["id"], chunk, offset).status_code == 200
    assert put(client, tenant, second["id"], chunk, 0).status_code == 200  # 4 x 64 KiB = the cap
    refused = problem(
        put(client, tenant, second["id"], chunk, PART), 413, "incomplete-uploads-quota-exceeded"
    )
    assert refused["errors"] == [{"incomplete_bytes": INCOMPLETE_CAP, "limit_bytes": INCOMPLETE_CAP,
                                  "requested_bytes": PART}]  # fmt: skip
    assert (
        client.get(f"/v1/uploads/{second['id']}", headers=tenant.headers("read")).json()["received_bytes"]
        == PART
    )
    start(client, tenant, "dataset", b"z" * 10)
    problem(client.post("/v1/uploads", json={"purpose": "dataset", "size_bytes": 10},
                        headers=tenant.headers("submit")), 429, "too-many-open-uploads")  # fmt: skip
    other = start(client, other_tenant, "dataset", b"z" * size)
    assert put(client, other_tenant, other["id"], chunk, 0).status_code == 200
    # Abandoning an upload frees its bytes.
    assert client.delete(f"/v1/uploads/{first['id']}", headers=tenant.headers("submit")).status_code == 200
    assert put(client, tenant, second["id"], chunk, PART).status_code == 200
    with sessions() as session:
        assert (
            session.scalar(select(func.count()).select_from(Upload).where(Upload.tenant_id == tenant.id)) == 2
        )


def test_stale_uploads_expire_in_the_retention_sweep(
    client: TestClient, tenant, sessions: sessionmaker[Session], chunked_settings: Settings
) -> None:
    stale = start(client, tenant, "dataset", b"s" * 100)
    assert put(client, tenant, stale["id"], b"s" * 40, 0).status_code == 200
    done_data = model_weights("mlp", {"input_shape": [1, 4, 4], "hidden": [4], "num_classes": 3})
    done = start(client, tenant, "model", done_data)
    send_all(client, tenant, done["id"], done_data)
    body = {"architecture": "mlp", "config": {"input_shape": [1, 4, 4], "hidden": [4], "num_classes": 3}}
    assert client.post(f"/v1/uploads/{done['id']}/complete", json=body,
                       headers=tenant.headers("submit")).status_code == 201  # fmt: skip
    store = LocalArtifactStore(chunked_settings.artifacts)
    # Within the expiry period nothing goes.
    assert expire_uploads(sessions, store, chunked_settings, tenant_ids={tenant.id}) == []
    later = utcnow() + timedelta(seconds=chunked_settings.upload_expiry_seconds + 1)
    problem_after = retention.purge_intermediates(
        sessions, store, chunked_settings, now=later, tenant_ids={tenant.id}
    )
    assert sorted(map(str, problem_after.expired_uploads)) == sorted([stale["id"], done["id"]])
    assert part_files(chunked_settings, tenant.id, stale["id"]) == []
    problem(client.get(f"/v1/uploads/{stale['id']}", headers=tenant.headers("read")), 404, "upload-not-found")
    assert count(sessions, Model, tenant.id) == 1  # what a completed upload became stays
    with sessions() as session:
        expired = session.scalars(
            select(AuditEvent.resource_id).where(
                AuditEvent.tenant_id == tenant.id, AuditEvent.action == "upload.expire"
            )
        ).all()
    assert expired == [stale["id"]]


def test_stray_part_files_without_an_upload_are_swept(
    tenant, sessions: sessionmaker[Session], chunked_settings: Settings
) -> None:
    """Parts whose upload row is gone (a deletion whose file removal failed) go once older than the orphan
    grace period; a younger one may belong to a part whose row is not committed yet, and stays."""
    import os
    import time

    store = LocalArtifactStore(chunked_settings.artifacts)
    old_key = f"{tenant.id}/uploads/{uuid.uuid4()}/{0:016d}.part"
    young_key = f"{tenant.id}/uploads/{uuid.uuid4()}/{0:016d}.part"
    store.put(old_key, b"old")
    store.put(young_key, b"young")
    stale = time.time() - chunked_settings.orphan_grace_seconds - 60
    os.utime(chunked_settings.artifacts / old_key, (stale, stale))
    expire_uploads(sessions, store, chunked_settings, tenant_ids={tenant.id})
    assert not store.exists(old_key) and store.exists(young_key)


def test_an_expired_upload_answers_not_found_before_the_sweep(
    client: TestClient, tenant, sessions: sessionmaker[Session]
) -> None:
    upload = start(client, tenant, "dataset", b"e" * 10)
    with sessions() as session:
        row = session.get(Upload, uuid.UUID(upload["id"]))
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    problem(put(client, tenant, upload["id"], b"e" * 10, 0), 404, "upload-not-found")
    problem(
        client.get(f"/v1/uploads/{upload['id']}", headers=tenant.headers("read")), 404, "upload-not-found"
    )


def test_parts_are_raw_bodies_only_on_the_part_route(client: TestClient, tenant) -> None:
    """The upload limit applies to octet-stream bodies of PUT /v1/uploads/{id} only: a JSON route keeps its
    limit whatever the client calls its body."""
    big = json.dumps({"builtin": "digits", "config": {"pad": "x" * (2 * 1024 * 1024)}}).encode()
    response = client.post(
        "/v1/datasets",
        content=big,
        headers={**tenant.headers("submit"), "Content-Type": "application/octet-stream"},
    )
    problem(response, 413, "payload-too-large")
