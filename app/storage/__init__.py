"""Artifact storage chosen by settings (``create_store``). Keys are relative paths; writes are atomic."""

from app.storage.backends import ARTIFACT_BACKENDS, ArtifactBackend, create_store
from app.storage.base import ArtifactInfo, ArtifactStore, StorageError
from app.storage.local import LocalArtifactStore, ensure_private_dir

__all__ = [
    "ARTIFACT_BACKENDS",
    "ArtifactBackend",
    "ArtifactInfo",
    "ArtifactStore",
    "LocalArtifactStore",
    "StorageError",
    "create_store",
    "ensure_private_dir",
]
