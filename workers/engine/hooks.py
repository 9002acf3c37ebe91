"""The callback interface between the engine and the job runner (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class EngineHooks(Protocol):
    """Implemented by the worker; the engine calls it from inside long-running loops.

    ``progress`` is called after every optimisation step (the implementation throttles its own writes)
    and may raise :class:`workers.engine.errors.JobCancelled` to stop the job. ``checkpoint`` receives a
    safetensors blob at every epoch end; passing the latest one back as ``resume`` continues the run.
    """

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None: ...

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None: ...


class NullHooks:
    """Hooks that ignore everything; used when the caller passes none."""

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        return None

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        return None


@dataclass
class RecordingHooks:
    """Hooks that keep every call in memory (for tests and local scripts)."""

    progress_calls: list[tuple[str, int, int, dict[str, Any]]] = field(default_factory=list)
    checkpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def progress(self, phase: str, step: int, total: int, info: dict[str, Any]) -> None:
        self.progress_calls.append((phase, step, total, dict(info)))

    def checkpoint(self, phase: str, epoch: int, blob: bytes) -> None:
        self.checkpoints[(phase, epoch)] = blob


class ArtifactCache(Protocol):
    """Content-addressed bytes the engine may reuse across jobs (e.g. the generative metric classifier).

    ``get(name)`` returns the bytes stored under ``name`` or None; ``put(name, data)`` stores them; ``key``
    is the storage key of ``name`` that the job's result should name (so that the bytes stay referenced)."""

    def key(self, name: str) -> str: ...

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, data: bytes) -> str: ...


@dataclass
class MemoryCache:
    """An in-memory :class:`ArtifactCache` (tests and local scripts)."""

    entries: dict[str, bytes] = field(default_factory=dict)
    hits: int = 0

    def key(self, name: str) -> str:
        return name

    def get(self, name: str) -> bytes | None:
        data = self.entries.get(name)
        self.hits += data is not None
        return data

    def put(self, name: str, data: bytes) -> str:
        self.entries[name] = data
        return name
