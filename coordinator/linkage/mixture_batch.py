"""Mixture fits with their Nelder-Mead runs side by side: many points of the likelihood scored in one numpy pass.

:func:`fit_batched` makes exactly the fits :func:`coordinator.linkage.mixture._fit_mixture` makes
with scipy, one start at a time: the runs are scipy's steps (:mod:`coordinator.linkage.nelder_mead`),
and :func:`_score` gives each point the value :class:`~coordinator.linkage.mixture._Objective` gives
it, bit for bit. Every operation is the single objective's, applied to one row per point: the
incomplete beta function, ``exp``, ``log`` and the arithmetic act on each element alone, and each
row's sum is numpy's pairwise sum of a row as long as the single objective's array, zeros included
(``tests/coordinator/test_calibration.py`` checks the fits against scipy's).
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
    _BIC_FACTOR,
    _EPS,
    _RESTART_GAIN,
    _RESTARTS,
    _STARTS,
    MixtureFit,
    ScoreHistogram,
    _fitted,
    _shape,
)
from coordinator.linkage.nelder_mead import Run, minimize_all

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
#: Rows from which half go to the second thread (fewer cost more to hand over than they take).
_SPLIT_FROM = 8


def _betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``betainc(a, b, x)`` with one row per ``(a, b)`` (column vectors) over ``x``, half the rows on a second thread.

    Each element is computed alone, so splitting the rows changes no value.
    """
    from scipy.special import betainc

    global _HELPER
    if len(a) < _SPLIT_FROM:
        return betainc(a, b, x[None, :])
    with _HELPER_LOCK:
        # A forked child inherits the executor but not its thread: it makes its own.
        if _HELPER is None or _HELPER[0] != os.getpid():
            _HELPER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="pplink-betainc"))
        helper = _HELPER[1]
    half = len(a) // 2
    first = helper.submit(betainc, a[:half], b[:half], x[None, :])
    rest = betainc(a[half:], b[half:], x[None, :])
    return np.concatenate([first.result(), rest])


def _score(points: np.ndarray, runs: list[Run]) -> np.ndarray:
    """The negative log-likelihood of each point (one row each) under its run's target, as ``_Objective`` gives it."""
    targets: list[_Target] = [run.data for run in runs]  # type: ignore[misc]
    t = targets[0]
    if t.pinned:
        points = np.concatenate([np.full((len(points), 1), 30.0), points], axis=1)
    shapes = [_shape(row) for row in points]
    weight, exact, a, b, rate = (np.array(column, dtype=np.float64)[:, None] for column in zip(*shapes, strict=True))
    raw = _betainc(a, b, t.clipped)
    beta = raw[:, 1:] - raw[:, :-1]
    beta_in = np.maximum(np.add.reduce(beta, axis=1), _EPS)[:, None]
    match = np.array([1 - e for e, in exact.tolist()])[:, None] * beta / beta_in
    match[:, -1] += exact[:, 0]
    decay = np.zeros((len(points), t.bins))
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


def fit_batched(jobs: Sequence[tuple[ScoreHistogram, Sequence[float] | None]]) -> list[MixtureFit]:
    """Each ``(histogram, start)``'s fit, exactly ``_fit_mixture(histogram, start, 1)``.

    Args:
        jobs: histograms, each with a previous fit's parameters to start only from, or ``None``.

    Returns:
        The fits, in order.
    """
    out: list[MixtureFit | None] = [None] * len(jobs)
    runs: list[Run] = []
    owner: list[int] = []
    targets: dict[int, _Target] = {}
    for j, (histogram, start) in enumerate(jobs):
        if float(histogram.counts.sum()) <= 0:
            bins = len(histogram.counts)
            out[j] = MixtureFit(floor=histogram.floor, matches=0.0, match_beta=(1.0, 1.0), exact_share=0.0,
                                nonmatch_rate=1.0, match_weight=0.0, posterior=tuple([0.0] * bins))
            continue
        target = targets[j] = _target(histogram, False)
        for point in _STARTS if start is None else (tuple(start),):
            runs.append(Run(np.array(point), _group(target), _score, target))
            owner.append(j)
    best: dict[int, tuple[np.ndarray, float]] = {}
    for j, found in zip(owner, minimize_all(runs, **_OPTIONS), strict=True):
        # The best run, the first among equals, as the starts' results were compared in order.
        if j not in best or found[1] < best[j][1]:
            best[j] = found
    # Restarts from each best run while they gain (fits without a given start), as _fit_mixture makes them.
    restarting = [j for j in best if jobs[j][1] is None]
    for _ in range(_RESTARTS):
        if not restarting:
            break
        again = minimize_all([Run(best[j][0], _group(targets[j]), _score, targets[j]) for j in restarting], **_OPTIONS)
        gained = [j for j, found in zip(restarting, again, strict=True) if found[1] < best[j][1] - _RESTART_GAIN]
        for j, found in zip(restarting, again, strict=True):
            if found[1] < best[j][1] - _RESTART_GAIN:
                best[j] = found
        restarting = gained
    # Is there a false-link component at all? True links alone (share pinned) are fitted from each
    # best run, as _fit_mixture does.
    alone_jobs = [j for j in best if jobs[j][1] is None]
    alone_runs = []
    for j in alone_jobs:
        pinned = _target(jobs[j][0], True)
        alone_runs.append(Run(np.array(best[j][0][1:]), _group(pinned), _score, pinned))
    chosen = {j: x for j, (x, _) in best.items()}
    for j, (x, fun) in zip(alone_jobs, minimize_all(alone_runs, **_OPTIONS), strict=True):
        total = float(jobs[j][0].counts.sum())
        if fun - best[j][1] < _BIC_FACTOR * math.log(max(total, 2.0)):
            chosen[j] = np.concatenate([[30.0], x])
    for j, x in chosen.items():
        out[j] = _fitted(jobs[j][0], x)
    return [fit for fit in out if fit is not None]
