"""Cluster bootstrap of pooled (model x example) attack trials: exactness of the weighted statistics and
coverage of the intervals in a simulation with known random effects and a known true AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from workers.engine.metrics.attacks import (
    CLUSTER_METHODS,
    TrialClusters,
    _statistics,
    attack_report,
    cluster_bootstrap,
    cluster_weights,
    weighted_statistics,
)

# Simulation: M models x E examples, a member and a non-member trial at every crossing (as U-LiRA: the
# same pipeline and forget example hold both). score = class shift + model effect + example effect + noise,
# effects drawn independently per class, so a member and a non-member trial compare like independent draws
# and the true AUC is Phi(shift / sqrt(2 (s_model^2 + s_example^2 + s_noise^2))).
MODELS, EXAMPLES = 16, 24
MODEL_SD, EXAMPLE_SD, NOISE_SD, SHIFT = 0.7, 0.7, 1.2, 1.0
TRUE_AUC = float(norm.cdf(SHIFT / math.sqrt(2.0 * (MODEL_SD**2 + EXAMPLE_SD**2 + NOISE_SD**2))))
REPETITIONS = 200
REPLICATES = 200


def _grid_clusters() -> TrialClusters:
    models = np.repeat(np.arange(MODELS), EXAMPLES)
    examples = np.tile(np.arange(EXAMPLES), MODELS)
    return TrialClusters(models, examples, models, examples)


def _simulate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    def side(shift: float) -> np.ndarray:
        model = rng.normal(0.0, MODEL_SD, MODELS)[:, None]
        example = rng.normal(0.0, EXAMPLE_SD, EXAMPLES)[None, :]
        noise = rng.normal(0.0, NOISE_SD, (MODELS, EXAMPLES))
        values: np.ndarray = (shift + model + example + noise).ravel()
        return values

    return side(SHIFT), side(0.0)


def test_weighted_statistics_equal_the_statistics_of_the_repeated_resample() -> None:
    rng = np.random.default_rng(1)
    # Rounded scores: ties across classes exercise the tie handling too.
    members = np.round(rng.normal(1.0, 1.0, 40), 1)
    nonmembers = np.round(rng.normal(0.0, 1.0, 300), 1)
    member_weights = rng.integers(0, 4, (5, 40)).astype(np.float64)
    nonmember_weights = rng.integers(0, 4, (5, 300)).astype(np.float64)
    alphas = (0.01, 0.1)
    stats = weighted_statistics(
        members, nonmembers, member_weights, nonmember_weights, alphas=alphas, decision_threshold=0.5
    )
    for b in range(5):
        expected = _statistics(
            np.repeat(members, member_weights[b].astype(int)),
            np.repeat(nonmembers, nonmember_weights[b].astype(int)),
            alphas,
            0.5,
        )
        for key, value in expected.items():
            assert stats[key][b] == pytest.approx(value, abs=1e-12), (key, b)
    # A replicate in which a class weighs nothing has no statistics.
    empty = weighted_statistics(members, nonmembers, np.zeros((1, 40)), np.ones((1, 300)))
    assert np.isnan(empty["auc"][0])


def test_two_way_weights_are_the_crossing_of_resampled_models_and_examples() -> None:
    clusters = _grid_clusters()
    member_weights, nonmember_weights = cluster_weights(clusters, "two-way", np.random.default_rng(0), 50)
    grid = member_weights.reshape(50, MODELS, EXAMPLES)
    # Rank one per replicate: (model draws) outer (example draws); M models and E examples drawn.
    model_draws = grid.sum(axis=2) / EXAMPLES
    example_draws = grid.sum(axis=1) / MODELS
    assert np.allclose(grid, model_draws[:, :, None] * example_draws[:, None, :])
    assert np.allclose(model_draws.sum(axis=1), MODELS)
    assert np.allclose(example_draws.sum(axis=1), EXAMPLES)
    # Shared clusters move together: a member and a non-member trial at the same crossing weigh the same.
    assert np.array_equal(member_weights, nonmember_weights)
    iid_members, iid_nonmembers = cluster_weights(clusters, "iid", np.random.default_rng(0), 50)
    assert np.allclose(iid_members.sum(axis=1), MODELS * EXAMPLES)
    assert not np.array_equal(iid_members, iid_nonmembers)


def test_disjoint_examples_are_resampled_within_their_class() -> None:
    # LiRA against K models: members are forget examples, non-members test examples, models are shared.
    models = np.repeat(np.arange(4), 5)
    clusters = TrialClusters(models, np.tile(np.arange(5), 4), models, np.tile(np.arange(100, 105), 4))
    member_weights, nonmember_weights = cluster_weights(clusters, "two-way", np.random.default_rng(3), 40)
    # Every replicate keeps 4 models x 5 examples per class: neither class can vanish.
    assert np.allclose(member_weights.sum(axis=1), 20) and np.allclose(nonmember_weights.sum(axis=1), 20)
    assert clusters.counts() == {
        "pipelines": 4,
        "member_examples": 5,
        "nonmember_examples": 5,
        "shared_examples": 0,
    }


def test_cluster_intervals_cover_the_true_auc_and_iid_intervals_do_not() -> None:
    rng = np.random.default_rng(2026)
    clusters = _grid_clusters()
    covered = {"two-way": 0, "iid": 0}
    widths: dict[str, list[float]] = {"two-way": [], "iid": []}
    for repetition in range(REPETITIONS):
        members, nonmembers = _simulate(rng)
        for method in covered:
            intervals, used = cluster_bootstrap(
                members, nonmembers, clusters, method=method, n_bootstrap=REPLICATES, seed=repetition
            )
            assert used == REPLICATES
            low, high = intervals["auc"]
            covered[method] += low <= TRUE_AUC <= high
            widths[method].append(high - low)
    coverage = {method: count / REPETITIONS for method, count in covered.items()}
    print("true AUC", TRUE_AUC, "coverage", coverage, {m: float(np.mean(w)) for m, w in widths.items()})
    assert coverage["two-way"] >= 0.90
    assert coverage["iid"] < 0.80
    assert np.mean(widths["two-way"]) > 2.0 * np.mean(widths["iid"])


def test_attack_report_names_the_interval_method() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = _simulate(rng)
    clustered = attack_report(
        members, nonmembers, alphas=(), n_bootstrap=50, seed=0, clusters=_grid_clusters()
    )
    assert clustered["interval"] == {
        "method": CLUSTER_METHODS["two-way"],
        "n_bootstrap": 50,
        "confidence_level": 0.95,
        "clusters": {
            "pipelines": MODELS,
            "member_examples": EXAMPLES,
            "nonmember_examples": EXAMPLES,
            "shared_examples": EXAMPLES,
        },
        "n_bootstrap_used": 50,
    }
    plain = attack_report(members, nonmembers, alphas=(), n_bootstrap=50, seed=0)
    assert plain["interval"]["method"].startswith("percentile bootstrap over trials")
    assert plain["auc"]["value"] == clustered["auc"]["value"]
    clustered_width = clustered["auc"]["ci_high"] - clustered["auc"]["ci_low"]
    assert clustered_width > plain["auc"]["ci_high"] - plain["auc"]["ci_low"]
    with pytest.raises(ValueError, match="cluster ids"):
        attack_report(
            members,
            nonmembers,
            n_bootstrap=10,
            clusters=TrialClusters(np.zeros(3, int), np.zeros(3, int), np.zeros(3, int), np.zeros(3, int)),
        )
