"""Artifact backends: one registry entry per backend, chosen by ``Settings.artifact_backend``.

``create_app`` and the worker runtime build their store with ``create_store(settings)``; nothing else
names a backend class. Adding a backend (the object store of issue 18) is one module implementing
``app.storage.base.ArtifactStore`` and one ``ARTIFACT_BACKENDS.register`` call here, plus whatever settings
it reads; the shared contract tests (tests/app/storage/test_store_contract.py) then run against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.storage.base import ArtifactStore
from app.storage.local import LocalArtifactStore
from workers.engine.registry import Registry  # torch-free; the same registry shape as the engine's catalogs

if TYPE_CHECKING:
    from app.core.config import Settings


@dataclass(frozen=True)
class ArtifactBackend:
    name: str  # the value of LETHE_ARTIFACT_BACKEND
    description: str
    create: Callable[[Settings], ArtifactStore]  # called once per process with the settings it started with


ARTIFACT_BACKENDS: Registry[ArtifactBackend] = Registry("artifact backend")

ARTIFACT_BACKENDS.register(
    ArtifactBackend(
        name="local",
        description="Files under LETHE_ARTIFACT_ROOT (default <home>/artifacts): temp file + fsync + rename.",
        create=lambda settings: LocalArtifactStore(settings.artifacts),
    )
)


def create_store(settings: Settings) -> ArtifactStore:
    """The store of the configured backend (the name was validated when the settings were loaded)."""
    return ARTIFACT_BACKENDS.get(settings.artifact_backend).create(settings)
