"""Resumable checkpoints of every engine loop: named CPU tensors + string metadata in one safetensors blob.

The epoch loop (``workers.engine.training``) and the diffusion step loops (``workers.engine.diffusion``)
save different state (one model + SGD momentum + lookahead; several networks + Adam states + EMA shadows),
but the same way: :func:`pack` snapshots the tensors and writes the metadata, :func:`unpack` refuses a blob
that belongs to another run (format, phase, seed, and the run's identity JSON - recipe or params) before
anything is loaded. No pickle anywhere: a checkpoint is data, never code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch

from workers.engine.errors import EngineError

SAFETENSORS_HEADER_LENGTH_BYTES = 8


def pack(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """One blob of ``tensors`` (copied to the CPU, contiguous: state_dict() values may share storage with
    the live model, so serialisation must see a snapshot) and ``metadata``."""
    snapshot = {key: value.detach().to("cpu").clone().contiguous() for key, value in tensors.items()}
    return safetensors.torch.save(snapshot, metadata=dict(metadata))


def metadata_of(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (header = 8-byte little-endian length + JSON)."""
    if len(blob) < SAFETENSORS_HEADER_LENGTH_BYTES:
        raise EngineError("checkpoint blob is truncated")
    (header_length,) = struct.unpack("<Q", blob[:SAFETENSORS_HEADER_LENGTH_BYTES])
    header = json.loads(
        blob[SAFETENSORS_HEADER_LENGTH_BYTES : SAFETENSORS_HEADER_LENGTH_BYTES + header_length]
    )
    metadata: dict[str, str] = header.get("__metadata__", {})
    return metadata


def unpack(
    blob: bytes, *, expected: Mapping[str, str], identity_key: str, identity: Any
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a :func:`pack` blob, after checking that it belongs to this run: every
    ``expected`` metadata value, and ``identity`` (plain JSON data) equal to the JSON under ``identity_key``
    (compared as data, so equal values written in another key order or by another model class match)."""
    metadata = metadata_of(blob)
    mismatched = [key for key, value in expected.items() if metadata.get(key) != value]
    if json.loads(metadata.get(identity_key, "null")) != identity:
        mismatched.append(identity_key)
    if mismatched:
        raise EngineError(
            f"resume checkpoint does not belong to this run (differs in: {', '.join(mismatched)})"
        )
    return safetensors.torch.load(blob), metadata


__all__ = ["metadata_of", "pack", "unpack"]
