"""The Kaggle ε score in an audit: the released protocol (N unlearning runs of one original model), N and the
points cap next to the score, the small-N warning, and the retrain-vs-retrain ceiling that a perfect method
(``retrain``) reaches at the same N."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.workers.engine.audit.test_pipeline import _request
from workers.engine.audit.params import AuditParams
from workers.engine.audit.pipeline import run_audit
from workers.engine.audit.store import MemoryShadowStore, weights_digest
from workers.engine.datasets import ArrayDataset
from workers.engine.metrics.kaggle import points_cap

N = 8
KAGGLE_ONLY = {"shadows": N, "attacks": ["kaggle"]}


def test_released_protocol_is_the_default_and_retrain_reaches_the_ceiling(
    digits: ArrayDataset, original_digits_model: Any, random_forget_indices: np.ndarray
) -> None:
    assert AuditParams(method="ft").kaggle_protocol == "released"
    store = MemoryShadowStore()
    retrain = run_audit(
        _request(
            digits, original_digits_model.weights, random_forget_indices, {"method": "retrain", **KAGGLE_ONLY}
        ),
        store,
    )
    noop = run_audit(
        _request(
            digits,
            original_digits_model.weights,
            random_forget_indices,
            {"method": "identity", **KAGGLE_ONLY},
        ),
        store,
    )
    kaggle = retrain.details["attacks"]["kaggle"]
    print("retrain", retrain.metrics, "noop", noop.metrics)
    # Released protocol: no base models, N runs of the method on the original model, N retrains, N more
    # retrains for the ceiling.
    assert set(retrain.details["store"]) == {"retrain", "calibration", "unlearned_original"}
    assert retrain.details["store"]["unlearned_original"] == {"reused": 0, "trained": N}
    assert kaggle["protocol"] == "released" and "original model" in kaggle["protocol_description"]
    # N and the cap sit next to every score: the headline, each forget set, the calibration.
    for entry in (kaggle, *kaggle["per_forget_set"], kaggle["calibration"]):
        assert entry["n_models"] == N and entry["points_cap"] == points_cap(N) == 2.0
    assert retrain.metrics["kaggle_n_models"] == N and retrain.metrics["kaggle_points_cap"] == 2.0
    assert len(kaggle["warnings"]) == 1 and "N = 8" in kaggle["warnings"][0]
    assert retrain.details["warnings"] == kaggle["warnings"]
    # At N = 8 even retraining scores far below 1: read alone, it would look like poor forgetting ...
    ceiling = retrain.metrics["kaggle_ceiling_forgetting_quality"]
    assert ceiling < 0.5
    # ... but it reaches the ceiling attainable at this N (within noise), while the no-op scores nothing.
    assert retrain.metrics["kaggle_forgetting_quality_vs_ceiling"] == pytest.approx(1.0, abs=0.2)
    assert noop.metrics["kaggle_forgetting_quality"] == 0.0
    assert noop.metrics["kaggle_forgetting_quality_vs_ceiling"] == 0.0
    # The ceiling is the same for every method audited on these inputs (retrains reused from the store).
    assert noop.metrics["kaggle_ceiling_forgetting_quality"] == ceiling
    assert noop.details["store"]["calibration"] == {"reused": N, "trained": 0}
    assert len(retrain.arrays["kaggle_calibration_epsilons_0"]) == random_forget_indices.size


def test_pipelines_protocol_unlearns_the_base_models_and_calibration_can_be_off(
    digits: ArrayDataset, original_digits_model: Any, random_forget_indices: np.ndarray
) -> None:
    params = {
        "method": "identity",
        **KAGGLE_ONLY,
        "shadows": 4,
        "kaggle_protocol": "pipelines",
        "kaggle_calibration": False,
    }
    result = run_audit(
        _request(digits, original_digits_model.weights, random_forget_indices, params), MemoryShadowStore()
    )
    kaggle = result.details["attacks"]["kaggle"]
    assert set(result.details["store"]) == {"base", "retrain", "unlearned"}
    assert kaggle["protocol"] == "pipelines" and kaggle["calibration"] is None
    assert "kaggle_ceiling_forgetting_quality" not in result.metrics
    assert kaggle["n_models"] == 4 and kaggle["points_cap"] == points_cap(4)
    assert len(kaggle["per_forget_set"]) == 1
    assert result.metrics["kaggle_score"] == kaggle["per_forget_set"][0]["score"]
    assert len(result.arrays["kaggle_epsilons_0"]) == random_forget_indices.size


def test_original_weights_digest_names_the_weights() -> None:
    weights = {"a": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32)}
    assert weights_digest(weights) == weights_digest(dict(reversed(list(weights.items()))))
    assert weights_digest(weights) != weights_digest({**weights, "b": np.full(3, 2.0, np.float32)})
    assert weights_digest(weights) != weights_digest({**weights, "b": np.ones((1, 3), np.float32)})
