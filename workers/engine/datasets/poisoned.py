"""The poisoning canary: a built-in classification dataset with a known fraction of Gaussian-poisoned training
points, to be placed in the forget set so that whether an unlearning removed their influence is measurable.

Construction (numpy, deterministic in the config), from the base dataset's train split of n samples with C
classes and inputs in [0, 1] (float32):

1. the poisoned indices P: ``round(fraction * n)`` (at least 1) distinct train indices drawn without
   replacement by ``numpy.random.default_rng(seed)``, sorted (:func:`poison_indices`, torch-free: the API
   computes the canary forget set from the config alone);
2. for each i in P, with the same generator after step 1: the input is perturbed by Gaussian noise,
   x_i <- x_i + sigma * xi_i with xi_i ~ N(0, I) (not clipped: the perturbation is the canary's signature),
   and the label is replaced by a uniformly random *other* class, y_i <- (y_i + r_i) mod C, r_i uniform in
   {1, ..., C - 1};
3. the test split is left as it is.

A model trained on these points can only fit them by memorising them: nothing else in the data predicts a
noisy input's random label. The canary's effect is the **poison fit**: the accuracy on P with the assigned
(poison) labels, i.e. 100 - UA when the forget set is exactly P. A model retrained without P fits them at
about the rate at which it mistakes a noisy input for that one other class (a few %), the original at the
rate it memorised them; an unlearning removed the poison's influence when its poison fit is close to the
retrain's, and a no-op keeps the original's.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.engine.datasets.arrays import ArrayDataset
from workers.engine.datasets.digits import MAX_SEED, DigitsConfig, build_digits
from workers.engine.errors import InvalidInputError

# The bases a canary can be built on, one entry each. Only small float datasets for now: the size check of
# built-in datasets (app.services.ops.quotas) reads top-level size fields, which a nested config would hide.
BASES = {"digits": (DigitsConfig, build_digits)}


class PoisonedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: Literal["digits"] = Field(default="digits", description="The dataset the canary is built on.")
    base_config: dict[str, object] = Field(default_factory=dict, description="The base dataset's config.")
    fraction: float = Field(
        default=0.03,
        gt=0,
        le=0.5,
        allow_inf_nan=False,
        description="Fraction of the train split that is poisoned (at least one sample).",
    )
    sigma: float = Field(
        default=0.5,
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="Standard deviation of the Gaussian noise added to each poisoned input (inputs lie in"
        " [0, 1]).",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the poisoned points and noise.")

    @field_validator("base_config")
    @classmethod
    def _base_config(cls, value: dict[str, object]) -> dict[str, object]:
        # Validated here so that a bad base config is a 422 at creation; digits is the only base so far.
        return dict(DigitsConfig.model_validate(value).model_dump(mode="json"))


def poison_count(n_train: int, fraction: float) -> int:
    return min(n_train, max(1, round(fraction * n_train)))


def poison_indices(n_train: int, fraction: float, seed: int) -> np.ndarray:
    """The poisoned train indices P, sorted (step 1 of the construction)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=poison_count(n_train, fraction), replace=False)).astype(np.int64)


def build_poisoned(config: PoisonedConfig) -> ArrayDataset:
    config_model, build = BASES[config.base]
    base = build(config_model.model_validate(config.base_config))
    if base.x_train.dtype != np.float32:
        raise InvalidInputError(f"the {config.base} base must have float inputs to be poisoned")
    n_train = int(base.y_train.shape[0])
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(n_train, size=poison_count(n_train, config.fraction), replace=False))
    assert np.array_equal(chosen, poison_indices(n_train, config.fraction, config.seed))
    x_train = base.x_train.copy()
    y_train = base.y_train.copy()
    noise = rng.standard_normal(size=(chosen.size, *x_train.shape[1:])).astype(np.float32)
    x_train[chosen] += np.float32(config.sigma) * noise
    shifts = rng.integers(1, base.num_classes, size=chosen.size)
    y_train[chosen] = (y_train[chosen] + shifts) % base.num_classes
    return ArrayDataset(
        x_train=x_train,
        y_train=y_train,
        x_test=base.x_test,
        y_test=base.y_test,
        num_classes=base.num_classes,
        task=base.task,
        input_shape=base.input_shape,
    ).validate()
