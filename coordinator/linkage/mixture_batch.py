"""Many mixture fits at once: their Nelder-Mead runs compiled (`mixture_kernels`), on two threads.

A fit is a plan of stages, as :func:`coordinator.linkage.mixture._fit_mixture` makes it with scipy:
its starting points' runs, then restarts from the best while they gain, each beside a fit of true
links alone from the point it starts from, then the BIC test between the two. Every plan's next
stage starts when its own runs end; the runs waiting at any moment are handed to a pool of
threads (a run is one compiled call that releases the GIL), so a round's fits share both cores.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np

from coordinator.linkage.mixture import (
    _ALONE_SHARE,
    _BIC_FACTOR,
    _NELDER_MEAD,
    _RESTART_GAIN,
    _RESTARTS,
    MixtureFit,
    ScoreHistogram,
    _empty_fit,
    _fitted,
    _start_points,
)
from coordinator.linkage.mixture_kernels import BETAINC, Target, run_nelder_mead, target

__all__ = ["fit_batched"]

#: Threads that run the waiting runs (the machine's cores, at most 2: a round's other work uses the rest).
_THREADS = max(1, min(2, os.cpu_count() or 1))

#: One run: its start, whether the true-link share is pinned (true links alone), and its likelihood.
Run = tuple[np.ndarray, bool, Target]
#: A fit's stages: yields its next stage's runs, is sent their ``(x, fun)`` in order, returns the fit.
Plan = Generator[list[Run], list[tuple[np.ndarray, float]], MixtureFit]

_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        # A forked child inherits the executor but not its threads: it makes its own.
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(_THREADS, thread_name_prefix="pplink-fits"))
        return _POOL[1]


def _run(run: Run) -> tuple[np.ndarray, float]:
    x0, pinned, t = run
    x, fun = run_nelder_mead(BETAINC, np.asarray(x0, dtype=np.float64), pinned, t.counts, t.capture, t.clipped,
                             t.distance, t.bins, t.first, t.noise, _NELDER_MEAD["maxiter"], _NELDER_MEAD["xatol"],
                             _NELDER_MEAD["fatol"])
    return x, float(fun)


def _plan(histogram: ScoreHistogram, start: Sequence[float] | None, warm: Sequence[float] | None) -> Plan:
    """The stages of ``_fit_mixture(histogram, start, 1, warm)``; returns its fit.

    The fit of true links alone starts from the best run's point; it is made beside each restart,
    from the point that restart starts from, and kept when the restart does not gain (the point is
    then the final one), so a fit whose restarts stop early takes one stage for both.
    """
    t = target(histogram.counts, histogram.first, histogram.capture, histogram.noise)
    found = yield [(np.array(point, dtype=np.float64), False, t) for point in _start_points(start, warm)]
    best: tuple[np.ndarray, float] | None = None
    for run in found:
        # The best run, the first among equals, as the starts' results were compared in order.
        if best is None or run[1] < best[1]:
            best = run
    assert best is not None
    if start is not None:
        return _fitted(histogram, best[0])
    # Restarts from the best run while they gain, as _fit_mixture makes them.
    for _ in range(_RESTARTS):
        again, alone = yield [(best[0], False, t), (best[0][1:].copy(), True, t)]
        if not again[1] < best[1] - _RESTART_GAIN:
            break
        best = again
    else:
        (alone,) = yield [(best[0][1:].copy(), True, t)]
    # Is there a false-link component at all? True links alone (share pinned), as _fit_mixture decides.
    x = best[0]
    if alone[1] - best[1] < _BIC_FACTOR * math.log(max(float(histogram.counts.sum()), 2.0)):
        x = np.concatenate([[_ALONE_SHARE], alone[0]])
    return _fitted(histogram, x)


def fit_batched(jobs: Sequence[tuple[ScoreHistogram, Sequence[float] | None, Sequence[float] | None]]
                ) -> list[MixtureFit]:
    """Each ``(histogram, start, warm)``'s fit, as ``_fit_mixture(histogram, start, 1, warm)`` makes it.

    Args:
        jobs: histograms, each with a previous fit's parameters to start only from (or ``None``) and
            a related fit's parameters to start from in place of the fixed starts (or ``None``).

    Returns:
        The fits, in order.
    """
    out: list[MixtureFit | None] = [None] * len(jobs)
    pool = _pool()
    plans: dict[int, Plan] = {}
    stages: dict[int, list[tuple[np.ndarray, float] | None]] = {}
    pending: dict[Future[tuple[np.ndarray, float]], tuple[int, int]] = {}

    def submit(j: int, runs: list[Run]) -> None:
        stages[j] = [None] * len(runs)
        for slot, run in enumerate(runs):
            pending[pool.submit(_run, run)] = (j, slot)

    for j, (histogram, start, warm) in enumerate(jobs):
        if float(histogram.counts.sum()) <= 0:
            out[j] = _empty_fit(histogram)
            continue
        plans[j] = _plan(histogram, start, warm)
        submit(j, next(plans[j]))
    # A plan's next stage is submitted as soon as its own runs end, so the pool's threads stay busy.
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            j, slot = pending.pop(future)
            stage = stages[j]
            stage[slot] = future.result()
            if all(result is not None for result in stage):
                try:
                    submit(j, plans[j].send(stage))  # type: ignore[arg-type]
                except StopIteration as done:
                    out[j] = done.value
    return [fit for fit in out if fit is not None]
