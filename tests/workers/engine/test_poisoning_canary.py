"""The poisoning canary (workers.engine.datasets.poisoned): the construction is exact (the poisoned points are
``poison_indices``, only they differ from digits, every label moved to another class, the noise has the
configured scale), and on digits the canary separates a no-op from the retrain: the untouched model fits the
poison labels it memorised, the model retrained without the poisoned points does not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.workers.engine.conftest import DIGITS_MLP_CONFIG, DIGITS_RECIPE
from workers.engine.datasets import build_dataset
from workers.engine.datasets.poisoned import poison_count, poison_indices
from workers.engine.errors import InvalidInputError

CONFIG = {"fraction": 0.03, "sigma": 0.5, "seed": 0}


def test_construction_is_exact_and_deterministic() -> None:
    clean = build_dataset("digits")
    poisoned = build_dataset("gaussian_poisoned", CONFIG)
    n = clean.y_train.size
    indices = poison_indices(n, CONFIG["fraction"], CONFIG["seed"])
    assert indices.size == poison_count(n, 0.03) == round(0.03 * n) == 43
    changed = np.flatnonzero(
        (poisoned.y_train != clean.y_train) | np.any(poisoned.x_train != clean.x_train, axis=(1, 2, 3))
    )
    np.testing.assert_array_equal(changed, indices)  # only the poisoned points differ...
    assert np.all(poisoned.y_train[indices] != clean.y_train[indices])  # ...each with another class
    noise = (poisoned.x_train[indices] - clean.x_train[indices]) / CONFIG["sigma"]
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05  # N(0, 1), 2752 draws
    np.testing.assert_array_equal(poisoned.x_test, clean.x_test)
    np.testing.assert_array_equal(poisoned.y_test, clean.y_test)
    again = build_dataset("gaussian_poisoned", CONFIG)
    np.testing.assert_array_equal(again.x_train, poisoned.x_train)
    other = build_dataset("gaussian_poisoned", {**CONFIG, "seed": 1})
    assert not np.array_equal(poison_indices(n, 0.03, 1), indices) and other.y_train.size == n
    with pytest.raises(InvalidInputError):
        build_dataset("gaussian_poisoned", {"fraction": 0.9})
    with pytest.raises(InvalidInputError):
        build_dataset("gaussian_poisoned", {"base_config": {"test_fraction": 0.99}})


def test_the_canary_separates_a_no_op_from_the_retrain_on_digits() -> None:
    from workers.engine.execute import EngineRequest, execute

    dataset = build_dataset("gaussian_poisoned", CONFIG)
    poison = poison_indices(dataset.y_train.size, CONFIG["fraction"], CONFIG["seed"])
    base = {
        "seed": 0,
        "device": "cpu",
        "dataset": dataset,
        "architecture": "mlp",
        "arch_config": DIGITS_MLP_CONFIG,
    }
    original = execute(EngineRequest(kind="train", method="train", params={"recipe": DIGITS_RECIPE}, **base))
    common = {"weights": original.weights, "forget_indices": poison, "original_recipe": DIGITS_RECIPE}
    fit = {}  # the poison fit: accuracy on the poisoned points with their poison labels = 100 - UA
    for name, kind in (("identity", "unlearn"), ("retrain", "retrain")):
        result = execute(EngineRequest(kind=kind, method=name, params={}, **base, **common))
        fit[name] = 100.0 - result.metrics["UA"]
        assert result.metrics["TA"] > 90  # both are good digit classifiers: only the poison differs
    # Measured: identity 97.7 %, retrain 7.0 % (a noisy input read as its one poison class).
    assert fit["identity"] >= 85.0 and fit["retrain"] <= 20.0, fit
    assert fit["identity"] - fit["retrain"] >= 60.0, fit
