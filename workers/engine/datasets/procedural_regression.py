"""Procedurally generated images with a continuous target (numpy only): the image counterpart of an
age-estimation set such as AgeDB (blindspot_sfd.md §1.1), small enough for CPU tests.

Each sample has a latent ``s`` drawn uniformly from [0, 1] and a target ``low + s * (high - low)``. Its image
blends one of ``identities`` smooth random "identity" prototypes with a shared smooth "target" pattern,
``(1 - s) * P_identity + s * Q``, then is circularly shifted, contrast-jittered and given zero-mean uniform
pixel noise as in ``procedural`` (a CNN reads ``s`` off local patterns, whatever the shift). Gaussian noise of
standard deviation ``target_noise`` is added to the TRAIN targets only: fitting it takes memorisation, which
is what makes a membership attack (and therefore unlearning) measurable. Test targets are noise-free.

A target-range forget set ("every training sample with target <= t") is the natural forgetting request here,
as the reference's "age <= 30".
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.engine.datasets.arrays import REGRESSION_OUTPUTS, ArrayDataset
from workers.engine.datasets.procedural import (
    CONTRAST_JITTER,
    DEFAULT_SHIFT_DIVISOR,
    MAX_TOTAL_VALUES,
    MID_GREY,
    PROTOTYPE_RESOLUTION,
    UNIFORM_WIDTH_PER_STD,
    _upsampling_matrix,
)
from workers.engine.task_types import TaskType

MAX_SEED = 2**32 - 1


class ProceduralRegressionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(default=2000, ge=10, le=200_000, description="Training samples.")
    n_test: int = Field(default=500, ge=10, le=100_000, description="Test samples (targets never noisy).")
    channels: int = Field(default=3, ge=1, le=4, description="Image channels.")
    image_size: int = Field(default=32, ge=8, le=128, description="Height = width of the images.")
    identities: int = Field(
        default=8, ge=1, le=100, description="Number of identity prototypes (the nuisance factor)."
    )
    target_low: float = Field(default=0.0, allow_inf_nan=False, description="Smallest target value.")
    target_high: float = Field(default=100.0, allow_inf_nan=False, description="Largest target value.")
    target_noise: float = Field(
        default=5.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Std of the Gaussian noise added to TRAIN targets (target units).",
    )
    noise_std: float = Field(
        default=0.2, ge=0.0, le=2.0, allow_inf_nan=False, description="Std of the zero-mean pixel noise."
    )
    max_shift: int | None = Field(
        default=None, ge=0, le=64, description="Largest circular shift in pixels; default image_size // 8."
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of prototypes, samples and noise.")

    @model_validator(mode="after")
    def _valid(self) -> ProceduralRegressionConfig:
        if self.target_high <= self.target_low:
            raise ValueError("target_high must be greater than target_low")
        total = (self.n_train + self.n_test) * self.channels * self.image_size**2
        if total > MAX_TOTAL_VALUES:
            raise ValueError(f"dataset would hold {total:,} values; the limit is {MAX_TOTAL_VALUES:,}")
        return self

    @property
    def resolved_max_shift(self) -> int:
        return self.image_size // DEFAULT_SHIFT_DIVISOR if self.max_shift is None else self.max_shift


def _smooth_patterns(count: int, config: ProceduralRegressionConfig, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(0.0, 1.0, (count, config.channels, PROTOTYPE_RESOLUTION, PROTOTYPE_RESOLUTION))
    upsample = _upsampling_matrix(config.image_size, PROTOTYPE_RESOLUTION)
    return np.einsum("ir,kcrs,js->kcij", upsample, coarse, upsample).astype(np.float32)


def render(
    latent: np.ndarray,
    identity: np.ndarray,
    prototypes: np.ndarray,
    target_pattern: np.ndarray,
    config: ProceduralRegressionConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """(count, channels, size, size) images in [0, 1] for the given latents and identities."""
    count, size = latent.shape[0], config.image_size
    weight = latent.astype(np.float32)[:, None, None, None]
    blended = (1.0 - weight) * prototypes[identity] + weight * target_pattern[None]
    shift = config.resolved_max_shift
    row_shift = rng.integers(-shift, shift + 1, size=(count,))
    col_shift = rng.integers(-shift, shift + 1, size=(count,))
    axis = np.arange(size)
    rows = (axis[None, :] - row_shift[:, None]) % size
    cols = (axis[None, :] - col_shift[:, None]) % size
    images = blended[
        np.arange(count)[:, None, None, None],
        np.arange(config.channels)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    contrast = rng.uniform(1.0 - CONTRAST_JITTER, 1.0 + CONTRAST_JITTER, size=(count,)).astype(np.float32)
    images = (images - MID_GREY) * contrast[:, None, None, None] + MID_GREY
    noise = rng.random(images.shape, dtype=np.float32) - np.float32(0.5)
    images += noise * np.float32(config.noise_std * UNIFORM_WIDTH_PER_STD)
    np.clip(images, 0.0, 1.0, out=images)
    return np.ascontiguousarray(images, dtype=np.float32)


def build_procedural_regression(config: ProceduralRegressionConfig) -> ArrayDataset:
    pattern_seed, train_seed, test_seed, noise_seed = np.random.SeedSequence(config.seed).spawn(4)
    patterns = _smooth_patterns(config.identities + 1, config, np.random.default_rng(pattern_seed))
    prototypes, target_pattern = patterns[:-1], patterns[-1]
    span = config.target_high - config.target_low
    splits = []
    for count, seed in ((config.n_train, train_seed), (config.n_test, test_seed)):
        rng = np.random.default_rng(seed)
        latent = rng.uniform(0.0, 1.0, size=count)
        identity = rng.integers(0, config.identities, size=count)
        images = render(latent, identity, prototypes, target_pattern, config, rng)
        splits.append((images, config.target_low + latent * span))
    (x_train, clean_train), (x_test, y_test) = splits
    y_train = clean_train + np.random.default_rng(noise_seed).normal(0.0, config.target_noise, config.n_train)
    return ArrayDataset(
        x_train=x_train,
        y_train=y_train.astype(np.float32),
        x_test=x_test,
        y_test=y_test.astype(np.float32),
        num_classes=REGRESSION_OUTPUTS,
        task=TaskType.regression,
        input_shape=(config.channels, config.image_size, config.image_size),
    ).validate()
