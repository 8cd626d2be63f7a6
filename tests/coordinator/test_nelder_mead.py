"""The Nelder-Mead generator takes scipy's steps exactly, on smooth objectives and on flat ones (tied values)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from coordinator.linkage.nelder_mead import Run, minimize_all, minimize_plans, nelder_mead

OPTIONS = {"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6}


def _rosen(x: np.ndarray) -> float:
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def _plateau(x: np.ndarray) -> float:
    # Flat outside a box and in steps inside it: many vertices share a value (ties in the sort).
    return float(np.floor(np.clip(np.abs(x - 0.3), 0.0, 2.0) * 4).sum())


def _clipped(x: np.ndarray) -> float:
    # Like the mixture's parameters: clipped coordinates leave the value flat along them.
    return float(((np.clip(x, -1.0, 1.5) - 0.7) ** 2).sum() + 0.1 * np.abs(x[0]))


def _drive(f, x0: np.ndarray, maxiter: int) -> tuple[np.ndarray, float]:
    steps = nelder_mead(x0, maxiter=maxiter, xatol=1e-4, fatol=1e-6)
    point = next(steps)
    while True:
        try:
            point = steps.send(f(np.array(point)))
        except StopIteration as done:
            return done.value


@pytest.mark.parametrize("f", [_rosen, _plateau, _clipped])
def test_each_run_is_scipys_run_bit_for_bit(f) -> None:
    """Invariant: from starts with zero and non-zero coordinates, the generator ends at scipy's ``x`` and ``fun``
    exactly, also when it stops at ``maxiter``."""
    rng = np.random.default_rng(3)
    starts = [np.zeros(5), np.array([1.5, 0.0, 0.7, 2.9, 3.0]), *rng.normal(0.0, 2.0, (6, 5))]
    for x0 in starts:
        for maxiter in (2000, 7):
            ours = _drive(f, x0, maxiter)
            theirs = minimize(f, x0, method="Nelder-Mead", options=OPTIONS | {"maxiter": maxiter})
            assert ours[0].tolist() == theirs.x.tolist()
            assert ours[1] == theirs.fun


def _score(groups):
    return [np.array([_rosen(point) for point in points]) for points, _ in groups]


def test_staged_plans_and_side_by_side_runs_are_runs_alone() -> None:
    """Invariant: runs advanced side by side, and stages of plans that start as others' runs end, give each run
    the result it has alone."""
    rng = np.random.default_rng(5)
    starts = list(rng.normal(0.0, 1.5, (5, 4)))
    alone = [_drive(_rosen, x0, 2000) for x0 in starts]
    together = minimize_all([Run(x0, "k", _score) for x0 in starts], **OPTIONS)
    assert [(x.tolist(), fun) for x, fun in together] == [(x.tolist(), fun) for x, fun in alone]

    def plan(first: np.ndarray, second: np.ndarray):
        (a,) = yield [Run(first, "k", _score)]
        b, c = yield [Run(a[0], "k", _score), Run(second, "other", _score)]
        return a, b, c

    results = minimize_plans([plan(starts[0], starts[1]), plan(starts[2], starts[3])], **OPTIONS)
    for (a, b, c), (first, second) in zip(results, [(starts[0], starts[1]), (starts[2], starts[3])], strict=True):
        assert a[0].tolist() == _drive(_rosen, first, 2000)[0].tolist()
        assert b[0].tolist() == _drive(_rosen, a[0], 2000)[0].tolist()
        assert c[1] == _drive(_rosen, second, 2000)[1]
