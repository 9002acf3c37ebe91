"""The capped-simplex projection: feasibility, exactness of the sum, and optimality (it IS the Euclidean
projection), checked against a KKT certificate and a generic solver (scipy SLSQP)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from workers.engine.search.projection import capped_simplex_residual, project_capped_simplex

SUM_TOLERANCE_PER_ITEM = 1e-12  # |sum(w) - m| <= this * max(1, N): rounding level, not the reference's 1e-5
OPTIMALITY_TOLERANCE = 1e-9
SOLVER_TOLERANCE = 1e-5


def _sum_tolerance(count: int) -> float:
    return SUM_TOLERANCE_PER_ITEM * max(1, count)


def _max_linear_over_capped_simplex(c: np.ndarray, m: float) -> float:
    """max c.v over {v in [0,1]^N, sum v = m}: the floor(m) largest entries plus frac(m) of the next."""
    ordered = np.sort(c)[::-1]
    whole = math.floor(m)
    value = float(ordered[:whole].sum())
    if whole < c.shape[0]:
        value += (m - whole) * float(ordered[whole])
    return value


def _assert_is_projection(a: np.ndarray, w: np.ndarray, m: float) -> None:
    """w = Proj_C(a) iff w in C and (a - w).(v - w) <= 0 for every v in C (the variational inequality),
    i.e. max_v (a - w).v <= (a - w).w."""
    assert np.all(w >= 0.0) and np.all(w <= 1.0)
    assert capped_simplex_residual(w, m) <= _sum_tolerance(a.shape[0])
    direction = a - w
    scale = 1.0 + float(np.abs(a).max(initial=0.0))
    gap = _max_linear_over_capped_simplex(direction, m) - float(direction @ w)
    assert gap <= OPTIMALITY_TOLERANCE * scale * max(1, a.shape[0])


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
vectors = arrays(np.float64, st.integers(1, 40), elements=finite)


@st.composite
def problems(draw: st.DrawFn, values: st.SearchStrategy[np.ndarray] = vectors) -> tuple[np.ndarray, float]:
    a = draw(values)
    fraction = draw(st.floats(0.0, 1.0) | st.sampled_from([0.0, 1.0]))
    integer = draw(st.booleans())
    m = float(round(fraction * a.shape[0])) if integer else fraction * a.shape[0]
    return a, m


@given(problems())
@settings(max_examples=300, deadline=None)
def test_projection_is_feasible_exact_and_optimal(problem: tuple[np.ndarray, float]) -> None:
    a, m = problem
    w = project_capped_simplex(a, m)
    assert w.shape == a.shape and w.dtype == np.float64
    _assert_is_projection(a, w, m)


def _brute_force_projection(a: np.ndarray, m: float) -> np.ndarray:
    """The exact minimiser of ||w - a||^2 over C by enumerating every face: each entry at 0, at 1 or free.
    On a face, the free entries minimise over the hyperplane alone (a_F shifted by one constant). The best
    feasible face minimiser is the global optimum of this convex problem."""
    best, best_value = None, math.inf
    for labels in itertools.product((0, 1, 2), repeat=a.shape[0]):
        state = np.array(labels)
        w = (state == 1).astype(np.float64)
        free = state == 2
        if free.any():
            w[free] = a[free] - (a[free].sum() + w.sum() - m) / free.sum()
        elif abs(w.sum() - m) > 1e-12:
            continue
        if np.all(w >= -1e-12) and np.all(w <= 1 + 1e-12):
            value = float((w - a) @ (w - a))
            if value < best_value - 1e-15:
                best, best_value = w, value
    assert best is not None
    return best


@given(problems(arrays(np.float64, st.integers(1, 6), elements=st.floats(-5.0, 5.0))))
@settings(max_examples=60, deadline=None)
def test_projection_matches_brute_force_and_a_generic_qp_solver(problem: tuple[np.ndarray, float]) -> None:
    a, m = problem
    w = project_capped_simplex(a, m)
    assert np.allclose(w, _brute_force_projection(a, m), atol=1e-9)
    if not 0.0 < m < a.shape[0]:
        return  # a single feasible point (test_edge_sizes); SLSQP's line search fails there
    start = np.full(a.shape[0], m / a.shape[0])
    solved = minimize(
        lambda v: 0.5 * float((v - a) @ (v - a)),
        start,
        jac=lambda v: v - a,
        bounds=[(0.0, 1.0)] * a.shape[0],
        constraints=[{"type": "eq", "fun": lambda v: float(v.sum()) - m, "jac": lambda v: np.ones_like(v)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    # SLSQP occasionally stops on a degenerate face ("positive directional derivative"); the brute-force
    # check above is the exact one, SLSQP a generic cross-check where it converges.
    if solved.success:
        assert np.allclose(w, solved.x, atol=SOLVER_TOLERANCE)


@given(problems())
@settings(max_examples=100, deadline=None)
def test_projecting_a_feasible_point_returns_it(problem: tuple[np.ndarray, float]) -> None:
    a, m = problem
    w = project_capped_simplex(a, m)
    again = project_capped_simplex(w, m)
    assert np.allclose(again, w, atol=1e-12)


@given(
    arrays(np.float64, st.integers(2, 30), elements=st.integers(-3, 3).map(float)),
    st.floats(0.0, 1.0),
    st.sampled_from([1e-300, 1e-12, 1.0, 1e8, 1e15]),
)
@settings(max_examples=150, deadline=None)
def test_projection_handles_ties_and_extreme_scales(
    values: np.ndarray, fraction: float, scale: float
) -> None:
    """Many tied entries, tiny and huge magnitudes (and huge offsets) still give an exact, optimal point."""
    m = fraction * values.shape[0]
    a = values * scale
    w = project_capped_simplex(a, m)
    _assert_is_projection(a, w, m)
    shifted = project_capped_simplex(1e15 + values, m)  # a large common offset keeps the differences
    assert capped_simplex_residual(shifted, m) <= _sum_tolerance(values.shape[0])
    assert np.allclose(shifted, project_capped_simplex(values, m), atol=1e-9)


def test_tied_entries_share_the_mass_equally() -> None:
    w = project_capped_simplex(np.zeros(4), 1.0)
    assert np.array_equal(w, np.full(4, 0.25))
    w = project_capped_simplex(np.array([5.0, 5.0, 5.0]), 1.5)
    assert np.allclose(w, 0.5) and w.sum() == pytest.approx(1.5, abs=1e-15)


def test_edge_sizes() -> None:
    a = np.array([0.3, -2.0, 7.0])
    assert np.array_equal(project_capped_simplex(a, 0), np.zeros(3))
    assert np.array_equal(project_capped_simplex(a, 3), np.ones(3))
    assert np.array_equal(project_capped_simplex(a, 1), np.array([0.0, 0.0, 1.0]))
    assert project_capped_simplex(np.zeros(0), 0).shape == (0,)
    assert np.array_equal(project_capped_simplex(np.array([42.0]), 1.0), np.ones(1))
    # Differences that overflow float64 still clip correctly; tiny free entries next to huge ones are exact.
    assert np.array_equal(project_capped_simplex(np.array([1e308, -1e308]), 1.0), np.array([1.0, 0.0]))
    assert np.array_equal(
        project_capped_simplex(np.array([0.0, 0.0, 3e15]), 1.5), np.array([0.25, 0.25, 1.0])
    )
    mixed = np.array([5e277, 1e-300, -1e-300, 0.3, -4e250])
    assert np.allclose(project_capped_simplex(mixed, 2.5), [1.0, 0.4, 0.4, 0.7, 0.0], rtol=0, atol=1e-15)


def test_a_binary_indicator_minus_a_step_keeps_the_low_loss_items() -> None:
    """The search's update: from an indicator, the step exchanges high-loss selected items for low-loss
    unselected ones."""
    w = np.array([1.0, 1.0, 0.0, 0.0])
    losses = np.array([0.0, 3.0, 0.5, 4.0])
    updated = project_capped_simplex(w - 0.5 * losses, 2.0)
    assert updated.sum() == pytest.approx(2.0, abs=1e-12)
    assert updated[0] == 1.0 and updated[2] > updated[3] and updated[1] < 1.0


@pytest.mark.parametrize(
    ("a", "m", "message"),
    [
        (np.array([1.0, 2.0]), -0.1, "m must lie"),
        (np.array([1.0, 2.0]), 2.5, "m must lie"),
        (np.array([1.0, np.nan]), 1.0, "finite"),
        (np.array([1.0, np.inf]), 1.0, "finite"),
        (np.ones((2, 2)), 1.0, "1-D"),
    ],
)
def test_invalid_inputs_are_rejected(a: np.ndarray, m: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        project_capped_simplex(a, m)


def test_the_bisection_alone_is_not_exact_but_the_result_is() -> None:
    """With max_iter=0 (no bisection at all) the closed-form refinement still lands on the projection."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=1000) * 10
    exact = project_capped_simplex(a, 123.4)
    for max_iter in (0, 3, 100):
        w = project_capped_simplex(a, 123.4, max_iter=max_iter, tol=1e-1)
        assert np.allclose(w, exact, atol=1e-12)
        _assert_is_projection(a, w, 123.4)


@given(st.integers(1, 2000), st.floats(0.0, 1.0))
@settings(max_examples=30, deadline=None)
def test_large_random_problems(count: int, fraction: float) -> None:
    rng = np.random.default_rng(count)
    a = rng.standard_cauchy(count)
    assume(np.all(np.isfinite(a)))
    m = fraction * count
    _assert_is_projection(a, project_capped_simplex(a, m), m)
