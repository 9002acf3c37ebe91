"""The s3 backend's own guarantees, on a real HTTP endpoint (moto's server, tests/s3_server.py): multipart
uploads published only on completion, a crashed upload swept like a temporary file, retries with backoff
on server errors and dropped connections, a streamed read that resumes, the bucket prefix, local staging.
(The behaviour every backend owes runs on it too: tests/app/storage/test_store_contract.py.)"""

from __future__ import annotations

import os
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.services.data.artifacts import sweep_orphans
from app.storage import StorageError, create_store
from app.storage.base import content_key, sha256_hex
from app.storage.s3 import MIN_PART_BYTES, S3ArtifactStore
from tests.s3_server import FlakyProxy, MotoS3Server


def make_store(server: MotoS3Server, home: Path, **extra: Any) -> S3ArtifactStore:
    env = server.env(server.new_bucket())
    fields = {name.removeprefix("LETHE_").lower(): value for name, value in env.items()}
    store = create_store(Settings(home=home, **{**fields, **extra}))
    assert isinstance(store, S3ArtifactStore)
    return store


def pending_uploads(store: S3ArtifactStore) -> list[dict[str, Any]]:
    return list(store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []))


def test_a_large_staged_file_goes_up_in_parts_and_appears_whole(
    s3_server: MotoS3Server, tmp_path: Path
) -> None:
    store = make_store(s3_server, tmp_path, s3_part_bytes=MIN_PART_BYTES)
    tenant = str(uuid.uuid4())
    data = os.urandom(2 * MIN_PART_BYTES + 12345)  # three parts
    staging = store.staging_path(f"{tenant}/datasets")
    assert staging.is_relative_to(tmp_path / "staging")  # local disk, never the bucket
    staging.write_bytes(data)
    key = content_key("datasets", tenant, sha256_hex(data), ".npz")
    store.put_file(key, staging)
    assert not staging.exists() and pending_uploads(store) == []
    head = store.client.head_object(Bucket=store.bucket, Key=key)
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')  # a 3-part upload
    with store.open(key) as stream:
        assert stream.read(MIN_PART_BYTES) == data[:MIN_PART_BYTES]
        assert stream.read() == data[MIN_PART_BYTES:]


def test_memory_stays_bounded_by_the_part_size_not_the_file_size(
    s3_server: MotoS3Server, tmp_path: Path
) -> None:
    """A 24 MiB file goes up and comes back while Python holds about two parts (5 MiB each) at most; a
    whole-object ``get`` holds the object once (the response body), not twice."""
    store = make_store(s3_server, tmp_path, s3_part_bytes=MIN_PART_BYTES)
    size = 24 * 1024 * 1024
    staging = store.staging_path("t/datasets")
    with open(staging, "wb") as handle:
        for _ in range(size // (1024 * 1024)):
            handle.write(os.urandom(1024 * 1024))
    store.put("t/warm/up", b"")  # the client's own first-use allocations are not the upload's
    tracemalloc.start()
    try:
        store.put_file("t/datasets/big.npz", staging)
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        read = 0
        with store.open("t/datasets/big.npz") as stream:
            while block := stream.read(1024 * 1024):
                read += len(block)
        stream_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        whole = store.get("t/datasets/big.npz")
        get_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read == len(whole) == size
    assert upload_peak < 3 * MIN_PART_BYTES, upload_peak
    assert stream_peak < 8 * 1024 * 1024, stream_peak
    assert get_peak < 1.5 * size, get_peak


def test_an_unfinished_upload_is_invisible_and_swept_after_the_grace_period(
    s3_server: MotoS3Server, tmp_path: Path, sessions
) -> None:
    """A writer that died after sending a part: no reader sees the key, the listing shows a temporary
    entry, and the orphan sweep aborts the upload once it is older than the grace period."""
    store = make_store(s3_server, tmp_path)
    tenant = uuid.uuid4()
    key = content_key("models", str(tenant), "f" * 64, ".safetensors")
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
    store.client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"half")
    assert not store.exists(key) and store.stat(key) is None
    with pytest.raises(StorageError):
        store.get(key)
    [temporary] = list(store.scan(f"{tenant}/"))
    assert temporary.temporary and temporary.key.startswith(f"{tenant}/models/ff/.tmp-")
    assert store.stat(temporary.key) == temporary

    young = sweep_orphans(sessions, store, grace_seconds=3600, tenant_ids=[tenant])
    assert young.temp_deleted == [] and young.skipped_young == 1 and len(pending_uploads(store)) == 1
    swept = sweep_orphans(sessions, store, grace_seconds=3600, now=time.time() + 7200, tenant_ids=[tenant])
    assert swept.temp_deleted == [temporary.key] and pending_uploads(store) == []
    assert list(store.scan(f"{tenant}/")) == []


def test_server_errors_and_dropped_connections_are_retried(s3_server: MotoS3Server, tmp_path: Path) -> None:
    failures = {"PUT": [503, 500], "GET": ["drop"]}

    def rule(method: str, path: str) -> int | str | None:
        pending = failures.get(method)
        return pending.pop(0) if pending else None

    with FlakyProxy(s3_server.port, rule) as proxy:
        store = make_store(s3_server, tmp_path, s3_endpoint_url=proxy.endpoint, s3_max_attempts=4)
        key = content_key("scores", str(uuid.uuid4()), "a" * 64, ".json")
        store.put(key, b"scores")
        assert store.get(key) == b"scores"
    outcomes = [(method, outcome) for method, _, outcome in proxy.seen]
    assert outcomes == [("PUT", 503), ("PUT", 500), ("PUT", 200), ("GET", "drop"), ("GET", 200)]


