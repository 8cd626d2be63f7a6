"""scipy's Nelder-Mead, step for step, with many runs advanced side by side and their points scored together.

A round's calibration makes a few dozen Nelder-Mead runs (eight per mixture fit: six starting
points, a restart and a fit of true links alone; nine fits at 4 x 100k, plus the bootstrap's
refits), each of thousands of evaluations of an objective over ~100 bins. One at a time, the
optimiser and numpy's per-call overhead cost far more than the arithmetic, and threads do not help
(the small numpy calls hold the GIL). Here each run is scipy's algorithm written as a generator
that yields each point it wants scored; :func:`minimize_plans` advances every run to its next
point, scores all the waiting points in one call, and sends each its value; a plan (a fit's
stages: its starts, then a restart from the best of them, ...) begins its next stage as soon as
its own runs end. Each run takes exactly the steps scipy's ``minimize(method="Nelder-Mead")``
takes (same simplex, same arithmetic in the same order), so as long as the batched objective
gives each point the value the single one gives, bit for bit, every run ends where scipy's ends
(``tests/coordinator/test_nelder_mead.py`` and ``tests/coordinator/test_calibration.py`` compare
the two).
"""

# The algorithm below follows SciPy's ``scipy/optimize/_optimize.py`` (``_minimize_neldermead``),
# which is distributed under this licence:
#
# Copyright (c) 2001-2002 Enthought, Inc. 2003, SciPy Developers. All rights reserved.
#
# Redistribution and use in source and binary forms, with or without modification, are permitted
# provided that the following conditions are met:
# 1. Redistributions of source code must retain the above copyright notice, this list of
#    conditions and the following disclaimer.
# 2. Redistributions in binary form must reproduce the above copyright notice, this list of
#    conditions and the following disclaimer in the documentation and/or other materials provided
#    with the distribution.
# 3. Neither the name of the copyright holder nor the names of its contributors may be used to
#    endorse or promote products derived from this software without specific prior written
#    permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
# IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
# FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
# CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
# DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
# IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
# OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Plan", "Run", "minimize_all", "minimize_plans", "nelder_mead"]

#: What a run yields (a point to score) and is sent back (its value); it returns ``(x, fun)``.
Steps = Generator[list[float], float, tuple[np.ndarray, float]]


def nelder_mead(x0: Sequence[float] | np.ndarray, *, maxiter: int, xatol: float, fatol: float) -> Steps:
    """The steps of scipy 1.17's ``_minimize_neldermead`` (not adaptive, no bounds, no ``maxfev``) as a generator.

    Yields each point to evaluate (a list of floats) and takes its value; returns the best vertex
    and ``np.min`` of the simplex's values, as scipy's result's ``x`` and ``fun``.

    The simplex is held as lists of floats rather than scipy's arrays: each of scipy's array
    operations acts on each element alone (one rounding each, as Python's float arithmetic makes
    it) except the centroid's ``np.add.reduce(sim[:-1], 0)``, which adds the rows in order (as the
    loop below does), and the sorts, which stay numpy's ``argsort`` (its order of tied values is
    scipy's). Small arrays cost far more per operation than the arithmetic, and a fit takes tens of
    thousands of steps.
    """
    x0 = np.atleast_1d(np.asarray(x0))
    if x0.dtype.kind in np.typecodes["AllInteger"]:
        x0 = np.asarray(x0, dtype=float)
    x0 = np.atleast_1d(x0).flatten()
    dtype = x0.dtype if np.issubdtype(x0.dtype, np.inexact) else np.float64
    # float64 is what every caller gives and what Python's floats are.
    assert np.dtype(dtype) == np.float64, dtype
    start = np.asarray(x0, dtype=dtype).tolist()
    nonzdelt, zdelt = 0.05, 0.00025
    n = len(start)
    sim: list[list[float]] = [list(start)]
    for k in range(n):
        y = list(start)
        if y[k] != 0:
            y[k] = (1 + nonzdelt) * y[k]
        else:
            y[k] = zdelt
        sim.append(y)
    fsim = [np.inf] * (n + 1)
    for k in range(n + 1):
        fsim[k] = yield sim[k]

    def ordered(sim: list[list[float]], fsim: list[float]) -> tuple[list[list[float]], list[float]]:
        ind = np.argsort(np.array(fsim)).tolist()
        return [sim[i] for i in ind], [fsim[i] for i in ind]

    sim, fsim = ordered(sim, fsim)
    sim, fsim = ordered(sim, fsim)
    iterations = 1
    while iterations < maxiter:
        # scipy: max(|sim[1:] - sim[0]|) <= xatol and max(|fsim[0] - fsim[1:]|) <= fatol (all(...) is
        # the same test, a NaN included: it fails both).
        best, f0 = sim[0], fsim[0]
        if (all(abs(v - b) <= xatol for row in sim[1:] for v, b in zip(row, best, strict=True))
                and all(abs(f0 - f) <= fatol for f in fsim[1:])):
            break
        xbar = list(sim[0])
        for row in sim[1:-1]:
            xbar = [s + v for s, v in zip(xbar, row, strict=True)]
        xbar = [s / n for s in xbar]
        worst = sim[-1]
        # scipy's coefficients: rho = 1, chi = 2, psi = 0.5, sigma = 0.5, as the integers and
        # halves its expressions evaluate to (exact: every product below rounds as scipy's does).
        xr = [2 * c - 1 * w for c, w in zip(xbar, worst, strict=True)]
        fxr = yield xr
        doshrink = 0
        if fxr < fsim[0]:
            xe = [3 * c - 2 * w for c, w in zip(xbar, worst, strict=True)]
            fxe = yield xe
            if fxe < fxr:
                sim[-1] = xe
                fsim[-1] = fxe
            else:
                sim[-1] = xr
                fsim[-1] = fxr
        elif fxr < fsim[-2]:
            sim[-1] = xr
            fsim[-1] = fxr
        else:
            if fxr < fsim[-1]:
                xc = [1.5 * c - 0.5 * w for c, w in zip(xbar, worst, strict=True)]
                fxc = yield xc
                if fxc <= fxr:
                    sim[-1] = xc
                    fsim[-1] = fxc
                else:
                    doshrink = 1
            else:
                xcc = [0.5 * c + 0.5 * w for c, w in zip(xbar, worst, strict=True)]
                fxcc = yield xcc
                if fxcc < fsim[-1]:
                    sim[-1] = xcc
                    fsim[-1] = fxcc
                else:
                    doshrink = 1
            if doshrink:
                first = sim[0]
                for j in range(1, n + 1):
                    sim[j] = [b + 0.5 * (v - b) for v, b in zip(sim[j], first, strict=True)]
                    fsim[j] = yield sim[j]
        iterations += 1
        sim, fsim = ordered(sim, fsim)
    return np.array(sim[0], dtype=np.float64), np.min(np.array(fsim))


