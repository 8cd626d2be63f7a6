"""Mixture fits with their Nelder-Mead runs side by side: many points of the likelihood scored in one numpy pass.

:func:`fit_batched` makes exactly the fits :func:`coordinator.linkage.mixture._fit_mixture` makes
with scipy, one start at a time: the runs are scipy's steps (:mod:`coordinator.linkage.nelder_mead`),
and :func:`_score` gives each point the value :class:`~coordinator.linkage.mixture._Objective` gives
it, bit for bit. Every operation is the single objective's, applied to one row per point: the
incomplete beta function, ``exp``, ``log`` and the arithmetic act on each element alone, and each
row's sum is numpy's pairwise sum of a row as long as the single objective's array, zeros included
(``tests/coordinator/test_calibration.py`` checks the fits against scipy's). The incomplete beta
function, most of a fit's time, is computed once per ``(a, b)`` and floor among a call's fits
(:class:`_Scorer`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from coordinator.linkage.mixture import (
    _ALONE_SHARE,
    _BIC_FACTOR,
    _EPS,
    _RESTART_GAIN,
    _RESTARTS,
    MixtureFit,
    ScoreHistogram,
    _fitted,
    _start_points,
)
from coordinator.linkage.nelder_mead import Plan, Run, minimize_plans

__all__ = ["fit_batched"]

#: scipy's options for every run (as ``minimize(..., method="Nelder-Mead", options=...)`` had them).
_OPTIONS = {"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6}


@dataclass(frozen=True)
class _Target:
    """One run's objective: its histogram's counts and capture from the floor's bin on, and its share pinned or not."""

    counts: np.ndarray
    total: float
    capture: np.ndarray | None
    clipped: np.ndarray
    distance: np.ndarray
    bins: int
    first: int
    noise: float
    pinned: bool


def _target(histogram: ScoreHistogram, pinned: bool) -> _Target:
    counts, capture, first = histogram.counts, histogram.capture, histogram.first
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    tail = counts[first:]
    return _Target(counts=tail, total=float(tail.sum()), capture=capture[first:] if capture is not None else None,
                   clipped=np.clip(edges, 0.0, 1.0)[first:], distance=mids[first:] - mids[first], bins=len(counts),
                   first=first, noise=float(histogram.noise), pinned=pinned)


def _group(target: _Target) -> tuple:
    """Runs whose targets share this are scored together (same bins from the same floor, same kind)."""
    return target.bins, target.first, target.noise, target.capture is None, target.pinned


#: A second thread for the incomplete beta function, most of a fit's time (scipy's ufunc releases the GIL).
_HELPER: tuple[int, ThreadPoolExecutor] | None = None
_HELPER_LOCK = threading.Lock()
#: Elements from which half go to the second thread (fewer cost more to hand over than they take).
_SPLIT_FROM = 1536


def _betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``betainc(a, b, x)`` element by element (equal-length 1-D arrays), half of them on a second thread.

    Each element is computed alone, so splitting the elements changes no value.
    """
    from scipy.special import betainc

    global _HELPER
    if len(a) < _SPLIT_FROM:
        return betainc(a, b, x)
    with _HELPER_LOCK:
        # A forked child inherits the executor but not its thread: it makes its own.
        if _HELPER is None or _HELPER[0] != os.getpid():
            _HELPER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="pplink-betainc"))
        helper = _HELPER[1]
    half = len(a) // 2
    first = helper.submit(betainc, a[:half], b[:half], x[:half])
    rest = betainc(a[half:], b[half:], x[half:])
    return np.concatenate([first.result(), rest])


_LOG4, _LOG2000, _LOG5 = math.log(4.0), math.log(2000.0), math.log(5.0)


def _shapes(points: list[list[float]], pinned: bool) -> list[tuple[float, float, float, float, float]]:
    """``_shape`` of each point (its share pinned at 30 first if ``pinned``), the same expressions inlined.

    A fit scores tens of thousands of points; the calls of ``_shape`` and ``_sigmoid`` cost more than
    their arithmetic, which is unchanged here (the same operations in the same order, ``math.exp``).
    """
    exp = math.exp
    out = []
    for point in points:
        if pinned:
            exact, mean, concentration, rate = point
            share = _ALONE_SHARE
        else:
            share, exact, mean, concentration, rate = point
        mean = 0.6 + 0.4 * (1.0 / (1.0 + exp(-min(max(mean, -30.0), 30.0))))
        kappa = exp(min(max(concentration, _LOG4), _LOG2000))
        out.append((1.0 / (1.0 + exp(-min(max(share, -30.0), 30.0))),
                    1.0 / (1.0 + exp(-min(max(exact, -30.0), 30.0))),
                    mean * kappa, (1 - mean) * kappa, exp(min(max(rate, _LOG5), 7.0))))
    return out


class _Scorer:
    """Scores every waiting point of a set of fits at once, keeping the incomplete beta rows it has computed.

    A row ``betainc(a, b, edges from the floor's bin)`` depends on ``(a, b)``, the bins and the
    floor's bin alone; points that share them (every fit's first simplex starts from the same points, several
    of its vertices differ only in other parameters, and a restart begins at a point already
    scored) reuse it rather than recompute it. The rows every group still needs are computed in
    one call, whatever their groups, so the call is large enough to split over two threads.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[float, float, int, int], np.ndarray] = {}

    def __call__(self, groups: list[tuple[np.ndarray, list[Run]]]) -> list[np.ndarray]:
        rows = self.rows
        shaped = []
        fresh: list[tuple[float, float, int, int]] = []
        edges: list[np.ndarray] = []
        for points, runs in groups:
            t: _Target = runs[0].data  # type: ignore[assignment]
            shapes = _shapes(points.tolist(), t.pinned)
            keys = [(shape[2], shape[3], t.first, t.bins) for shape in shapes]
            for key in keys:
                if key not in rows:
                    rows[key] = None  # type: ignore[assignment]  # computed below, once
                    fresh.append(key)
                    edges.append(t.clipped)
            shaped.append((t, shapes, keys, runs))
        if fresh:
            lengths = [len(x) for x in edges]
            raw = _betainc(np.repeat(np.array([key[0] for key in fresh]), lengths),
                           np.repeat(np.array([key[1] for key in fresh]), lengths), np.concatenate(edges))
            at = 0
            for key, length in zip(fresh, lengths, strict=True):
                rows[key] = raw[at:at + length]
                at += length
        return [_score(t, shapes, np.stack([rows[key] for key in keys]), runs) for t, shapes, keys, runs in shaped]


