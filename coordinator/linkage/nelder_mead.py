"""scipy's Nelder-Mead, step for step, with many runs advanced side by side and their points scored together.

A round's calibration makes a few dozen Nelder-Mead runs (seven per mixture fit: the starting
points and a fit of true links alone; nine fits at 4 x 100k, plus the bootstrap's refits), each
of thousands of evaluations of an objective over ~100 bins. One at a time, the optimiser and
numpy's per-call overhead cost far more than the arithmetic, and threads do not help (the small
numpy calls hold the GIL). Here each run is scipy's algorithm written as a generator that yields
each point it wants scored; :func:`minimize_all` advances every run to its next point, scores all
the waiting points in one call, and sends each its value. Each run takes exactly the steps
scipy's ``minimize(method="Nelder-Mead")`` takes (same simplex, same numpy operations in the
same order), so as long as the batched objective gives each point the value the single one
gives, bit for bit, every run ends where scipy's ends (``tests/coordinator/test_calibration.py``
compares the two).
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

__all__ = ["Run", "minimize_all", "nelder_mead"]

#: What a run yields (a point to score) and is sent back (its value); it returns ``(x, fun)``.
Steps = Generator[np.ndarray, float, tuple[np.ndarray, float]]


def nelder_mead(x0: Sequence[float] | np.ndarray, *, maxiter: int, xatol: float, fatol: float) -> Steps:
    """The steps of scipy 1.17's ``_minimize_neldermead`` (not adaptive, no bounds, no ``maxfev``) as a generator.

    Yields each point to evaluate and takes its value; returns the best vertex and ``np.min`` of the
    simplex's values, as scipy's result's ``x`` and ``fun``.
    """
    x0 = np.atleast_1d(np.asarray(x0))
    if x0.dtype.kind in np.typecodes["AllInteger"]:
        x0 = np.asarray(x0, dtype=float)
    x0 = np.atleast_1d(x0).flatten()
    dtype = x0.dtype if np.issubdtype(x0.dtype, np.inexact) else np.float64
    x0 = np.asarray(x0, dtype=dtype)
    rho, chi, psi, sigma = 1, 2, 0.5, 0.5
    nonzdelt, zdelt = 0.05, 0.00025
    n = len(x0)
    sim = np.empty((n + 1, n), dtype=x0.dtype)
    sim[0] = x0
    for k in range(n):
        y = np.array(x0, copy=True)
        if y[k] != 0:
            y[k] = (1 + nonzdelt) * y[k]
        else:
            y[k] = zdelt
        sim[k + 1] = y
    one2np1 = list(range(1, n + 1))
    fsim = np.full((n + 1,), np.inf, dtype=float)
    for k in range(n + 1):
        fsim[k] = yield sim[k]
    ind = np.argsort(fsim)
    sim = np.take(sim, ind, 0)
    fsim = np.take(fsim, ind, 0)
    ind = np.argsort(fsim)
    fsim = np.take(fsim, ind, 0)
    sim = np.take(sim, ind, 0)
    iterations = 1
    while iterations < maxiter:
        if (np.max(np.ravel(np.abs(sim[1:] - sim[0]))) <= xatol
                and np.max(np.abs(fsim[0] - fsim[1:])) <= fatol):
            break
        xbar = np.add.reduce(sim[:-1], 0) / n
        xr = (1 + rho) * xbar - rho * sim[-1]
        fxr = yield xr
        doshrink = 0
        if fxr < fsim[0]:
            xe = (1 + rho * chi) * xbar - rho * chi * sim[-1]
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
                xc = (1 + psi * rho) * xbar - psi * rho * sim[-1]
                fxc = yield xc
                if fxc <= fxr:
                    sim[-1] = xc
                    fsim[-1] = fxc
                else:
                    doshrink = 1
            else:
                xcc = (1 - psi) * xbar + psi * sim[-1]
                fxcc = yield xcc
                if fxcc < fsim[-1]:
                    sim[-1] = xcc
                    fsim[-1] = fxcc
                else:
                    doshrink = 1
            if doshrink:
                for j in one2np1:
                    sim[j] = sim[0] + sigma * (sim[j] - sim[0])
                    fsim[j] = yield sim[j]
        iterations += 1
        ind = np.argsort(fsim)
        sim = np.take(sim, ind, 0)
        fsim = np.take(fsim, ind, 0)
    return sim[0], np.min(fsim)


@dataclass(frozen=True)
class Run:
    """One Nelder-Mead run: its start and the objective it minimises (``key`` groups runs scored together).

    Attributes:
        x0: the starting point.
        key: runs with equal keys are scored by one call of ``score``.
        score: given a key's runs' points (one row each) and the runs, their values.
        data: what ``score`` reads of this run's own objective.
    """

    x0: np.ndarray
    key: object
    score: Callable[[np.ndarray, list[Run]], np.ndarray]
    data: object = None


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
    steps = [nelder_mead(run.x0, maxiter=maxiter, xatol=xatol, fatol=fatol) for run in runs]
    results: list[tuple[np.ndarray, float] | None] = [None] * len(runs)
    waiting = {i: next(step) for i, step in enumerate(steps)}
    while waiting:
        groups: dict[object, list[int]] = {}
        for i in waiting:
            groups.setdefault(runs[i].key, []).append(i)
        nxt: dict[int, np.ndarray] = {}
        for members in groups.values():
            values = runs[members[0]].score(np.stack([waiting[i] for i in members]), [runs[i] for i in members])
            for i, value in zip(members, values.tolist(), strict=True):
                try:
                    nxt[i] = steps[i].send(value)
                except StopIteration as done:
                    results[i] = done.value
        waiting = nxt
    return [r for r in results if r is not None]