def test_an_upload_that_keeps_failing_leaves_nothing_behind(s3_server: MotoS3Server, tmp_path: Path) -> None:
    """Parts fail past the retry budget: put_file raises StorageError, the upload is aborted (no temporary
    entry, no object) and the staged file stays for the caller to delete."""

    def rule(method: str, path: str) -> int | None:
        return 503 if method == "PUT" and "partNumber=2" in path else None

    with FlakyProxy(s3_server.port, rule) as proxy:
        store = make_store(
            s3_server,
            tmp_path,
            s3_endpoint_url=proxy.endpoint,
            s3_max_attempts=2,
            s3_part_bytes=MIN_PART_BYTES,
        )
        tenant = str(uuid.uuid4())
        staging = store.staging_path(f"{tenant}/datasets")
        staging.write_bytes(os.urandom(MIN_PART_BYTES + 10))
        key = content_key("datasets", tenant, "b" * 64, ".npz")
        with pytest.raises(StorageError):
            store.put_file(key, staging)
        assert staging.exists()
        assert pending_uploads(store) == [] and list(store.scan(f"{tenant}/")) == []
    assert sum(1 for method, path, outcome in proxy.seen if "partNumber=2" in path and outcome == 503) == 2
    assert any(method == "DELETE" and "uploadId=" in path for method, path, _ in proxy.seen)  # the abort


def test_a_read_cut_off_mid_body_resumes_where_it_stopped(s3_server: MotoS3Server, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    cut = {"done": False}

    def rule(method: str, path: str) -> str | None:
        if method == "GET" and "/objects/" in path and not cut["done"]:
            cut["done"] = True
            return "truncate"
        return None

    with FlakyProxy(s3_server.port, rule) as proxy:
        store = make_store(s3_server, tmp_path, s3_endpoint_url=proxy.endpoint)
        key = f"{uuid.uuid4()}/objects/{sha256_hex(data)}.bin"
        store.put(key, data)
        with store.open(key) as stream:
            assert stream.read() == data
    gets = [outcome for method, _, outcome in proxy.seen if method == "GET"]
    assert gets == ["truncate", 206]  # the second request asked for the rest only (Range, same ETag)


def test_the_prefix_keeps_the_store_inside_its_part_of_a_shared_bucket(
    s3_server: MotoS3Server, tmp_path: Path
) -> None:
    store = make_store(s3_server, tmp_path, s3_prefix="lethe/prod/")
    store.client.put_object(Bucket=store.bucket, Key="someone-else/file", Body=b"not ours")
    store.put("t/models/m.bin", b"ours")
    assert [o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket)["Contents"]] == [
        "lethe/prod/t/models/m.bin",
        "someone-else/file",
    ]
    assert [info.key for info in store.scan()] == ["t/models/m.bin"]
    store.delete("t/models/m.bin")
    assert list(store.scan()) == []


def test_settings_without_a_bucket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="LETHE_S3_BUCKET"):
        create_store(Settings(home=tmp_path, artifact_backend="s3"))


def test_staging_files_a_dead_process_left_are_purged_at_start(
    s3_server: MotoS3Server, tmp_path: Path
) -> None:
    store = make_store(s3_server, tmp_path)
    old = store.staging_path("t/datasets")
    fresh = store.staging_path("t/datasets")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.purge_staging(older_than_seconds=3600) == 1
    assert not old.exists() and fresh.exists()


def test_an_s3_outage_fails_an_upload_whole(
    s3_server: MotoS3Server, migrated: Settings, recording_publisher, tenant, sessions
) -> None:
    """Every write answered 503 past the retry budget: the API answers 503 problem+json and writes nothing
    (no row, no object, no staging file)."""
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from app.main import create_app
    from app.models import Dataset

    def rule(method: str, path: str) -> int | None:
        return 503 if method in ("PUT", "POST") else None

    with FlakyProxy(s3_server.port, rule) as proxy:
        env = s3_server.env(s3_server.new_bucket())
        fields = {name.removeprefix("LETHE_").lower(): value for name, value in env.items()}
        fields.update(s3_endpoint_url=proxy.endpoint, s3_max_attempts=2)
        settings = Settings.model_validate({**migrated.model_dump(), **fields})
        app = create_app(settings, publisher=recording_publisher)
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.post(
                "/v1/datasets",
                json={"builtin": "procedural", "config": {"n_train": 60, "n_test": 20, "image_size": 8}},
                headers=tenant.headers("submit"),
            )
        store = app.state.store
        assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "artifact-store-unavailable" and answer.headers["Retry-After"] == "5"
        assert proxy.endpoint not in answer.text  # the store's message stays in the log
        assert list(store.scan(f"{tenant.id}/")) == []
    assert any(outcome == 503 for _, _, outcome in proxy.seen)
    with sessions() as session:
        assert session.scalar(select(func.count()).where(Dataset.tenant_id == tenant.id)) == 0
    assert list(settings.staging.glob("*")) == []
