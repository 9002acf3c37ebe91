"""Sample grids as PNG bytes with nothing but numpy and zlib (no PIL / matplotlib in the environment).

PNG layout (RFC 2083): the 8-byte signature, then chunks of (big-endian length, type, data, CRC-32 of type
+ data): IHDR (width, height, bit depth 8, colour type, compression 0, filter 0, interlace 0), one IDAT
with the zlib stream of every scanline prefixed by filter byte 0 ("None"), and an empty IEND.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BIT_DEPTH = 8
# PNG colour types by channel count: grey, grey + alpha, RGB, RGBA.
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
FILTER_NONE = b"\x00"
ZLIB_LEVEL = 9
UINT8_MAX = 255
MAX_SIDE = 2**15  # refuse absurd grids rather than allocate gigabytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit image: (H, W) grey or (H, W, C) with C in 1..4."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError("encode_png expects uint8 pixels")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"expected (H, W) or (H, W, C) with C in 1..4, got shape {array.shape}")
    height, width, channels = array.shape
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(f"image side out of range: {height} x {width}")
    header = struct.pack(">IIBBBBB", width, height, BIT_DEPTH, COLOUR_TYPES[channels], 0, 0, 0)
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    raw = b"".join(FILTER_NONE + row.tobytes() for row in rows)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, ZLIB_LEVEL))
        + _chunk(b"IEND", b"")
    )


def make_grid(
    images: np.ndarray, nrow: int, *, padding: int = 1, scale: int = 1, pad_value: float = 1.0
) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one uint8 (H', W', C) picture, ``nrow`` images per row
    (torchvision's make_grid convention; samples ordered class by class give one class per row), each
    image enlarged ``scale`` times (nearest neighbour: 8x8 digits are unreadable at 1:1) and separated by
    ``padding`` pixels of ``pad_value``."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) array, got shape {array.shape}")
    if nrow < 1 or scale < 1 or padding < 0:
        raise ValueError("nrow and scale must be >= 1 and padding >= 0")
    count, channels, height, width = array.shape
    if scale > 1:
        array = array.repeat(scale, axis=2).repeat(scale, axis=3)
        height, width = height * scale, width * scale
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = np.full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding),
        pad_value,
        dtype=np.float32,
    )
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = array[index]
    quantised = np.rint(np.clip(np.nan_to_num(grid, nan=0.0), 0.0, 1.0) * UINT8_MAX).astype(np.uint8)
    return np.ascontiguousarray(quantised.transpose(1, 2, 0))


def grid_png(
    images: np.ndarray, nrow: int, *, padding: int = 1, scale: int = 1, pad_value: float = 1.0
) -> bytes:
    """:func:`make_grid` encoded as PNG bytes."""
    return encode_png(make_grid(images, nrow, padding=padding, scale=scale, pad_value=pad_value))
