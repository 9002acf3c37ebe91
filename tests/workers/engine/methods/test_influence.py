"""``iu`` on the digits MLP: the reference's rank-1 WoodFisher product, exact curvature products, CG/LiSSA
solves, and forgetting a class through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.workers.engine.methods.test_methods_on_digits import _evaluate_original, _request
from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.build import build_model, load_weights
from workers.engine.datasets import ArrayDataset
from workers.engine.execute import EngineResult, execute
from workers.engine.methods.influence import (
    CurvatureOperator,
    conjugate_gradient,
    flatten,
    influence_direction,
    largest_eigenvalue,
    lissa,
    summed_gradient,
    woodfisher_reference,
)

# Bounds for forgetting digit "3" (accuracy points; the original has ~100 % forget and ~99.6 % retain).
FORGET_ACCURACY_MAX = 30.0
RETAIN_DROP_MAX = 5.0
CG_RESIDUAL_MAX = 1e-4


@pytest.fixture(scope="module")
def setup(
    digits: ArrayDataset, class_forget_indices: np.ndarray, original_digits_model: EngineResult
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    details = original_digits_model.details
    model = build_model(details["architecture"], details["arch_config"])
    assert original_digits_model.weights is not None
    expected = ARCHITECTURES.get(details["architecture"]).expected_state(details["arch_config"])
    load_weights(model, original_digits_model.weights, expected)
    model.eval()
    retain = np.setdiff1d(np.arange(digits.n_train), class_forget_indices)
    x = torch.from_numpy(digits.x_train)
    y = torch.from_numpy(digits.y_train)
    return model, x[class_forget_indices], y[class_forget_indices], x[retain], y[retain]


def test_summed_gradient_is_the_sum_of_per_sample_gradients(setup) -> None:
    model, forget_x, forget_y, _, _ = setup
    summed, _ = summed_gradient(model, forget_x[:10], forget_y[:10], batch_size=3)
    one_by_one = sum(
        flatten(
            torch.autograd.grad(
                F.cross_entropy(model(forget_x[i : i + 1]), forget_y[i : i + 1]), list(model.parameters())
            )
        )
        for i in range(10)
    )
    assert torch.allclose(summed, one_by_one, atol=1e-6)


def test_reference_woodfisher_is_a_rank_one_correction_along_the_first_retain_gradient(setup) -> None:
    model, forget_x, forget_y, retain_x, retain_y = setup
    g_f, _ = summed_gradient(model, forget_x, forget_y, 256)
    g_r, _ = summed_gradient(model, retain_x, retain_y, 256)
    v = influence_direction(g_f, g_r, forget_x.shape[0], retain_x.shape[0])
    result = woodfisher_reference(model, retain_x, retain_y, v, n_constant=50)
    assert result.samples == 52  # the reference visits idx 0..N+1
    correction = result.k - v
    assert correction.norm() > 0  # the loop did something ...
    cosine = torch.dot(correction, result.first_gradient) / (correction.norm() * result.first_gradient.norm())
    assert abs(float(cosine)) > 0.9999  # ... but only along g_1
    # k stays close to v: the "inverse Fisher" is nearly the identity.
    assert float((result.k - v).norm() / v.norm()) < 0.5


@pytest.mark.parametrize("kind", ["fisher", "ggn"])
def test_curvature_products_match_the_materialised_matrices(setup, kind: str) -> None:
    _, _, _, retain_x, retain_y = setup
    torch.manual_seed(0)  # a tiny random MLP (610 parameters) so the matrices are small
    model = build_model("mlp", {"input_shape": [1, 8, 8], "hidden": [8]}).eval()
    count, classes = 6, 10
    x, y = retain_x[:count], retain_y[:count]
    parameters = list(model.parameters())
    size = sum(p.numel() for p in parameters)
    matrix = torch.zeros(size, size)
    for i in range(count):
        if kind == "fisher":
            gradient = flatten(
                torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), parameters)
            )
            matrix += torch.outer(gradient, gradient) / count
        else:
            logits = model(x[i : i + 1])[0]
            jacobian = torch.stack(
                [
                    flatten(torch.autograd.grad(logits[c], parameters, retain_graph=True))
                    for c in range(classes)
                ]
            )
            p = F.softmax(logits.detach(), dim=0)
            matrix += jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian / count
    operator = CurvatureOperator(model, x, y, kind, damping=0.1, batch_size=4)
    vector = torch.randn(size, generator=torch.Generator().manual_seed(0))
    expected = matrix @ vector + 0.1 * vector
    assert torch.allclose(operator(vector), expected, rtol=1e-4, atol=1e-6)
    other = torch.randn(size, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(torch.dot(other, operator(vector)), torch.dot(vector, operator(other)), rtol=1e-4)


@pytest.mark.parametrize("kind", ["fisher", "ggn"])
def test_cg_solves_the_damped_system(setup, kind: str) -> None:
    model, forget_x, forget_y, retain_x, retain_y = setup
    g_f, _ = summed_gradient(model, forget_x, forget_y, 256)
    g_r, _ = summed_gradient(model, retain_x, retain_y, 256)
    v = influence_direction(g_f, g_r, forget_x.shape[0], retain_x.shape[0])
    operator = CurvatureOperator(model, retain_x[:400], retain_y[:400], kind, damping=0.01, batch_size=256)
    solved = conjugate_gradient(operator, v, iterations=200, tolerance=1e-6)
    true_residual = float((operator(solved.k) - v).norm() / v.norm())
    assert true_residual < CG_RESIDUAL_MAX
    assert solved.relative_residual < CG_RESIDUAL_MAX
    # A real inverse: far from the (rescaled) identity answer v / damping.
    cosine = torch.dot(solved.k, v) / (solved.k.norm() * v.norm())
    assert float(cosine) < 0.99


def test_lissa_approximates_the_cg_solution(setup) -> None:
    model, forget_x, forget_y, retain_x, retain_y = setup
    g_f, _ = summed_gradient(model, forget_x, forget_y, 256)
    g_r, _ = summed_gradient(model, retain_x, retain_y, 256)
    v = influence_direction(g_f, g_r, forget_x.shape[0], retain_x.shape[0])
    operator = CurvatureOperator(model, retain_x[:400], retain_y[:400], "fisher", damping=0.1, batch_size=256)
    exact = conjugate_gradient(operator, v, iterations=200, tolerance=1e-6).k
    scale = 1.5 * largest_eigenvalue(operator, v.numel(), v.device, seed=0)
    approximate = lissa(operator, v, iterations=300, scale=scale, batch_size=128, seed=0)
    agreement = torch.dot(approximate.k, exact) / (approximate.k.norm() * exact.norm())
    assert float(agreement) > 0.95  # stochastic minibatch curvature, so only approximately
    assert approximate.relative_residual < 0.3


@pytest.mark.parametrize(
    "params",
    [{}, {"hvp": "cg"}, {"hvp": "lissa", "lissa_iterations": 300}],
    ids=["reference", "cg", "lissa"],
)
def test_iu_forgets_a_class_and_keeps_the_rest(
    digits: ArrayDataset,
    class_forget_indices: np.ndarray,
    forget_class: int,
    original_digits_model: EngineResult,
    params: dict[str, object],
) -> None:
    forget = {"forget_indices": class_forget_indices, "forget_class": forget_class}
    original = _evaluate_original(digits, original_digits_model, **forget)
    result = execute(
        _request(
            digits,
            original_digits_model,
            kind="unlearn",
            method="iu",
            params=params,
            weights=original_digits_model.weights,
            **forget,
        )
    )
    assert original.metrics["forget_accuracy"] > 95.0
    assert result.metrics["forget_accuracy"] < FORGET_ACCURACY_MAX
    assert result.metrics["RA"] >= original.metrics["RA"] - RETAIN_DROP_MAX
    expected_alpha = 20.0 if not params else 1.0
    assert result.details["params"]["alpha"] == expected_alpha  # the resolved default is recorded
    assert result.details["history"][0]["lr"] == expected_alpha


def test_small_alpha_barely_moves_the_model(
    digits: ArrayDataset, class_forget_indices: np.ndarray, original_digits_model: EngineResult
) -> None:
    result = execute(
        _request(
            digits,
            original_digits_model,
            kind="unlearn",
            method="iu",
            params={"alpha": 1e-3},
            weights=original_digits_model.weights,
            forget_indices=class_forget_indices,
        )
    )
    assert result.metrics["forget_accuracy"] > 95.0
