"""Device memory between jobs: free the caches, recognise running out of memory, retry with half the batch.

A job child runs one job and exits (``workers/pool.py``), so its CUDA context and caching allocator go with
it; :func:`release` still runs after every job (and between an out-of-memory attempt and its retry, where the
process lives on) so that a failed job's tensors are gone before the next allocation, and the device reads
as free as soon as the job has ended rather than when the child is reaped.
"""

from __future__ import annotations

import copy
import gc
import logging
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from workers.engine.methods import METHODS
from workers.engine.methods.params import TrainRecipe

log = logging.getLogger(__name__)

OUT_OF_MEMORY_CODE = "device-out-of-memory"
BATCH_FIELD = "batch_size"
RECIPE_FIELD = "recipe"


class DeviceOutOfMemory(Exception):
    """The job ran out of device memory (after its retry with half the batch, where that was enabled)."""

    def __init__(self, detail: str, record: dict[str, Any]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.record = record


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether torch's out-of-memory error (``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError``
    is) is anywhere in the exception's chain: the engine may wrap it in its own error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, torch.OutOfMemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def forget_frames(exc: BaseException) -> None:
    """Drop the local variables of every frame of ``exc``'s traceback: they hold the failed attempt's
    tensors (activations, the model, the batch) and would keep them allocated."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def memory_stats() -> dict[str, int] | None:
    """Allocated and reserved bytes on the current CUDA device; None where CUDA is not initialised (never
    initialise it just to ask)."""
    if not torch.cuda.is_initialized():
        return None
    return {
        "allocated_bytes": int(torch.cuda.memory_allocated()),
        "reserved_bytes": int(torch.cuda.memory_reserved()),
    }


def device_record() -> dict[str, Any]:
    """The CUDA device this process used, for a job that failed before the engine could report it."""
    if not torch.cuda.is_initialized():
        return {}
    index = torch.cuda.current_device()
    return {"device": "cuda", "device_name": torch.cuda.get_device_name(index), "device_index": index}


def release() -> dict[str, int] | None:
    """Collect garbage and return the allocator's cached blocks to the driver; the memory left after it."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return memory_stats()


@dataclass(frozen=True)
class BatchRetry:
    params: dict[str, Any]
    batch_size_from: int
    batch_size_to: int

    def record(self) -> dict[str, Any]:
        return {"batch_size": {"from": self.batch_size_from, "to": self.batch_size_to}}


def halved_batch(
    method: str | None, params: dict[str, Any], original_recipe: dict[str, Any] | None
) -> BatchRetry | None:
    """``params`` with the batch size halved, read from the method's params schema: a ``batch_size`` field
    (an inherited one resolved from the original's recipe) or a training ``recipe`` field (a null one meaning
    the original's recipe). None when the method has neither, the size cannot be resolved, or it is 1."""
    if method is None or method not in METHODS:
        return None
    schema = METHODS.get(method).params_model
    try:
        parsed = schema.model_validate(params)
    except ValidationError:
        return None
    fields = type(parsed).model_fields
    retried = copy.deepcopy(params)
    if BATCH_FIELD in fields:
        current = getattr(parsed, BATCH_FIELD)
        if current is None and original_recipe is not None:
            current = original_recipe.get(BATCH_FIELD)
        if not isinstance(current, int) or current < 2:
            return None
        retried[BATCH_FIELD] = current // 2
        return BatchRetry(retried, current, current // 2)
    if RECIPE_FIELD in fields:
        recipe = getattr(parsed, RECIPE_FIELD)
        if recipe is None and original_recipe is not None:
            recipe = TrainRecipe.model_validate(original_recipe)
        if not isinstance(recipe, TrainRecipe) or recipe.batch_size < 2:
            return None
        smaller = recipe.model_copy(update={BATCH_FIELD: recipe.batch_size // 2})
        retried[RECIPE_FIELD] = smaller.model_dump(mode="json")
        return BatchRetry(retried, recipe.batch_size, smaller.batch_size)
    return None


__all__ = [
    "OUT_OF_MEMORY_CODE",
    "BatchRetry",
    "DeviceOutOfMemory",
    "device_record",
    "forget_frames",
    "halved_batch",
    "is_out_of_memory",
    "memory_stats",
    "release",
]
