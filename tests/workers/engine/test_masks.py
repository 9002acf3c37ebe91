"""Sparsity masks: enforced through every method step and reused by the retrain of a pruned model."""

from __future__ import annotations

import numpy as np
import pytest

from tests.workers.engine.test_execute import _request
from workers.engine.datasets import ArrayDataset
from workers.engine.execute import EngineResult, execute


@pytest.fixture(scope="module")
def original(digits: ArrayDataset) -> EngineResult:
    return execute(_request(digits))


@pytest.fixture(scope="module")
def masks(original: EngineResult) -> dict[str, np.ndarray]:
    assert original.weights is not None
    names = [k for k, v in original.weights.items() if v.ndim == 2]
    rng = np.random.default_rng(0)
    return {name: (rng.random(original.weights[name].shape) < 0.5).astype(np.uint8) for name in names}


def _assert_masked(result: EngineResult, masks: dict[str, np.ndarray]) -> None:
    assert result.weights is not None and result.masks is not None
    for name, mask in masks.items():
        assert np.array_equal(result.masks[name], mask)
        assert np.all(result.weights[name][mask == 0] == 0.0)
        assert np.any(result.weights[name][mask == 1] != 0.0)


def test_ft_keeps_masked_weights_at_zero(digits, original, masks) -> None:
    forget = np.arange(0, 100, dtype=np.int64)
    result = execute(
        _request(
            digits,
            kind="unlearn",
            method="ft",
            params={"epochs": 2, "batch_size": 64},
            weights=original.weights,
            forget_indices=forget,
            masks=masks,
        )
    )
    _assert_masked(result, masks)


def test_retrain_of_a_pruned_model_reuses_the_mask(digits, masks) -> None:
    forget = np.arange(0, 100, dtype=np.int64)
    result = execute(
        _request(
            digits,
            kind="retrain",
            method="retrain",
            params={"recipe": {"epochs": 2}},
            forget_indices=forget,
            masks=masks,
        )
    )
    _assert_masked(result, masks)


def test_dense_models_have_no_masks(original) -> None:
    assert original.masks is None


def test_mask_shape_is_validated(digits, original, masks) -> None:
    from workers.engine.errors import InvalidInputError

    name = next(iter(masks))
    bad = {name: np.ones((3, 3), dtype=np.uint8)}
    with pytest.raises(InvalidInputError, match="shape"):
        execute(
            _request(
                digits,
                kind="evaluate",
                method=None,
                params={},
                weights=original.weights,
                forget_indices=np.arange(10, dtype=np.int64),
                masks=bad,
            )
        )
