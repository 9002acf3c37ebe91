"""Which per-example regression score is closest to Gaussian across shadow models, and which gives LiRA the
most power: the experiment behind ``workers.engine.metrics.regression_scores``.

K shadows train on random halves of the pool (train + test, each example IN for exactly K/2 of them, as the
audit's ``pool`` stage). For each candidate score we report, per example and per side (IN / OUT shadows):
the median |skewness| and the share of examples whose K/2 samples Shapiro-Wilk rejects at 5 % (about 5 %
for Gaussian samples); then leave-one-shadow-out online LiRA (each shadow in turn is the target, the others
fit the Gaussians): AUC and TPR at 1 % FPR pooled over targets.

Run: ``.venv/bin/python bench/audit_regression_phi.py [--shadows 32]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import shapiro, skew

from workers.engine.audit.pipeline import pool_memberships
from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.methods.params import TrainRecipe
from workers.engine.metrics.attacks import auc
from workers.engine.metrics.lira import lira_online
from workers.engine.metrics.rmia import rmia_offline
from workers.engine.task_types import TaskType
from workers.engine.vectorised import predict_models, train_models

SHAPIRO_LEVEL = 0.05
FPR = 0.01
SETUPS: dict[str, tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any]]] = {
    # Real tabular data: large irreducible noise, so errors sit far from 0 for most examples.
    "diabetes": (
        "diabetes",
        {},
        "mlp_regressor",
        {"input_shape": [10], "hidden": [64, 64]},
        {"epochs": 60, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "schedule": "cosine", "augment": False},
    ),
    # Noisy train targets a model can memorise: IN errors near 0, where |e| folds.
    "procedural_regression": (
        "procedural_regression",
        {"n_train": 300, "n_test": 300, "channels": 1, "image_size": 8, "target_noise": 10.0},
        "mlp_regressor",
        {"input_shape": [1, 8, 8], "hidden": [256]},
        {"epochs": 80, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "schedule": "cosine", "augment": False},
    ),
}


def candidates(errors: np.ndarray, scales: np.ndarray) -> dict[str, np.ndarray]:
    """errors: (K, N) |prediction - target|; scales: (K, 1) each model's MAE on its OUT points."""
    ratio = errors / scales
    tail = np.exp(-ratio)
    return {
        "-|e|": -errors,
        "-|e|/b": -ratio,
        "-sqrt|e|": -np.sqrt(errors),
        "-|e|^(2/3)": -(errors ** (2.0 / 3.0)),
        "-ln|e|": -np.log(np.maximum(errors, 1e-9)),
        "logit exp(-|e|/b)": np.log(tail) - np.log1p(-np.minimum(tail, 1 - 1e-12)),
    }


def side_statistics(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    skews, rejected = [], []
    for column in range(values.shape[1]):
        sample = values[mask[:, column], column]
        skews.append(abs(float(skew(sample))))
        rejected.append(shapiro(sample).pvalue < SHAPIRO_LEVEL)
    return float(np.median(skews)), float(np.mean(rejected))


def lira_power(values: np.ndarray, memberships: np.ndarray) -> tuple[float, float]:
    members, nonmembers = [], []
    for target in range(values.shape[0]):
        others = np.arange(values.shape[0]) != target
        scores = lira_online(values[target], values[others], memberships[others], fixed_variance=False)
        members.append(scores[memberships[target]])
        nonmembers.append(scores[~memberships[target]])
    member, nonmember = np.concatenate(members), np.concatenate(nonmembers)
    threshold = np.quantile(nonmember, 1.0 - FPR)
    labels = np.concatenate([np.ones(member.size, bool), np.zeros(nonmember.size, bool)])
    return auc(np.concatenate([member, nonmember]), labels), float(np.mean(member > threshold))


def rmia_power(errors: np.ndarray, memberships: np.ndarray, n_train: int, scales: np.ndarray) -> float:
    """Leave-one-shadow-out offline RMIA (a = 1: P(x) = the mean over OUT references) with Pr(x | θ) =
    exp(-|e| / b_θ); population = the test points the target did not train on. Pooled AUC over targets."""
    probability = np.exp(-errors / scales)
    members, nonmembers = [], []
    test = np.arange(errors.shape[1]) >= n_train
    for target in range(errors.shape[0]):
        others = np.arange(errors.shape[0]) != target
        out = ~memberships[others]
        population = np.flatnonzero(test & ~memberships[target] & out.any(axis=0))
        scores = rmia_offline(
            probability[target],
            probability[others],
            probability[target, population],
            probability[others][:, population],
            a=1.0,
            reference_mask=out,
            population_mask=out[:, population],
        )
        members.append(scores[memberships[target]])
        nonmembers.append(scores[~memberships[target]])
    member, nonmember = np.concatenate(members), np.concatenate(nonmembers)
    labels = np.concatenate([np.ones(member.size, bool), np.zeros(nonmember.size, bool)])
    return auc(np.concatenate([member, nonmember]), labels)


def run(name: str, shadows: int, report: Callable[[str], None]) -> None:
    dataset_name, dataset_config, architecture, config, recipe = SETUPS[name]
    dataset: ArrayDataset = build_dataset(dataset_name, dataset_config)
    inputs = torch.from_numpy(np.concatenate([dataset.x_train, dataset.x_test]))
    targets = np.concatenate([dataset.y_train, dataset.y_test]).astype(np.float64)
    labels = torch.from_numpy(targets.astype(np.float32))
    memberships = pool_memberships(shadows, targets.size, seed=0)
    started = time.perf_counter()
    states = train_models(
        architecture,
        config,
        inputs,
        labels,
        [np.flatnonzero(row) for row in memberships],
        TrainRecipe.model_validate(recipe),
        list(range(shadows)),
        task=TaskType.regression,
    )
    predictions = predict_models(architecture, config, states, inputs)
    errors = np.abs(predictions - targets[None, :])
    held_out_test = ~memberships & (np.arange(targets.size) >= dataset.n_train)
    scales = np.array([[errors[k, held_out_test[k]].mean()] for k in range(shadows)])
    report(
        f"\n{name}: K = {shadows}, pool {targets.size}, {time.perf_counter() - started:.0f} s; mean |e| IN "
        f"{errors[memberships].mean():.2f}, OUT {errors[~memberships].mean():.2f}"
    )
    report(
        f"{'score':>20} | {'|skew| IN':>9} {'SW rej IN':>9} | {'|skew| OUT':>10} {'SW rej OUT':>10} |"
        f" {'LiRA AUC':>8} {'TPR@1%':>7}"
    )
    for label, values in candidates(errors, scales).items():
        skew_in, reject_in = side_statistics(values, memberships)
        skew_out, reject_out = side_statistics(values, ~memberships)
        area, tpr = lira_power(values, memberships)
        report(
            f"{label:>20} | {skew_in:9.2f} {reject_in:9.2f} | {skew_out:10.2f} {reject_out:10.2f} |"
            f" {area:8.3f} {tpr:7.3f}"
        )
    for label, rmia_scales in (
        ("each model's own MAE on its OUT test points", scales),
        ("one scale for all models (their mean)", np.full_like(scales, scales.mean())),
    ):
        area = rmia_power(errors, memberships, dataset.n_train, rmia_scales)
        report(f"RMIA (a = 1) AUC, Laplace scale = {label}: {area:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shadows", type=int, default=32)
    parser.add_argument("--setups", nargs="*", default=list(SETUPS))
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for name in arguments.setups:
        run(name, arguments.shadows, print)


if __name__ == "__main__":
    main()
