"""Audits on real data with real training: calibration, power, the no-op control and store reuse.

Small K and few epochs keep this on a 2-core CPU in well under a minute per test; the statistics asserted
are the ones the issue names (U-LiRA accuracy, AUC intervals, LiRA TPR at 1 % FPR).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.workers.engine.conftest import DIGITS_MLP_CONFIG, DIGITS_RECIPE
from workers.engine.audit.pipeline import (
    AuditRequest,
    forget_sets,
    logit_scaled_confidence,
    pool_memberships,
    run_audit,
)
from workers.engine.audit.store import MemoryShadowStore, ShadowSpec
from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.errors import InvalidInputError
from workers.engine.hooks import RecordingHooks
from workers.engine.metrics.attacks import auc

# Short shadow training: the audit's cost is K + 2 K F models.
AUDIT_RECIPE: dict[str, Any] = {**DIGITS_RECIPE, "epochs": 12}
QUICK_FT = {"epochs": 2, "lr": 0.01, "batch_size": 64, "augment": False}


def _request(
    dataset: ArrayDataset,
    weights: dict[str, np.ndarray],
    forget: np.ndarray,
    params: dict[str, Any],
    *,
    arch_config: dict[str, Any] = DIGITS_MLP_CONFIG,
    recipe: dict[str, Any] = AUDIT_RECIPE,
    seed: int = 0,
    forget_kind: str = "random",
) -> AuditRequest:
    return AuditRequest(
        params=params,
        seed=seed,
        device="cpu",
        dataset=dataset,
        dataset_sha256="digits-test",
        architecture="mlp",
        arch_config=arch_config,
        original_weights=weights,
        original_recipe=recipe,
        forget_indices=forget,
        forget_kind=forget_kind,  # type: ignore[arg-type]
    )


def test_logit_scaled_confidence_is_exact_from_logits() -> None:
    logits = np.array([[[2.0, 0.0, 1.0], [0.0, 50.0, 0.0]]])
    labels = np.array([[0, 1]])
    phi = logit_scaled_confidence(logits, labels)
    p0 = np.exp(2.0) / (np.exp(2.0) + 1.0 + np.exp(1.0))
    assert phi[0, 0] == pytest.approx(np.log(p0) - np.log(1.0 - p0))
    # p_y = 1 - 2e-22 is 1.0 in float64, yet phi = 50 - ln 2 exactly.
    assert phi[0, 1] == pytest.approx(50.0 - np.log(2.0))


def test_pool_split_puts_every_example_in_exactly_half_the_shadows() -> None:
    memberships = pool_memberships(16, 500, seed=3)
    assert memberships.shape == (16, 500)
    assert (memberships.sum(axis=0) == 8).all()
    assert not np.array_equal(memberships, pool_memberships(16, 500, seed=4))


def test_extra_forget_sets_are_random_draws_of_the_same_size(digits: ArrayDataset) -> None:
    first = np.arange(0, 100, dtype=np.int64)
    request = _request(digits, {}, first, {"method": "ft"})
    sets = forget_sets(request, 3, seed=1)
    assert np.array_equal(sets[0], first)
    assert all(s.size == 100 and np.all(np.diff(s) > 0) for s in sets)
    assert not np.array_equal(sets[1], sets[2])
    with pytest.raises(InvalidInputError, match="needs a random forget set"):
        forget_sets(_request(digits, {}, first, {"method": "ft"}, forget_kind="class"), 2, seed=1)


def test_noop_unlearner_is_caught_by_ulira_and_kaggle_while_retrain_is_not(
    digits: ArrayDataset, original_digits_model: Any, random_forget_indices: np.ndarray
) -> None:
    store = MemoryShadowStore()
    common = {"shadows": 8, "attacks": ["ulira", "kaggle"], "n_bootstrap": 100}
    noop = run_audit(
        _request(
            digits,
            original_digits_model.weights,
            random_forget_indices,
            {"method": "identity", **common},
        ),
        store,
    )
    retrain = run_audit(
        _request(
            digits, original_digits_model.weights, random_forget_indices, {"method": "retrain", **common}
        ),
        store,
    )
    print("noop", {k: v for k, v in noop.metrics.items() if "ci" not in k})
    print("retrain", {k: v for k, v in retrain.metrics.items() if "ci" not in k})
    # The no-op keeps what it learned about the forget set: the per-example attack sees it.
    assert noop.metrics["ulira_accuracy"] > 0.6
    assert noop.metrics["ulira_auc_ci_low"] > 0.5
    # Retraining is the definition of forgetting: the attack is at chance (calibration).
    assert retrain.metrics["ulira_auc_ci_low"] <= 0.5 <= retrain.metrics["ulira_auc_ci_high"]
    assert abs(retrain.metrics["ulira_accuracy"] - 0.5) < 0.06
    assert retrain.metrics["kaggle_forgetting_quality"] > noop.metrics["kaggle_forgetting_quality"]
    # The second audit reused the base and retrained shadows of the first.
    assert retrain.details["store"]["base"] == {"reused": 8, "trained": 0}
    assert retrain.details["store"]["retrain"] == {"reused": 8, "trained": 0}
    assert retrain.details["store"]["unlearned"] == {"reused": 0, "trained": 8}


def test_a_repeated_audit_reuses_every_model_and_gives_the_same_figures(
    digits: ArrayDataset, original_digits_model: Any, random_forget_indices: np.ndarray
) -> None:
    store = MemoryShadowStore()
    params = {"method": "ft", "method_params": QUICK_FT, "shadows": 4, "n_bootstrap": 20}
    hooks = RecordingHooks()
    first = run_audit(
        _request(digits, original_digits_model.weights, random_forget_indices, params), store, hooks
    )
    second = run_audit(_request(digits, original_digits_model.weights, random_forget_indices, params), store)
    # base, retrain, pool, unlearned pipelines, the released Kaggle runs and the Kaggle calibration retrains.
    assert first.metrics["models_trained"] == 6 * 4 and first.metrics["models_reused"] == 0
    assert second.metrics["models_trained"] == 0 and second.metrics["models_reused"] == 6 * 4
    figures = [k for k in first.metrics if k not in ("models_trained", "models_reused")]
    assert figures and all(first.metrics[k] == second.metrics[k] for k in figures)
    assert {"ulira", "kaggle", "lira", "rmia"} <= set(first.details["attacks"])
    _assert_arrays_reproduce_the_reports(first, random_forget_indices, digits)
    # The audit's environment is every job's: device and library versions, sklearn included.
    import sklearn
    import torch

    assert first.environment["sklearn"] == sklearn.__version__
    assert first.environment["torch"] == torch.__version__ and first.environment["numpy"] == np.__version__
    assert {"device", "device_name", "python", "threads", "deterministic"} <= set(first.environment)
    # Progress covers every pipeline and ends at the total.
    stages = {call[3]["stage"] for call in hooks.progress_calls}
    assert {"base", "retrain", "pool", "unlearned", "unlearned_original", "calibration"} <= stages
    assert {"predict", "attacks"} <= stages
    last = hooks.progress_calls[-1]
    assert last[1] == last[2]
    # A different seed is a different audit: nothing reused.
    third = run_audit(
        _request(digits, original_digits_model.weights, random_forget_indices, params, seed=1), store
    )
    assert third.metrics["models_reused"] == 0
    # Every stored model is keyed by the device type it trained on (CUDA trains under bf16 autocast): an
    # audit on another device of the same tenant trains its own instead of reusing these.
    assert {spec.material["device_type"] for spec in store.specs.values()} == {"cpu"}
    spec = next(iter(store.specs.values()))
    moved = ShadowSpec(spec.role, {**spec.material, "device_type": "cuda"})
    assert moved.key != spec.key


def _assert_arrays_reproduce_the_reports(result: Any, forget: np.ndarray, dataset: ArrayDataset) -> None:
    """Per-example U-LiRA, LiRA and RMIA scores are in the arrays, with their cluster ids, and give back the
    reported AUCs; every pooled attack's interval is the two-way cluster bootstrap."""
    arrays, attacks = result.arrays, result.details["attacks"]
    shadows = result.details["shadows"]
    test = np.arange(dataset.n_train, dataset.n_train + dataset.n_test)

    def recomputed(prefix: str) -> float:
        members, nonmembers = arrays[f"{prefix}_member_scores"], arrays[f"{prefix}_nonmember_scores"]
        labels = np.concatenate([np.ones(members.size, bool), np.zeros(nonmembers.size, bool)])
        return auc(np.concatenate([members, nonmembers]), labels)

    assert recomputed("ulira") == pytest.approx(attacks["ulira"]["auc"]["value"])
    assert np.array_equal(arrays["ulira_pipeline_ids"], np.repeat(np.arange(shadows), forget.size))
    assert np.array_equal(arrays["ulira_example_ids"], np.tile(forget, shadows))
    for target, models in (("original", 1), ("unlearned", shadows)):
        assert np.array_equal(
            arrays[f"trials_{target}_member_model_ids"], np.repeat(np.arange(models), forget.size)
        )
        assert np.array_equal(arrays[f"trials_{target}_member_example_ids"], np.tile(forget, models))
        assert np.array_equal(arrays[f"trials_{target}_nonmember_example_ids"], np.tile(test, models))
        for variant in ("online", "online_fixed", "offline", "offline_fixed"):
            report = attacks["lira"][variant][target]
            assert recomputed(f"lira_{variant}_{target}") == pytest.approx(report["auc"]["value"])
        assert recomputed(f"rmia_{target}") == pytest.approx(attacks["rmia"][target]["auc"]["value"])
        assert arrays[f"rmia_{target}_member_scores"].size == models * forget.size
    for report in (attacks["ulira"], attacks["lira"]["online"]["unlearned"], attacks["rmia"]["unlearned"]):
        assert report["interval"]["method"] == "two-way cluster bootstrap (pipelines x examples)"
        assert report["interval"]["clusters"]["pipelines"] == shadows
    assert attacks["ulira"]["interval"]["clusters"]["shared_examples"] == forget.size
    # RMIA's a was tuned on test points the pseudo-target shadow did not train on.
    tuning = attacks["rmia"]["tuning"]
    assert 0 < tuning["population_size"] < dataset.n_test