def _score(t: _Target, shapes: list[tuple[float, float, float, float, float]], raw: np.ndarray,
           runs: list[Run]) -> np.ndarray:
    """The negative log-likelihood of each point (its ``_shape`` and ``betainc`` row) under its run's target.

    Each value is the one ``_Objective`` gives the point.
    """
    targets: list[_Target] = [run.data for run in runs]  # type: ignore[misc]
    weight, exact, _, _, rate = (np.array(column, dtype=np.float64)[:, None] for column in zip(*shapes, strict=True))
    beta = raw[:, 1:] - raw[:, :-1]
    beta_in = np.maximum(np.add.reduce(beta, axis=1), _EPS)[:, None]
    match = np.array([1 - e for e, in exact.tolist()])[:, None] * beta / beta_in
    match[:, -1] += exact[:, 0]
    decay = np.zeros((len(shapes), t.bins))
    decay[:, t.first:] = np.exp(-rate * t.distance[None, :])
    decay_first = decay[:, t.first:] / np.maximum(np.add.reduce(decay, axis=1), _EPS)[:, None]
    mix = weight * match + np.array([1 - w for w, in weight.tolist()])[:, None] * decay_first
    counts = np.stack([target.counts for target in targets])
    if t.capture is not None:
        mix = mix * np.stack([target.capture for target in targets])  # type: ignore[misc]
        mix = mix / np.maximum(np.add.reduce(mix, axis=1), _EPS)[:, None]
    if t.noise > 0:
        expected = np.array([target.total for target in targets])[:, None] * np.maximum(mix, _EPS)
        variance = expected + t.noise
        return np.add.reduce(0.5 * (counts - expected) ** 2 / variance + 0.5 * np.log(variance), axis=1)
    return -np.add.reduce(counts * np.log(np.maximum(mix, _EPS)), axis=1)


def _plan(histogram: ScoreHistogram, start: Sequence[float] | None, warm: Sequence[float] | None,
          scorer: _Scorer) -> Plan:
    """The Nelder-Mead stages of ``_fit_mixture(histogram, start, 1, warm)``; returns its fit.

    The fit of true links alone starts from the best run's point; it is made beside each restart,
    from the point that restart starts from, and kept when the restart does not gain (the point is
    then the final one), so a fit whose restarts stop early takes one stage for both.
    """
    target = _target(histogram, False)
    found = yield [Run(np.array(point), _group(target), scorer, target)
                   for point in _start_points(start, warm)]
    best: tuple[np.ndarray, float] | None = None
    for run in found:
        # The best run, the first among equals, as the starts' results were compared in order.
        if best is None or run[1] < best[1]:
            best = run
    assert best is not None
    if start is not None:
        return _fitted(histogram, best[0])
    pinned = _target(histogram, True)

    def alone_from(x: np.ndarray) -> Run:
        return Run(np.array(x[1:]), _group(pinned), scorer, pinned)

    # Restarts from the best run while they gain, as _fit_mixture makes them.
    for _ in range(_RESTARTS):
        again, alone = yield [Run(best[0], _group(target), scorer, target), alone_from(best[0])]
        if not again[1] < best[1] - _RESTART_GAIN:
            break
        best = again
    else:
        (alone,) = yield [alone_from(best[0])]
    # Is there a false-link component at all? True links alone (share pinned), as _fit_mixture decides.
    x = best[0]
    if alone[1] - best[1] < _BIC_FACTOR * math.log(max(float(histogram.counts.sum()), 2.0)):
        x = np.concatenate([[_ALONE_SHARE], alone[0]])
    return _fitted(histogram, x)


def fit_batched(jobs: Sequence[tuple[ScoreHistogram, Sequence[float] | None, Sequence[float] | None]]
                ) -> list[MixtureFit]:
    """Each ``(histogram, start, warm)``'s fit, exactly ``_fit_mixture(histogram, start, 1, warm)``.

    Args:
        jobs: histograms, each with a previous fit's parameters to start only from (or ``None``) and
            a related fit's parameters to start from in place of the fixed starts (or ``None``).

    Returns:
        The fits, in order.
    """
    out: list[MixtureFit | None] = [None] * len(jobs)
    scorer = _Scorer()
    plans: list[Plan] = []
    owner: list[int] = []
    for j, (histogram, start, warm) in enumerate(jobs):
        if float(histogram.counts.sum()) <= 0:
            bins = len(histogram.counts)
            out[j] = MixtureFit(floor=histogram.floor, matches=0.0, match_beta=(1.0, 1.0), exact_share=0.0,
                                nonmatch_rate=1.0, match_weight=0.0, posterior=tuple([0.0] * bins))
            continue
        plans.append(_plan(histogram, start, warm, scorer))
        owner.append(j)
    for j, fit in zip(owner, minimize_plans(plans, **_OPTIONS), strict=True):
        out[j] = fit  # type: ignore[assignment]
    return [fit for fit in out if fit is not None]
