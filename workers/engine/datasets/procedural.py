"""Procedurally generated class-conditional images (numpy only, ~0.5 s for 10k 3x32x32).

Each class owns a smooth random prototype (a coarse random grid bilinearly upsampled). A sample is its
class prototype, circularly shifted by a random offset, with its contrast jittered and zero-mean uniform
pixel noise of standard deviation ``noise_std`` added. A small CNN learns the classes well; a fraction of
*training* labels is then flipped to a random other class, and those samples can only be fitted by
memorisation - which is what makes membership inference (and therefore unlearning) measurable here.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.task_types import TaskType

MAX_SEED = 2**32 - 1
# Side of the coarse random grid each prototype is upsampled from: small = smooth, blob-like patterns.
PROTOTYPE_RESOLUTION = 4
# Contrast of each sample is scaled by a factor drawn uniformly from [1 - jitter, 1 + jitter].
CONTRAST_JITTER = 0.3
MID_GREY = 0.5
# A uniform distribution of width sqrt(12) * sigma has standard deviation sigma.
UNIFORM_WIDTH_PER_STD = float(np.sqrt(12.0))
# Default maximum shift as a fraction of the image side.
DEFAULT_SHIFT_DIVISOR = 8
# Cap on generated float32 values (train + test) so a request cannot exhaust worker memory (~1 GB).
MAX_TOTAL_VALUES = 250_000_000


class ProceduralConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(default=2000, ge=10, le=200_000, description="Training samples.")
    n_test: int = Field(default=500, ge=10, le=100_000, description="Test samples (labels never noisy).")
    num_classes: int = Field(default=10, ge=2, le=100, description="Number of classes.")
    channels: int = Field(default=3, ge=1, le=4, description="Image channels.")
    image_size: int = Field(default=32, ge=8, le=128, description="Height = width of the images.")
    label_noise: float = Field(
        default=0.1,
        ge=0.0,
        le=0.9,
        allow_inf_nan=False,
        description="Fraction of TRAIN labels flipped to another random class (exactly round(f * n_train)).",
    )
    noise_std: float = Field(
        default=0.5,
        ge=0.0,
        le=2.0,
        allow_inf_nan=False,
        description="Std of the zero-mean pixel noise: the difficulty knob.",
    )
    max_shift: int | None = Field(
        default=None, ge=0, le=64, description="Largest circular shift in pixels; default image_size // 8."
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of prototypes, samples and label noise."
    )

    @model_validator(mode="after")
    def _bounded_size(self) -> ProceduralConfig:
        total = (self.n_train + self.n_test) * self.channels * self.image_size**2
        if total > MAX_TOTAL_VALUES:
            raise ValueError(f"dataset would hold {total:,} values; the limit is {MAX_TOTAL_VALUES:,}")
        return self

    @property
    def resolved_max_shift(self) -> int:
        return self.image_size // DEFAULT_SHIFT_DIVISOR if self.max_shift is None else self.max_shift


def _upsampling_matrix(size: int, coarse: int) -> np.ndarray:
    """Linear-interpolation weights (size x coarse) from a coarse axis onto ``size`` evenly spaced points."""
    positions = np.linspace(0.0, coarse - 1.0, size)
    lower = np.minimum(np.floor(positions).astype(np.int64), coarse - 2)
    fraction = positions - lower
    weights = np.zeros((size, coarse))
    weights[np.arange(size), lower] = 1.0 - fraction
    weights[np.arange(size), lower + 1] = fraction
    return weights


def make_prototypes(config: ProceduralConfig, rng: np.random.Generator) -> np.ndarray:
    """(num_classes, channels, size, size) smooth patterns in [0, 1]."""
    coarse = rng.uniform(
        0.0, 1.0, (config.num_classes, config.channels, PROTOTYPE_RESOLUTION, PROTOTYPE_RESOLUTION)
    )
    upsample = _upsampling_matrix(config.image_size, PROTOTYPE_RESOLUTION)
    return np.einsum("ir,kcrs,js->kcij", upsample, coarse, upsample).astype(np.float32)


def balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Labels with every class appearing floor or ceil(count / num_classes) times, in random order."""
    return rng.permutation(np.arange(count, dtype=np.int64) % num_classes)


def render_samples(
    prototypes: np.ndarray, labels: np.ndarray, config: ProceduralConfig, rng: np.random.Generator
) -> np.ndarray:
    count, size = labels.shape[0], config.image_size
    shift = config.resolved_max_shift
    row_shift = rng.integers(-shift, shift + 1, size=(count,))
    col_shift = rng.integers(-shift, shift + 1, size=(count,))
    axis = np.arange(size)
    rows = (axis[None, :] - row_shift[:, None]) % size
    cols = (axis[None, :] - col_shift[:, None]) % size
    channel_axis = np.arange(config.channels)
    # One gather builds all shifted prototypes: (count, channels, size, size).
    images = prototypes[
        labels[:, None, None, None],
        channel_axis[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    contrast = rng.uniform(1.0 - CONTRAST_JITTER, 1.0 + CONTRAST_JITTER, size=(count,)).astype(np.float32)
    images -= MID_GREY
    images *= contrast[:, None, None, None]
    images += MID_GREY
    # Uniform rather than Gaussian noise: several times faster to draw, same standard deviation.
    noise = rng.random(images.shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(config.noise_std * UNIFORM_WIDTH_PER_STD)
    images += noise
    np.clip(images, 0.0, 1.0, out=images)
    return images


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Copy of ``labels`` with exactly ``round(fraction * n)`` entries moved to a different, random class."""
    flipped = labels.copy()
    count = round(fraction * labels.shape[0])
    chosen = rng.choice(labels.shape[0], size=count, replace=False)
    # Adding 1..C-1 modulo C always lands on another class, uniformly.
    flipped[chosen] = (labels[chosen] + rng.integers(1, num_classes, count)) % num_classes
    return flipped


def build_procedural(config: ProceduralConfig) -> ArrayDataset:
    # Independent streams: the test set and prototypes do not change when n_train or label_noise change.
    prototype_seed, train_seed, test_seed, noise_seed = np.random.SeedSequence(config.seed).spawn(4)
    prototypes = make_prototypes(config, np.random.default_rng(prototype_seed))
    train_rng, test_rng = np.random.default_rng(train_seed), np.random.default_rng(test_seed)
    clean_train_labels = balanced_labels(config.n_train, config.num_classes, train_rng)
    x_train = render_samples(prototypes, clean_train_labels, config, train_rng)
    y_test = balanced_labels(config.n_test, config.num_classes, test_rng)
    x_test = render_samples(prototypes, y_test, config, test_rng)
    y_train = flip_labels(
        clean_train_labels, config.label_noise, config.num_classes, np.random.default_rng(noise_seed)
    )
    return ArrayDataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=config.num_classes,
        task=TaskType.classification,
        input_shape=(config.channels, config.image_size, config.image_size),
    ).validate()
