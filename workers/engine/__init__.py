"""Lethe's ML engine.

Torch-free (safe for the API process): this package, ``errors``, ``registry``, ``tasks``, ``hooks``,
``imports``, ``architectures`` (catalog), ``datasets``, ``methods`` (catalog + params), ``metrics``.
Torch side (worker only, import explicitly): ``architectures.build`` and the builders, ``training``,
``execute``, the method implementations.
"""

from __future__ import annotations

from workers.engine.errors import EngineError, InvalidInputError, JobCancelled, UnknownEntryError
from workers.engine.registry import Registry
from workers.engine.task_types import TaskType

__all__ = ["EngineError", "InvalidInputError", "JobCancelled", "Registry", "TaskType", "UnknownEntryError"]
