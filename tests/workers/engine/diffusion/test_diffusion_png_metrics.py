"""PNG grids decode to the expected pixels; metrics match hand-computed values."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from workers.engine.diffusion.metrics import (
    entropy,
    forgetting_metrics,
    frechet_distance,
    frechet_distance_from_moments,
    retained_metrics,
)
from workers.engine.diffusion.png import PNG_SIGNATURE, encode_png, grid_png, make_grid


def decode_png(data: bytes) -> tuple[dict[str, int], np.ndarray]:
    """A minimal decoder for what encode_png writes (8-bit, filter 0, no interlace); checks every CRC."""
    assert data[:8] == PNG_SIGNATURE
    position = 8
    chunks: list[tuple[bytes, bytes]] = []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        position += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, compression, filtering, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()  # filter type None on every scanline
    header = {"width": width, "height": height, "colour": colour}
    return header, rows[:, 1:].reshape(height, width, channels)


def test_encode_png_round_trips_grey_and_rgb() -> None:
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (4, 6, 3), (3, 3, 4)]:
        pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
        header, decoded = decode_png(encode_png(pixels))
        assert (header["height"], header["width"]) == shape[:2]
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), dtype=np.float32))


def test_grid_places_classes_in_rows_with_padding_and_scale() -> None:
    # 2 classes x 3 samples of 2x2 images; image k is filled with k / 5.
    images = np.stack([np.full((1, 2, 2), k / 5.0, dtype=np.float32) for k in range(6)])
    grid = make_grid(images, nrow=3, padding=1, scale=2, pad_value=1.0)
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (4 + 1) + 1, 1)
    for k in range(6):
        row, column = divmod(k, 3)
        top, left = 1 + row * 5, 1 + column * 5
        assert (grid[top : top + 4, left : left + 4] == round(k / 5.0 * 255)).all()
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
    header, decoded = decode_png(grid_png(images, nrow=3, padding=1, scale=2))
    assert header["colour"] == 0
    np.testing.assert_array_equal(decoded, grid)


def test_frechet_distance_of_known_gaussians() -> None:
    # Diagonal covariances: FD = |mu_a - mu_b|^2 + sum_i (sqrt(s_a,i) - sqrt(s_b,i))^2.
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 4.0 + (1.0 - 2.0) ** 2 + (2.0 - 1.0) ** 2 + 0.0
    got = frechet_distance_from_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    assert got == pytest.approx(expected, abs=1e-9)
    # A rotated, non-diagonal pair with the same spectrum and mean has distance 0.
    rotation = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    cov = rotation @ np.diag([1.0, 5.0]) @ rotation.T
    assert frechet_distance_from_moments(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_from_samples_converges() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20_000, 2))
    b = rng.normal(0.0, 1.0, size=(20_000, 2)) * np.array([2.0, 1.0]) + np.array([3.0, 0.0])
    # 9 (mean) + (1 - 2)^2 (first axis) + 0.
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_entropy_in_nats() -> None:
    probabilities = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(entropy(probabilities), [0.0, np.log(2.0), np.log(3.0)])


def test_forgetting_metrics_by_hand() -> None:
    # 4 forget-class samples: predicted 0, 1, 1, 2 (forget class 0, override 1).
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]], dtype=np.float64
    )
    metrics = forgetting_metrics(probabilities, forget_class=0, override_class=1)
    assert metrics["forget_generation_rate"] == 0.25
    assert metrics["ua"] == 0.75
    assert metrics["override_rate"] == 0.5
    assert metrics["forget_class_probability"] == pytest.approx((0.8 + 0.2 + 0.1 + 0.3) / 4)
    assert metrics["forget_entropy"] == pytest.approx(entropy(probabilities).mean())
    assert "override_rate" not in forgetting_metrics(probabilities, 0, None)


def test_retained_metrics_by_hand() -> None:
    rng = np.random.default_rng(1)
    conditioning = np.array([1, 1, 1, 2, 2, 2])
    predicted = np.array([1, 1, 2, 2, 2, 2])
    probabilities = np.eye(3)[predicted]
    features = rng.normal(size=(6, 2))
    real_labels = np.array([1, 1, 1, 2, 2, 2, 0, 0])
    real_features = rng.normal(size=(8, 2))
    metrics = retained_metrics(probabilities, features, conditioning, real_features, real_labels, [1, 2])
    assert metrics["retain_accuracy"] == pytest.approx(5 / 6)
    assert metrics["retain_accuracy.1"] == pytest.approx(2 / 3)
    assert metrics["retain_accuracy.2"] == 1.0
    assert metrics["fd.1"] == pytest.approx(frechet_distance(features[:3], real_features[:3]))
    # The real features of class 0 are not part of the retained reference set.
    assert metrics["fd_retain"] == pytest.approx(frechet_distance(features, real_features[:6]))