def test_lira_has_power_against_a_model_that_memorised_noisy_labels() -> None:
    dataset = build_dataset(
        "procedural",
        {
            "n_train": 1000,
            "n_test": 1000,
            "channels": 1,
            "image_size": 8,
            "label_noise": 0.2,
            "noise_std": 0.3,
        },
    )
    from workers.engine.execute import EngineRequest, execute

    config = {"input_shape": [1, 8, 8], "hidden": [256]}
    recipe = {**DIGITS_RECIPE, "epochs": 40}
    original = execute(
        EngineRequest(
            kind="train",
            method="train",
            params={"recipe": recipe},
            seed=0,
            device="cpu",
            dataset=dataset,
            architecture="mlp",
            arch_config=config,
        )
    )
    forget = np.sort(np.random.default_rng(0).choice(dataset.n_train, size=200, replace=False))
    result = run_audit(
        _request(
            dataset,
            original.weights,
            forget,
            {
                "method": "ft",
                "method_params": QUICK_FT,
                "shadows": 16,
                "attacks": ["lira"],
                "n_bootstrap": 50,
            },
            arch_config=config,
            recipe=recipe,
        ),
        MemoryShadowStore(),
    )
    print({k: v for k, v in result.metrics.items() if "ci" not in k})
    assert result.metrics["lira_original_tpr_at_1pct_fpr"] > 0.05
    assert result.metrics["lira_original_auc"] > 0.6
