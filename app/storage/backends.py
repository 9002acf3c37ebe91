"""Artifact backends: one registry entry per backend, chosen by ``Settings.artifact_backend``.

``create_app`` and the worker runtime build their store with ``create_store(settings)``; nothing else
names a backend class. Adding a backend is one module implementing ``app.storage.base.ArtifactStore`` and
one ``ARTIFACT_BACKENDS.register`` call here, plus whatever settings it reads; the shared contract tests
(tests/app/storage/test_store_contract.py) then run against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.storage.base import ArtifactStore, StorageError
from app.storage.local import LocalArtifactStore
from workers.engine.registry import Registry  # torch-free; the same registry shape as the engine's catalogs

if TYPE_CHECKING:
    from app.core.config import Settings


@dataclass(frozen=True)
class ArtifactBackend:
    name: str  # the value of LETHE_ARTIFACT_BACKEND
    description: str
    create: Callable[[Settings], ArtifactStore]  # called once per process with the settings it started with
    # Local directories the backend writes, made private (0700) by `lethe migrate` / the embedded start.
    local_dirs: Callable[[Settings], tuple[Path, ...]] = lambda settings: ()


ARTIFACT_BACKENDS: Registry[ArtifactBackend] = Registry("artifact backend")

ARTIFACT_BACKENDS.register(
    ArtifactBackend(
        name="local",
        description="Files under LETHE_ARTIFACT_ROOT (default <home>/artifacts): temp file + fsync + rename.",
        create=lambda settings: LocalArtifactStore(settings.artifacts),
        local_dirs=lambda settings: (settings.artifacts,),
    )
)


def _create_s3(settings: Settings) -> ArtifactStore:
    # Imported on use: boto3 costs ~0.3 s to import and only this backend needs it.
    from app.storage.s3 import S3ArtifactStore

    if not settings.s3_bucket:
        raise StorageError("LETHE_ARTIFACT_BACKEND=s3 needs LETHE_S3_BUCKET")
    secret = settings.s3_secret_access_key
    store = S3ArtifactStore(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        staging_dir=settings.staging,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        addressing_style=settings.s3_addressing_style,
        max_attempts=settings.s3_max_attempts,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        part_bytes=settings.s3_part_bytes,
        # Every API thread may hold a connection, and a streamed download keeps one while it is sent.
        max_connections=max(10, 2 * settings.api_concurrency),
    )
    # Staging files live on each machine's own disk, out of the orphan sweep's reach: every process start
    # removes those a dead process left behind (older than the sweep's grace period).
    store.purge_staging(settings.orphan_grace_seconds)
    return store


ARTIFACT_BACKENDS.register(
    ArtifactBackend(
        name="s3",
        description="Objects in LETHE_S3_BUCKET on an S3-compatible endpoint (AWS, MinIO, Ceph, ...): "
        "content-addressed keys, multipart uploads published on completion, for workers on several machines.",
        create=_create_s3,
        local_dirs=lambda settings: (settings.staging,),
    )
)


def create_store(settings: Settings) -> ArtifactStore:
    """The store of the configured backend (the name was validated when the settings were loaded)."""
    return ARTIFACT_BACKENDS.get(settings.artifact_backend).create(settings)


def local_dirs(settings: Settings) -> tuple[Path, ...]:
    """The local directories the configured backend writes."""
    return ARTIFACT_BACKENDS.get(settings.artifact_backend).local_dirs(settings)
