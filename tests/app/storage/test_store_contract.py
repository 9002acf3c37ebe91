"""The behaviour every artifact backend owes (app.storage.base.ArtifactStore), run against each backend.

The in-memory backend below is registered by this test alone: one entry in ARTIFACT_BACKENDS, no edit
anywhere else, and the settings, create_app, the worker runtime and the orphan sweep all use it.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.core.config import Settings
from app.services.data.artifacts import delete_unreferenced, sweep_orphans
from app.storage import (
    ARTIFACT_BACKENDS,
    ArtifactBackend,
    ArtifactInfo,
    ArtifactStore,
    LocalArtifactStore,
    StorageError,
    create_store,
)
from app.storage.base import check_key, check_prefix, content_key, sha256_hex

MEMORY = "memory"


class MemoryArtifactStore:
    """Objects in a dict, staging files in a scratch directory: the smallest backend that is not a
    directory of artifacts, so nothing can pass these tests by reaching past the interface to files."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.objects: dict[str, tuple[bytes, float]] = {}

    def put(self, key: str, data: bytes) -> None:
        self.objects[check_key(key)] = (bytes(data), time.time())

    def staging_path(self, prefix: str) -> Path:
        check_key(prefix)
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.scratch, prefix="staging-")
        os.close(fd)
        return Path(name)

    def put_file(self, key: str, source: Path) -> None:
        self.put(key, source.read_bytes())
        source.unlink()

    def get(self, key: str) -> bytes:
        try:
            return self.objects[check_key(key)][0]
        except KeyError:
            raise StorageError(f"cannot read artifact {key!r}: no such object") from None

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def exists(self, key: str) -> bool:
        return check_key(key) in self.objects

    def stat(self, key: str) -> ArtifactInfo | None:
        found = self.objects.get(check_key(key))
        return None if found is None else ArtifactInfo(key, len(found[0]), found[1])

    def delete(self, key: str) -> None:
        self.objects.pop(check_key(key), None)

    def scan(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        check_prefix(prefix)
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, modified = self.objects[key]
                yield ArtifactInfo(key, len(data), modified)


@pytest.fixture(scope="module", autouse=True)
def memory_backend() -> Iterator[None]:
    ARTIFACT_BACKENDS.register(
        ArtifactBackend(
            name=MEMORY,
            description="In-process dict (tests only).",
            create=lambda settings: MemoryArtifactStore(settings.home / "staging"),
        )
    )
    yield
    ARTIFACT_BACKENDS.unregister(MEMORY)


def s3_settings(server: Any, home: Path, **extra: Any) -> Settings:
    """Settings of a store in a new bucket of the test's S3 endpoint (tests/s3_server.py)."""
    env = server.env(server.new_bucket())
    fields = {name.removeprefix("LETHE_").lower(): value for name, value in env.items()}
    return Settings(home=home, **{**fields, **extra})


@pytest.fixture(params=["local", MEMORY, "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "s3":
        return create_store(s3_settings(request.getfixturevalue("s3_server"), tmp_path))
    return create_store(Settings(home=tmp_path, artifact_backend=request.param))


def test_settings_name_a_registered_backend(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).artifact_backend == "local"
    assert isinstance(create_store(Settings(home=tmp_path)), LocalArtifactStore)
    assert isinstance(create_store(Settings(home=tmp_path, artifact_backend=MEMORY)), MemoryArtifactStore)
    with pytest.raises(ValidationError, match="unknown artifact backend 'gcs'; available: local, memory, s3"):
        Settings(home=tmp_path, artifact_backend="gcs")


def test_backend_implements_the_interface(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)


def test_put_get_replace_stat_delete(store: ArtifactStore) -> None:
    key = content_key("models", str(uuid.uuid4()), sha256_hex(b"weights"), ".safetensors")
    assert not store.exists(key) and store.stat(key) is None
    with pytest.raises(StorageError):
        store.get(key)
    before = time.time()
    store.put(key, b"weights")
    assert store.exists(key) and store.get(key) == b"weights"
    info = store.stat(key)
    assert info is not None and info.key == key and info.size == 7 and not info.temporary
    assert before - 2 <= info.modified <= time.time() + 2  # file systems keep coarse times
    store.put(key, b"new weights")  # a put replaces
    replaced = store.stat(key)
    assert store.get(key) == b"new weights" and replaced is not None and replaced.size == 11
    store.delete(key)
    assert not store.exists(key) and store.stat(key) is None
    store.delete(key)  # deleting nothing is not an error


def test_open_streams_the_bytes(store: ArtifactStore) -> None:
    key = content_key("datasets", str(uuid.uuid4()), "d" * 64, ".npz")
    data = os.urandom(3 * 1024 * 1024 + 17)
    store.put(key, data)
    with store.open(key) as stream:
        first = stream.read(1024)
        rest = stream.read()
    assert first + rest == data
    with pytest.raises(StorageError):
        store.open(content_key("datasets", str(uuid.uuid4()), "e" * 64, ".npz"))


def test_staged_file_is_put_whole(store: ArtifactStore) -> None:
    tenant = str(uuid.uuid4())
    staging = store.staging_path(f"{tenant}/datasets")
    assert staging.exists() and staging.read_bytes() == b""
    staging.write_bytes(b"a large file, written a chunk at a time")
    key = content_key("datasets", tenant, "c" * 64, ".npz")
    store.put_file(key, staging)
    assert not staging.exists()  # consumed
    assert store.get(key) == b"a large file, written a chunk at a time"
    assert [info.key for info in store.scan(f"{tenant}/") if not info.temporary] == [key]


def test_scan_lists_by_prefix_in_key_order(store: ArtifactStore) -> None:
    keys = ["t/models/bb/2.safetensors", "t/models/aa/1.safetensors", "t/scores/s.json", "u/models/x.bin"]
    for index, key in enumerate(keys):
        store.put(key, b"x" * index)
    assert [info.key for info in store.scan("t/models/")] == sorted(keys[:2])
    assert [info.key for info in store.scan()] == sorted(keys)
    assert {info.key: info.size for info in store.scan("t/")} == {keys[0]: 0, keys[1]: 1, keys[2]: 2}
    assert list(store.scan("nothing/here/")) == []
    with pytest.raises(StorageError):
        list(store.scan("t/models"))  # a prefix is a whole path segment: it ends in "/"


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "a/../../b", "a//b", "", "a\\b"])
def test_keys_cannot_leave_the_store(store: ArtifactStore, key: str) -> None:
    with pytest.raises(StorageError):
        store.put(key, b"x")
    with pytest.raises(StorageError):
        store.get(key)


def test_deletion_and_orphan_sweep_work_through_the_interface(store: ArtifactStore, sessions) -> None:
    """No row references these keys (a tenant without rows): deletion and the sweep remove them on any
    backend, the sweep only after the grace period and only under known kinds."""
    tenant = uuid.uuid4()
    orphan = content_key("models", str(tenant), "a" * 64, ".safetensors")
    unknown_kind = f"{tenant}/reports/r.json"
    doomed = content_key("scores", str(tenant), "b" * 64, ".json")
    for key in (orphan, unknown_kind, doomed):
        store.put(key, b"bytes")
    report = delete_unreferenced(sessions, store, [doomed], written_before=None)
    assert report.deleted == [doomed] and report.bytes_freed == 5 and not store.exists(doomed)

    young = sweep_orphans(sessions, store, grace_seconds=3600, tenant_ids=[tenant])
    assert young.deleted == [] and young.skipped_young == 1 and store.exists(orphan)
    later = time.time() + 7200
    swept = sweep_orphans(sessions, store, grace_seconds=3600, now=later, tenant_ids=[tenant])
    assert swept.deleted == [orphan] and swept.bytes_freed == 5
    assert not store.exists(orphan) and store.exists(unknown_kind)


@pytest.mark.parametrize("backend", [MEMORY, "s3"])
def test_the_app_and_the_worker_build_the_configured_store(
    migrated: Settings, recording_publisher, tenant, monkeypatch: pytest.MonkeyPatch, backend: str, request
) -> None:
    """create_app and the worker runtime take their store from the registry; the API's dataset intake,
    forget-set labels and deletion then run on that backend without touching the artifact root."""
    from app.core.config import reset_settings_cache
    from app.main import create_app
    from app.storage.s3 import S3ArtifactStore
    from workers.runtime import get_runtime

    env = {"LETHE_ARTIFACT_BACKEND": MEMORY}
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        env = server.env(server.new_bucket())
    expected = {MEMORY: MemoryArtifactStore, "s3": S3ArtifactStore}[backend]
    fields = {name.removeprefix("LETHE_").lower(): value for name, value in env.items()}
    settings = Settings.model_validate({**migrated.model_dump(), **fields})
    app = create_app(settings, publisher=recording_publisher)
    store = app.state.store
    assert isinstance(store, expected)
    with TestClient(app) as client:
        created = client.post(
            "/v1/datasets",
            json={"builtin": "procedural", "config": {"n_train": 60, "n_test": 20, "image_size": 8}},
            headers=tenant.headers("submit"),
        )
        assert created.status_code == 201, created.text
        dataset = created.json()
        assert [info.size for info in store.scan(f"{tenant.id}/datasets/")] == [dataset["size_bytes"]]
        assert not (migrated.artifacts / str(tenant.id)).exists()
        forget = client.post(
            "/v1/forget-sets",
            json={"dataset_id": dataset["id"], "spec": {"kind": "class", "class": 1}},
            headers=tenant.headers("submit"),
        )
        assert forget.status_code == 201, forget.text
        if backend == "s3":
            # S3 keeps whole seconds and the store reports the end of that second: a file written in the
            # second a deletion starts is left to the orphan sweep (it may be a racing rewrite).
            time.sleep(1.0)
        deleted = client.delete(f"/v1/datasets/{dataset['id']}?cascade=true", headers=tenant.headers("admin"))
        assert deleted.status_code == 200, deleted.text
        assert list(store.scan(f"{tenant.id}/")) == []

    monkeypatch.setenv("LETHE_HOME", str(migrated.home))
    monkeypatch.setenv("LETHE_DATABASE_URL", migrated.db_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    get_runtime.cache_clear()
    try:
        assert isinstance(get_runtime().store, expected)
    finally:
        get_runtime.cache_clear()
        reset_settings_cache()


PATH_ACCESS = (
    r"^\s*(?:from|import) app\.storage\.local\b",
    r"\bLocalArtifactStore\b",
    r"\bsettings\.artifacts\b",
    r"\bartifact_root\b",
)


def test_nothing_outside_the_store_reaches_artifacts_by_path() -> None:
    """Workers on other machines share no directory with the API: outside app/storage, no module names the
    local backend or the artifact root (app/core/config.py defines the setting; migrate.py only takes the
    local store's file modes)."""
    root = Path(__file__).resolve().parents[3]
    allowed = {Path("app/core/config.py"), Path("app/core/migrate.py")}
    offenders = []
    for package in ("app", "workers"):
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative.parts[:2] == ("app", "storage") or relative in allowed:
                continue
            source = path.read_text()
            for pattern in PATH_ACCESS:
                offenders += [f"{relative}: {match}" for match in re.findall(pattern, source, re.MULTILINE)]
    assert offenders == []