@dataclass(frozen=True)
class Run:
    """One Nelder-Mead run: its start and the objective it minimises (``key`` groups runs scored together).

    Attributes:
        x0: the starting point.
        key: runs with equal keys (and the same ``score``) have their points stacked into one group.
        score: given every group of waiting runs that share it, as ``(points, runs)`` with one row
            of ``points`` per run, each group's values (one call per step for all its groups).
        data: what ``score`` reads of this run's own objective.
    """

    x0: np.ndarray
    key: object
    score: Callable[[list[tuple[np.ndarray, list[Run]]]], list[np.ndarray]]
    data: object = None


#: A sequence of Nelder-Mead stages: yields the runs of its next stage, is sent their ``(x, fun)``
#: in order, and returns its result.
Plan = Generator[list[Run], list[tuple[np.ndarray, float]], object]


def minimize_plans(plans: Sequence[Plan], *, maxiter: int, xatol: float, fatol: float) -> list[object]:
    """Every plan's result, its stages' runs advanced side by side with every other plan's.

    A plan's next stage starts as soon as its own runs end (not when every plan's have), so the
    points scored together at each step come from as many runs as are under way. Each run takes
    exactly scipy's steps whatever runs beside it, so a plan's result is the one it gets alone.

    Args:
        plans: the plans; each must yield at least one run per stage.
        maxiter: iterations at most per run (scipy's option of that name).
        xatol: scipy's ``xatol``.
        fatol: scipy's ``fatol``.

    Returns:
        Per plan, in order, what it returned.
    """
    results: list[object] = [None] * len(plans)
    stages: list[list[tuple[np.ndarray, float] | None]] = [[] for _ in plans]
    left = [0] * len(plans)  # runs of each plan's stage still under way
    # Per run under way: its plan, its place in the plan's stage, its steps and the run.
    runs: list[tuple[int, int, Steps, Run]] = []
    waiting: dict[int, list[float]] = {}  # the point each run under way waits on

    def advance(p: int, sent: list[tuple[np.ndarray, float]] | None, into: dict[int, list[float]]) -> None:
        try:
            stage = next(plans[p]) if sent is None else plans[p].send(sent)
        except StopIteration as done:
            results[p] = done.value
            return
        stages[p], left[p] = [None] * len(stage), len(stage)
        for slot, run in enumerate(stage):
            steps = nelder_mead(run.x0, maxiter=maxiter, xatol=xatol, fatol=fatol)
            into[len(runs)] = next(steps)
            runs.append((p, slot, steps, run))

    for p in range(len(plans)):
        advance(p, None, waiting)
    while waiting:
        scorers: dict[object, dict[object, list[int]]] = {}
        for i in waiting:
            run = runs[i][3]
            scorers.setdefault(run.score, {}).setdefault(run.key, []).append(i)
        nxt: dict[int, list[float]] = {}
        for score, groups in scorers.items():
            members = list(groups.values())
            values = score([(np.array([waiting[i] for i in group]), [runs[i][3] for i in group])
                            for group in members])  # type: ignore[operator]
            for group, group_values in zip(members, values, strict=True):
                for i, value in zip(group, group_values.tolist(), strict=True):
                    p, slot, steps, _ = runs[i]
                    try:
                        nxt[i] = steps.send(value)
                    except StopIteration as done:
                        stages[p][slot] = done.value
                        left[p] -= 1
                        if not left[p]:
                            advance(p, stages[p], nxt)  # type: ignore[arg-type]
        waiting = nxt
    return results


def minimize_all(runs: Sequence[Run], *, maxiter: int, xatol: float, fatol: float) -> list[tuple[np.ndarray, float]]:
    """Every run's ``(x, fun)``, as scipy's Nelder-Mead gives it for that run alone.

    Args:
        runs: the runs.
        maxiter: iterations at most (scipy's option of that name).
        xatol: scipy's ``xatol``.
        fatol: scipy's ``fatol``.

    Returns:
        Per run, in order, the best point and its value.
    """
    if not runs:
        return []

    def plan() -> Plan:
        return (yield list(runs))

    return minimize_plans([plan()], maxiter=maxiter, xatol=xatol, fatol=fatol)[0]  # type: ignore[return-value]
