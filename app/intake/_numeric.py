"""Numeric helpers shared by the validators: chunked finiteness counts and bfloat16 widening."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Checking finiteness allocates a boolean mask per chunk; chunking bounds that to ~1 MiB of
# elements instead of one mask as large as the biggest tensor.
FINITE_CHECK_CHUNK_ELEMENTS = 1 << 20
# bfloat16 is the top half of an IEEE float32, so shifting its bits left by 16 gives the exact value.
BFLOAT16_TO_FLOAT32_SHIFT = 16


@dataclass(frozen=True)
class NonFiniteCount:
    nan: int
    inf: int

    @property
    def total(self) -> int:
        return self.nan + self.inf


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (any uint16 array) to float32 values, exactly."""
    widened: np.ndarray = (bits.astype(np.uint32) << np.uint32(BFLOAT16_TO_FLOAT32_SHIFT)).view(np.float32)
    return widened


def count_non_finite(
    values: np.ndarray, decode: Callable[[np.ndarray], np.ndarray] | None = None
) -> NonFiniteCount:
    """Count NaN and ±Inf in a floating array, chunk by chunk.

    ``decode`` converts each raw chunk to floats first (used for bfloat16 stored as uint16).
    """
    flat = values.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.size, FINITE_CHECK_CHUNK_ELEMENTS):
        chunk = flat[start : start + FINITE_CHECK_CHUNK_ELEMENTS]
        if decode is not None:
            chunk = decode(chunk)
        nan += int(np.count_nonzero(np.isnan(chunk)))
        inf += int(np.count_nonzero(np.isinf(chunk)))
    return NonFiniteCount(nan=nan, inf=inf)
