"""Issue 17: one tenant cannot take the service from the others.

* bodies are authenticated before they are read, and JSON bodies have their own small limit;
* per-tenant storage quotas, counted at the stored (decompressed float32) size of a dataset, with uploads
  streamed instead of materialised;
* /metrics behind a scrape token.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.models import Dataset, Model
from app.services.ops import quotas
from tests.app.api.test_deletion import train_body
from tests.app.api.test_resources import assert_problem, model_weights, npz_bytes, small_arrays
from tests.conftest import RecordingPublisher, Tenant, make_tenant, settings_env

MiB = 1024 * 1024
BIG_BODY_BYTES = 50 * MiB
CHUNK = 64 * 1024
# Growth of the served API's peak RSS (VmHWM) allowed while it refuses unauthenticated 50 MiB bodies.
PRE_AUTH_RSS_GROWTH_LIMIT = 50 * MiB


# ------------------------------------------------------------------ item 3: authenticate before the body
async def _drive(app: FastAPI, headers: list[tuple[bytes, bytes]], body_bytes: int) -> tuple[int, int]:
    """Send one POST /v1/jobs through the ASGI app, offering ``body_bytes`` in 64 KiB messages; returns
    (status, body bytes the app pulled from its receive channel)."""
    pulled = 0
    offered = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled, offered
        if offered >= body_bytes:
            await anyio.sleep_forever()  # a client still connected, sending nothing more
        size = min(CHUNK, body_bytes - offered)
        offered += size
        pulled += size
        return {"type": "http.request", "body": b" " * size, "more_body": offered < body_bytes}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/jobs",
        "raw_path": b"/v1/jobs",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    with anyio.fail_after(30):
        await app(scope, receive, send)
    return status, pulled


def _run(app: FastAPI, headers: list[tuple[bytes, bytes]], body_bytes: int) -> tuple[int, int]:
    return anyio.run(_drive, app, headers, body_bytes)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_unauthenticated_body_is_refused_without_being_read(
    api: TestClient, tenant: Tenant, framing: str
) -> None:
    length = [(b"content-length", str(BIG_BODY_BYTES).encode())]
    if framing == "chunked":
        length = [(b"transfer-encoding", b"chunked")]
    for auth in ([], [(b"authorization", b"Bearer lk_0000_not-a-key")], [(b"x-api-key", b"garbage")]):
        status, pulled = _run(api.app, length + auth, BIG_BODY_BYTES)
        assert (status, pulled) == (401, 0)
    # The control: with a valid key the same body is read, up to the JSON limit (1 MiB by default), then 413.
    status, pulled = _run(
        api.app, [*length, (b"authorization", f"Bearer {tenant.submit}".encode())], BIG_BODY_BYTES
    )
    json_limit = api.app.state.settings.max_json_body_bytes
    assert status == 413
    if framing == "chunked":
        assert json_limit < pulled <= json_limit + CHUNK
    else:
        assert pulled == 0  # the declared length is over the limit: refused before reading


def test_unauthenticated_requests_get_the_same_problems(api: TestClient) -> None:
    missing = assert_problem(api.post("/v1/jobs", json={"kind": "train"}), 401, "missing-api-key")
    assert missing["request_id"] and "Authorization" in missing["detail"]
    invalid = api.post("/v1/jobs", json={"kind": "train"}, headers={"Authorization": "Bearer lk_a_b"})
    assert_problem(invalid, 401, "invalid-api-key")
    assert invalid.headers["www-authenticate"] == "Bearer"
    upload = api.post("/v1/datasets/upload", files={"file": ("d.npz", npz_bytes(**small_arrays()))})
    assert_problem(upload, 401, "missing-api-key")


def test_json_bodies_have_their_own_limit(api: TestClient, tenant: Tenant) -> None:
    body = b'{"kind": "train", "pad": "' + b"x" * (2 * MiB) + b'"}'
    headers = {**tenant.headers("submit"), "content-type": "application/json"}
    declared = assert_problem(api.post("/v1/jobs", content=body, headers=headers), 413, "payload-too-large")
    assert f"limit of {MiB} bytes" in declared["detail"]

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), CHUNK):
            yield body[start : start + CHUNK]

    streamed = api.post("/v1/jobs", content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, "payload-too-large")
    # A read-scope key is authenticated before the body too; its scope is checked by the route as before.
    small = api.post("/v1/jobs", json={"kind": "train"}, headers=tenant.headers("read"))
    assert_problem(small, 403, "insufficient-scope")


def _rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _send_unauthenticated(port: int, chunked: bool) -> int:
    """Offer a 50 MiB JSON body without a key on a raw socket; returns the response status."""
    head = "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {BIG_BODY_BYTES}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head.encode())
        piece = b" " * CHUNK
        if chunked:
            piece = f"{CHUNK:x}\r\n".encode() + piece + b"\r\n"
        try:
            for _ in range(BIG_BODY_BYTES // CHUNK):
                conn.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed without reading the rest: what we want
        response = b""
        while b"\r\n" not in response:
            data = conn.recv(4096)
            if not data:
                break
            response += data
    return int(response.split(b" ", 2)[1])


def test_served_api_memory_stays_flat_under_unauthenticated_bodies(
    migrated: Settings, tmp_path: Path
) -> None:
    """A real uvicorn process: three concurrent unauthenticated 50 MiB bodies (two with Content-Length, one
    chunked), each answered 401, move its peak RSS by less than PRE_AUTH_RSS_GROWTH_LIMIT."""
    from app.services.ops.processes import ServiceGroup

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    group = ServiceGroup(migrated, port=port, log_dir=tmp_path, extra_env=settings_env(migrated))
    proc = group.start_api()
    try:
        group.wait_ready()
        # The served process is uvicorn itself (`python -m uvicorn`), so its pid is the one to measure.
        before = _rss_peak(proc.pid)
        statuses: list[int] = []
        threads = [
            threading.Thread(target=lambda c=chunked: statuses.append(_send_unauthenticated(port, c)))
            for chunked in (False, False, True)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started
        after = _rss_peak(proc.pid)
    finally:
        group.stop()
    growth = after - before
    print(
        f"\npre-auth memory: 3 x {BIG_BODY_BYTES // MiB} MiB unauthenticated bodies -> {statuses}, peak RSS "
        f"{before / MiB:.1f} -> {after / MiB:.1f} MiB (+{growth / MiB:.2f} MiB) in {elapsed:.2f} s"
    )
    assert sorted(statuses) == [401, 401, 401]
    assert growth < PRE_AUTH_RSS_GROWTH_LIMIT, growth
    # The served process spools multipart uploads under its home, privately (app.main's tempfile.tempdir).
    spool = migrated.home.resolve() / "tmp"
    assert spool.is_dir() and stat.S_IMODE(spool.stat().st_mode) == 0o700


# ------------------------------------------------------------------------- item 4: storage quotas
def _quota_client(settings: Settings, quota: int | None) -> TestClient:
    from app.main import create_app

    limited = settings.model_copy(update={"storage_quota_bytes_per_tenant": quota})
    return TestClient(create_app(limited, publisher=RecordingPublisher()))


def _used(sessions: sessionmaker[Session], tenant: Tenant) -> int:
    with sessions() as session:
        return quotas.storage_used(session, tenant.id)


def _rows(sessions: sessionmaker[Session], tenant: Tenant) -> tuple[int, int]:
    with sessions() as session:
        datasets = session.scalar(select(func.count(Dataset.id)).where(Dataset.tenant_id == tenant.id))
        models = session.scalar(select(func.count(Model.id)).where(Model.tenant_id == tenant.id))
    return int(datasets or 0), int(models or 0)


def _tenant_files(artifacts: Path, tenant: Tenant) -> set[str]:
    root = artifacts / str(tenant.id)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _upload(client: TestClient, tenant: Tenant, data: bytes, name: str = "d.npz") -> Any:
    return client.post("/v1/datasets/upload", files={"file": (name, data)}, headers=tenant.headers("submit"))


SMALL_MLP = {"input_shape": [1, 4, 4], "hidden": [8], "num_classes": 4}


def _upload_model(client: TestClient, tenant: Tenant) -> Any:
    return client.post(
        "/v1/models",
        data={"architecture": "mlp", "config": json.dumps(SMALL_MLP)},
        files={"weights": ("m.safetensors", model_weights("mlp", SMALL_MLP))},
        headers=tenant.headers("submit"),
    )


def test_tenant_at_its_quota_is_refused_and_others_are_not(
    migrated: Settings,
    api: TestClient,
    sessions: sessionmaker[Session],
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    first = _upload(api, tenant, npz_bytes(**small_arrays(0)))
    assert first.status_code == 201, first.text
    quota = _used(sessions, tenant)
    assert quota == first.json()["size_bytes"] > 0

    with _quota_client(migrated, quota) as client:  # the tenant is exactly at its quota
        files = _tenant_files(migrated.artifacts, tenant)
        rows = _rows(sessions, tenant)
        refused = assert_problem(_upload(client, tenant, npz_bytes(**small_arrays(1))), 413)
        assert refused["code"] == "storage-quota-exceeded"
        figures = refused["errors"][0]
        assert figures["used_bytes"] == quota and figures["limit_bytes"] == quota
        # The same shapes: the arrays' bytes, i.e. the first's size less its npy headers and zip records.
        assert quota - 2048 <= figures["requested_bytes"] < quota
        assert f"uses {quota} of its {quota} bytes" in refused["detail"]
        model = assert_problem(_upload_model(client, tenant), 413, "storage-quota-exceeded")
        assert model["errors"][0]["used_bytes"] == quota
        job = assert_problem(
            client.post("/v1/jobs", json=train_body(first.json()["id"]), headers=tenant.headers("submit")),
            422,
            "storage-quota-exceeded",
        )
        assert "output models" in job["detail"] and job["errors"][0]["requested_bytes"] > 0
        assert _tenant_files(migrated.artifacts, tenant) == files  # nothing written on refusal
        assert _rows(sessions, tenant) == rows
        assert client.get("/v1/jobs", headers=tenant.headers("read")).json()["data"] == []

        # Other tenants have their own quotas: the same dataset fits exactly, a model fits.
        other = _upload(client, other_tenant, npz_bytes(**small_arrays(1)))
        assert other.status_code == 201 and other.json()["size_bytes"] == quota, other.text
        third = _upload_model(client, make_tenant(sessions, migrated))
        assert third.status_code == 201, third.text

        # Deleting data frees quota.
        deleted = client.delete(f"/v1/datasets/{first.json()['id']}", headers=tenant.headers("admin"))
        assert deleted.status_code == 200, deleted.text
        assert _used(sessions, tenant) == 0
        again = _upload(client, tenant, npz_bytes(**small_arrays(1)))
        assert again.status_code == 201, again.text


def test_npz_counts_at_its_stored_size_not_its_upload_size(
    migrated: Settings, sessions: sessionmaker[Session], tenant: Tenant
) -> None:
    """A uint8 image dataset compresses well and is stored uncompressed (uint8 pixels, int64 labels): the
    quota sees the stored bytes."""
    rng = np.random.default_rng(0)
    images = (rng.random((600, 16, 16)) < 0.05).astype(np.uint8) * 255  # sparse strokes, compress well
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        x_train=images[:500],
        y_train=np.arange(500) % 10,
        x_test=images[500:],
        y_test=np.arange(100) % 10,
    )
    upload = buffer.getvalue()
    stored = images.size + 600 * 8
    assert len(upload) * 10 < stored
    quota = len(upload) * 5  # would fit five times over if the upload's own size were counted
    with _quota_client(migrated, quota) as client:
        refused = assert_problem(_upload(client, tenant, upload), 413, "storage-quota-exceeded")
        assert refused["errors"][0]["requested_bytes"] == stored
    with _quota_client(migrated, stored + 4096) as client:
        accepted = _upload(client, tenant, upload)
        assert accepted.status_code == 201, accepted.text
        row = accepted.json()
        assert stored < row["size_bytes"] <= stored + 4096  # plus npy headers and zip records
        assert row["input_shape"] == [1, 16, 16]


# -------------------------------------------------------- item 4: the upload path streams, bit for bit
def _channels_first(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[:, np.newaxis] if images.ndim == 3 else images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    "layout",
    ["uint8-nhw", "uint8-nhwc", "float64-flat", "float16-nchw-fortran", "regression"],
)
def test_streamed_upload_stores_what_the_array_path_stores(
    migrated: Settings, sessions: sessionmaker[Session], tenant: Tenant, tmp_path: Path, layout: str
) -> None:
    from app.services.data.datasets import array_digest, store_uploaded_dataset
    from app.storage import LocalArtifactStore
    from workers.engine.datasets import ArrayDataset
    from workers.engine.task_types import TaskType

    rng = np.random.default_rng(7)
    shapes = {
        "uint8-nhw": ((30, 6, 5), np.uint8),
        "uint8-nhwc": ((30, 6, 5, 3), np.uint8),
        "float64-flat": ((30, 7), np.float64),
        "float16-nchw-fortran": ((30, 2, 3, 3), np.float16),
        "regression": ((30, 4), np.float32),
    }
    shape, dtype = shapes[layout]
    x = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    if layout.endswith("fortran"):
        x = np.asfortranarray(x)
    task = TaskType.regression if layout == "regression" else TaskType.classification
    y = rng.normal(size=30).astype(np.float32) if task is TaskType.regression else np.arange(30) % 3
    arrays = {"x_train": x[:20], "y_train": y[:20], "x_test": x[20:], "y_test": y[20:]}
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    expected = ArrayDataset.from_arrays(*arrays.values(), task=task)
    store = LocalArtifactStore(migrated.artifacts)
    with sessions() as session, open(path, "rb") as source:
        row, created, _ = store_uploaded_dataset(
            session, store, migrated, tenant_id=tenant.id, source=source, name=layout, task=task
        )
        session.commit()
    if dtype == np.uint8:  # uint8 pixels stay uint8 in storage, channels first
        expected = dataclasses.replace(
            expected, x_train=_channels_first(arrays["x_train"]), x_test=_channels_first(arrays["x_test"])
        )
    assert created and row.sha256 == array_digest(expected)
    stored = ArrayDataset.from_npz_bytes(store.get(row.storage_key))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(expected, name))
        assert getattr(stored, name).dtype == getattr(expected, name).dtype
    assert stored.num_classes == expected.num_classes and stored.task is task
    assert row.size_bytes == os.path.getsize(store.root / row.storage_key)


def test_upload_memory_is_bounded_by_a_chunk_not_the_dataset(
    migrated: Settings, sessions: sessionmaker[Session], tenant: Tenant, tmp_path: Path
) -> None:
    """24 MiB of uint8 images (stored as uint8): the API allocates about one chunk, not the dataset (the array
    path held the raw arrays, their float32 copies and the serialised archive: > 200 MiB)."""
    import tracemalloc

    from app.services.data.datasets import store_uploaded_dataset
    from app.storage import LocalArtifactStore
    from workers.engine.task_types import TaskType

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(24 * 1024, 32, 32), dtype=np.uint8)
    path = tmp_path / "big.npz"
    np.savez(
        path,
        x_train=images[:20_000],
        y_train=np.arange(20_000) % 10,
        x_test=images[20_000:],
        y_test=np.arange(images.shape[0] - 20_000) % 10,
    )
    del images
    settings = migrated.model_copy(
        update={"max_upload_bytes": 64 * MiB, "max_dataset_uncompressed_bytes": 64 * MiB}
    )
    store = LocalArtifactStore(migrated.artifacts)
    tracemalloc.start()
    try:
        with sessions() as session, open(path, "rb") as source:
            row, created, _ = store_uploaded_dataset(
                session,
                store,
                settings,
                tenant_id=tenant.id,
                source=source,
                name="big",
                task=TaskType.classification,
            )
            session.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nupload of a 24 MiB uint8 dataset: traced peak {peak / MiB:.1f} MiB")
    assert created and row.size_bytes > 24 * MiB
    assert peak < 12 * MiB, peak  # half the dataset; measured 4.2 MiB


# ----------------------------------------------------------------------------- item 8: /metrics token
def test_metrics_are_off_by_default_and_need_the_scrape_token(
    migrated: Settings, api: TestClient, tenant: Tenant
) -> None:
    assert_problem(api.get("/metrics"), 404)
    assert_problem(api.get("/metrics", headers=tenant.headers("admin")), 404)
    from app.main import create_app

    enabled = migrated.model_copy(update={"metrics_token": SecretStr("scrape-" + uuid.uuid4().hex)})
    with TestClient(create_app(enabled, publisher=RecordingPublisher())) as client:
        token = enabled.metrics_token
        assert token is not None
        assert_problem(client.get("/metrics"), 401, "invalid-metrics-token")
        assert_problem(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(client.get("/metrics", headers=tenant.headers("admin")), 401)  # API keys do not work
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {token.get_secret_value()}"})
        assert ok.status_code == 200 and "lethe_queue_depth" in ok.text
