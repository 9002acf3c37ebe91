"""The shadow-model store interface and its content keys (torch-free).

Every model an audit trains or unlearns is determined by its inputs: the dataset's content hash, the
architecture and its config, the training recipe, the exact subset it was trained on, its seed, and for an
unlearned model the base model, the forget set and the method with its parameters. The key is the SHA-256 of
that material (canonical JSON), so a model is trained once per tenant and reused by every later audit with
the same inputs; a change in any input is a different key. ``SHADOW_FORMAT`` versions the training semantics
(bump it when a change to the trainers would make an old model differ from a new one with the same key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

SHADOW_FORMAT = "lethe.shadow/1"

# base: trained on the full training split; retrain: trained without one forget set; unlearned: the audited
# method applied to a base model; pool: a LiRA shadow trained on a random half of the train + test pool.
ShadowRole = Literal["base", "retrain", "unlearned", "pool"]
SHADOW_ROLES: tuple[ShadowRole, ...] = ("base", "retrain", "unlearned", "pool")

Weights = dict[str, np.ndarray]


def indices_digest(indices: np.ndarray) -> str:
    """SHA-256 of sorted int64 indices: names a subset without spelling it out."""
    return hashlib.sha256(np.ascontiguousarray(np.sort(indices), dtype="<i8").tobytes()).hexdigest()


def weights_digest(weights: Weights) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (names sorted): names a model's weights."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(weights[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ShadowSpec:
    """One model of an audit, identified by everything that determines it."""

    role: ShadowRole
    material: dict[str, Any] = field(hash=False)

    @property
    def key(self) -> str:
        document = {"format": SHADOW_FORMAT, "role": self.role, **self.material}
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


class ShadowStore(Protocol):
    """Where an audit's models live between audits (the worker backs it with the DB + artifact store)."""

    def fetch(self, keys: Sequence[str]) -> dict[str, Weights]:
        """The stored weights of those ``keys`` that are present."""
        ...

    def save(self, spec: ShadowSpec, weights: Weights) -> None:
        """Store one model; saving a key that is already present is a no-op."""
        ...


@dataclass
class MemoryShadowStore:
    """A store in a dict (tests, scripts, and audits that should not persist anything)."""

    models: dict[str, Weights] = field(default_factory=dict)
    specs: dict[str, ShadowSpec] = field(default_factory=dict)

    def fetch(self, keys: Sequence[str]) -> dict[str, Weights]:
        return {key: self.models[key] for key in keys if key in self.models}

    def save(self, spec: ShadowSpec, weights: Weights) -> None:
        self.models.setdefault(spec.key, weights)
        self.specs.setdefault(spec.key, spec)
