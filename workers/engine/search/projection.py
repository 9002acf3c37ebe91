"""Euclidean projection onto the capped simplex ``C = {w in [0, 1]^N : sum(w) = m}`` (numpy only).

The projection of ``a`` is ``clip(a - mu, 0, 1)`` for the scalar ``mu`` that makes the sum equal ``m``
(the KKT conditions of ``min ||w - a||^2`` over C). ``s(mu) = sum(clip(a - mu, 0, 1))`` is continuous,
piecewise linear and non-increasing, from ``N`` at ``mu = min(a) - 1`` to ``0`` at ``mu = max(a)``.

Like Unlearn-WorstCase (data-wise/utils.py ``bisection``; optml.md §5.2), ``mu`` is first found by bisection
until ``|s(mu) - m| <= tol`` (1e-5) or ``max_iter`` (100) halvings. The reference bisects on
``[min(a) - 1, max(a)]``. Lethe uses the narrower bracket ``[a_(ceil m) - 1, a_(floor m + 1)]`` (j-th largest
entries), which holds the same root and keeps 100 halvings enough when the entries span many orders of
magnitude. The reference stops there, so its sum is only within ``tol`` of ``m``.

Lethe then finishes in closed form. On the linear piece that holds ``mu``, with ``U = {a_i - mu >= 1}``
and ``F = {0 < a_i - mu < 1}``, ``s(mu') = |U| + sum_F (a_i - mu')``, so
``mu' = mu + (sum_F (a_i - mu) + |U| - m) / |F|``. These Newton steps stay inside the bisection bracket (a
step that leaves it halves the bracket instead). They stop once the partition no longer changes, which is
finitely many steps on a piecewise-linear function. The sum then equals ``m`` up to floating-point rounding,
about ``N * 1e-16``. Any rounding residual left is spread over the free coordinates.

The projection is shift-invariant, so the work is done on ``a - a_(ceil m)``. The root always lies within 1
of ``a_(ceil m)`` (see the bracket), so the entries that end up strictly between 0 and 1 are within 2 of it.
Their differences to it are exact (Sterbenz), or accurate to ~1e-16 absolute near 0. The result keeps full
precision whatever the magnitude and spread of the entries, e.g. ``a = [0, 0, 3e15]`` with ``m = 1.5`` gives
``[0.25, 0.25, 1]``. Differences that overflow become +-inf and clip correctly to 1 or 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["capped_simplex_residual", "project_capped_simplex"]

MAX_REFINEMENT_STEPS = 200


def _total(shifted: np.ndarray, mu: float) -> float:
    return float(np.clip(shifted - mu, 0.0, 1.0).sum())


def _solve_shift(shifted: np.ndarray, m: float, tol: float, max_iter: int) -> float:
    """mu with sum(clip(shifted - mu, 0, 1)) = m, for 0 < m < N: the reference's bisection, then
    safeguarded Newton steps on the linear piece that holds mu (exact on that piece)."""
    # Stage 1: the reference's bisection, on a narrower bracket than its [min(a) - 1, max(a)]. With a_(j)
    # the j-th largest entry, s(a_(ceil m) - 1) >= ceil(m) >= m and s(a_(floor m + 1)) <= floor(m) <= m, so
    # the root lies in between. The bracket is at most 1 wide unless s is flat at m inside it, so the
    # bisection converges however widely the entries are spread.
    upper_rank, lower_rank = math.ceil(m) - 1, math.floor(m)  # 0-based ranks in descending order
    descending = -np.partition(-shifted, (upper_rank, lower_rank))
    lo = float(descending[upper_rank]) - 1.0
    # hi <= a_(ceil m); below lo (a gap of more than 1 after the m-th entry, m integer) s is flat at m there.
    hi = max(float(descending[lower_rank]), lo)
    mu = 0.5 * (lo + hi)
    for _ in range(max_iter):
        mu = 0.5 * (lo + hi)
        total = _total(shifted, mu)
        if abs(total - m) <= tol:
            break
        if total > m:
            lo = mu
        else:
            hi = mu

    # Stage 2: Newton steps, kept inside the bracket (a step that leaves it bisects instead).
    for _ in range(MAX_REFINEMENT_STEPS):
        moved = shifted - mu
        free = (moved > 0.0) & (moved < 1.0)
        free_count = int(free.sum())
        residual = float(moved[free].sum()) + int((moved >= 1.0).sum()) - m
        if residual > 0.0:
            lo = max(lo, mu)
        elif residual < 0.0:
            hi = min(hi, mu)
        else:
            break
        candidate = mu + residual / free_count if free_count else 0.5 * (lo + hi)
        if not lo <= candidate <= hi or candidate == mu:
            candidate = 0.5 * (lo + hi)
        if candidate == mu:  # the bracket cannot shrink any further in float64
            break
        mu = candidate
    return mu


def project_capped_simplex(a: np.ndarray, m: float, *, tol: float = 1e-5, max_iter: int = 100) -> np.ndarray:
    """The Euclidean projection of the 1-D array ``a`` onto ``{w in [0, 1]^N, sum(w) = m}`` (float64).

    ``tol`` and ``max_iter`` control the reference's bisection stage (stop when the sum is within ``tol`` of
    ``m``); the closed-form refinement that follows makes the sum exact up to rounding in every case.
    Raises ``ValueError`` for a non-1-D or non-finite ``a`` or an ``m`` outside ``[0, N]``.
    """
    values = np.asarray(a, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"a must be a 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("a must hold finite values")
    m = float(m)
    count = values.shape[0]
    if not (np.isfinite(m) and 0.0 <= m <= count):
        raise ValueError(f"m must lie in [0, N] = [0, {count}], got {m}")
    if tol <= 0 or max_iter < 0:
        raise ValueError("tol must be positive and max_iter non-negative")
    if m == 0.0:
        return np.zeros(count)
    if m == count:
        return np.ones(count)

    rank = math.ceil(m) - 1
    reference = -float(np.partition(-values, rank)[rank])  # a_(ceil m), the ceil(m)-th largest entry
    with np.errstate(over="ignore"):
        shifted = values - reference  # may hold +-inf for entries far from the root: they clip to 1 / 0
    mu = _solve_shift(shifted, m, tol, max_iter)

    projected = np.clip(shifted - mu, 0.0, 1.0)
    # Stage 3: spread the last rounding residual over the free coordinates (keeps them inside (0, 1)).
    residual = m - float(projected.sum())
    free = (projected > 0.0) & (projected < 1.0)
    if residual != 0.0 and free.any():
        projected[free] = np.clip(projected[free] + residual / int(free.sum()), 0.0, 1.0)
    return projected


def capped_simplex_residual(w: np.ndarray, m: float) -> float:
    """``|sum(w) - m|``: how far ``w`` is from the hyperplane (for tests and diagnostics)."""
    return abs(float(np.asarray(w, dtype=np.float64).sum()) - float(m))
