"""Artifact storage chosen by settings. Keys are relative paths; the store writes atomically."""

from app.storage.local import ArtifactStore, LocalArtifactStore, StorageError, ensure_private_dir

__all__ = ["ArtifactStore", "LocalArtifactStore", "StorageError", "ensure_private_dir"]
