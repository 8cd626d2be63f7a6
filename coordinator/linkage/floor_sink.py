"""Bound the pairs an automatic round keeps at its calibration floor: the floor rises with the round's size.

An automatic round compares at the calibration floor (0.55) and keeps the pairs at or above it
for several solves (:mod:`coordinator.linkage.auto`). At 4 x 100k that is 13M pairs (24 bytes
each); at 4 x 1M it is on the order of 1e9, and some 30M score 0.7 or more: past any memory target.

:class:`FloorSink` receives the comparison's batches as they arrive, holds their pairs, and
counts them per similarity bin (:data:`~coordinator.linkage.mixture.BINS` bins over [0, 1], the
calibration's). While the pairs below ``keep_all_from`` number at most ``bound``, nothing changes:
the round keeps every pair at or above its floor, exactly as an unbounded round does. Past that
the sink raises its floor to the lowest bin edge at or above which all its pairs (of any
similarity) number at most ``bound`` (never above ``highest``), drops what is below it, and the
comparison keeps nothing below it from then on (:attr:`FloorSink.floor` is the comparison
kernel's threshold).

The final floor does not depend on the order batches arrive in: a raised floor is always at or
below the floor the whole round's counts give, because the counts at or above a running floor are
exact (every pair at or above it was counted) and only grow, and whether the pairs below
``keep_all_from`` pass the bound is known as soon as they do. So the raised floor is the lowest
edge whose pairs fit the bound, as if all pairs had been counted first, at the cost of one pass;
the round is then an exact round at that floor, and the calibration fits ``[floor, 1]``.

A comparison may hand over a pair more than once (once per band that finds it, below
:data:`~coordinator.linkage.compare.REPEATS_BELOW`; the round's solve drops the repeats) while the
sink holds everything (:attr:`FloorSink.repeats`): repeats cannot change what an unbounded round
keeps. The counts behind the bound and a raised floor must be distinct pairs', though (counted with
repeats, the 4 x 1M round's floor rose one bin higher and its estimated precision fell from 0.962 to
0.886 against a true 0.969). So once the pairs below ``keep_all_from``, repeats included, pass the
bound, the sink refuses every batch (:attr:`FloorSink.refused`), the comparison stops, and it starts
again, every pair checked and handed over once (:func:`~coordinator.linkage.compare.compare_datasets`),
into the sink started afresh (:meth:`FloorSink.restart`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from numba import njit

from coordinator.linkage.mixture import BINS

__all__ = ["FloorSink", "lowest_fitting_floor"]

#: Bin edges: ``EDGES[i] <= s < EDGES[i + 1]`` is bin ``i`` (the calibration histogram's bins).
EDGES = np.arange(BINS + 1, dtype=np.float64) / BINS


def _bins(sims: np.ndarray) -> np.ndarray:
    """Each similarity's bin, exact at the edges (``s >= EDGES[i]`` iff its bin is at least ``i``)."""
    return np.searchsorted(EDGES, sims, side="right") - 1


@njit(nogil=True, cache=True)
def _tally(sims, floor, keep_all_from, edges, counts):  # noqa: ANN001, ANN202
    """Count the similarities at or above ``floor`` into ``counts`` by :func:`_bins`.

    Returns:
        How many were counted, and how many of those are below ``keep_all_from``.
    """
    top = edges.shape[0] - 1
    held = 0
    below = 0
    for s in sims:
        if not s >= floor:
            continue
        # ``s * top`` is within one of the bin; the edges themselves decide, as ``_bins``'s search does.
        at = min(max(int(s * top), 0), top)
        while at < top and s >= edges[at + 1]:
            at += 1
        while at > 0 and s < edges[at]:
            at -= 1
        counts[at] += 1
        held += 1
        if s < keep_all_from:
            below += 1
    return held, below


def lowest_fitting_floor(counts: np.ndarray, start: float, highest: float, bound: int) -> float:
    """The lowest floor, ``start`` or a bin edge above it, whose counted pairs number at most ``bound``.

    Args:
        counts: pairs per bin (``len(EDGES)`` values), exact from ``start``'s bin on.
        start: the lowest floor allowed (all counted pairs are at or above it).
        highest: the highest floor allowed, taken if no lower one fits.
        bound: the most pairs the floor may leave.

    Returns:
        ``start`` if all counted pairs fit, else the lowest edge above it that fits (at most ``highest``).

    >>> counts = np.zeros(len(EDGES), dtype=np.int64)
    >>> counts[[110, 120, 130, 150]] = [50, 30, 20, 10]
    >>> [lowest_fitting_floor(counts, 0.55, 0.7, bound) for bound in (110, 60, 5)]
    [0.55, 0.555, 0.7]
    """
    at = int(_bins(np.array([start]))[0])
    if int(counts[at:].sum()) <= bound:
        return start
    above = np.cumsum(counts[::-1])[::-1]  # above[i]: pairs at or above EDGES[i]
    fits = np.flatnonzero(above[at + 1 :] <= bound)
    edge = float(EDGES[at + 1 + int(fits[0])]) if len(fits) else highest
    return min(edge, highest)


class FloorSink:
    """Receives a comparison's kept pairs and holds them; once they are many, the floor rises so they fit a bound.

    Args:
        floor: the comparison's threshold (the round's floor until it rises).
        keep_all_from: the floor stays while the pairs below this number at most ``bound`` (as
            before the floor could rise, when only these were bounded).
        bound: the most pairs below ``keep_all_from`` kept at ``floor``, and, once those are more, the
            most pairs of any similarity the raised floor keeps.
        highest: the floor never rises above this (pairs at or above it are all kept).

    Attributes:
        floor: pairs below it are not kept; the comparison reads it as its threshold.
        raised: whether the floor rose.
        repeats: whether the batches may repeat pairs (set by the comparison): the sink then
            refuses them rather than bound them (see the module's docstring).
        refused: whether it refused (every batch from then on): the comparison stops and runs again.
    """

    def __init__(self, floor: float, keep_all_from: float, bound: int, highest: float) -> None:
        self.start, self.keep_all_from, self.bound = floor, keep_all_from, bound
        self.highest = max(highest, floor)
        self.most_held = 0  # over every run of the comparison: the memory's peak
        self.lock = threading.Lock()
        self.restart()

    def restart(self, *, repeats: bool = False) -> None:
        """Forget every pair and count: the floor back at its start, for a comparison run again."""
        self.floor = self.start
        self.repeats = repeats
        self.refused = False
        self.counts = np.zeros(len(EDGES), dtype=np.int64)
        self.below_keep_all = 0
        self.bounded = False
        self.held: list[tuple[np.ndarray, ...]] = []
        self.held_pairs = 0

    @property
    def raised(self) -> bool:
        """Whether the floor rose."""
        return self.floor > self.start

    def take(self, dset_a: np.ndarray, dset_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
             sims: np.ndarray) -> tuple[np.ndarray, ...]:
        """Take a batch (the comparison kernel's scratch): hold a copy of its pairs at or above the floor.

        Returns:
            Nothing to keep: empty slices of the batch (every pair is handed out by :meth:`drain`).
        """
        # The floor may have risen since the batch was scored: one compiled pass counts the pairs at
        # or above it per bin, and the batch is filtered only if some fall below it.
        floor = self.floor
        sims = np.asarray(sims, dtype=np.float64)
        counts = np.zeros(len(EDGES), dtype=np.int64)
        held, below = _tally(sims, floor, self.keep_all_from, EDGES, counts)
        # Held as the comparison keeps pairs (uint32 datasets and rows, float64 similarities: 24 bytes),
        # copied out of the caller's scratch.
        if held == len(sims):
            kept = (*(np.array(a, dtype=np.uint32) for a in (dset_a, dset_b, rows_a, rows_b)), sims.copy())
        else:
            keep = sims >= floor
            kept = (*(a[keep].astype(np.uint32) for a in (dset_a, dset_b, rows_a, rows_b)), sims[keep])
        if held:
            with self.lock:
                # Once refused, every later batch is too: the comparison's other threads stop at their next.
                self.refused = self.refused or (self.repeats and self.below_keep_all + below > self.bound)
                if self.refused:
                    return tuple(a[:0] for a in (dset_a, dset_b, rows_a, rows_b, sims))
                self.counts += counts
                self.below_keep_all += below
                self.held.append(kept)
                self.held_pairs += len(kept[4])
                self.most_held = max(self.most_held, self.held_pairs)
                # Monotone in the pairs found: whether it ends true does not depend on their order.
                self.bounded = self.bounded or self.below_keep_all > self.bound
                if self.bounded and self.held_pairs > self.bound:
                    self._rise()
        return tuple(a[:0] for a in (dset_a, dset_b, rows_a, rows_b, sims))

    def _rise(self) -> None:
        """Raise the floor to the lowest fitting edge; drop the held pairs below it once they are many."""
        floor = lowest_fitting_floor(self.counts, self.floor, self.highest, self.bound)
        if floor > self.floor:
            self.floor = floor
            # Counts below the floor's bin are never read again (a floor only rises).
            self.counts[: int(_bins(np.array([floor]))[0])] = 0
        # Filtering costs a pass over the held pairs: done when they pass the bound by a quarter, so
        # each held pair is filtered a few times at most.
        if self.held_pairs > self.bound + max(self.bound // 4, 1):
            for i, batch in enumerate(self.held):  # one batch at a time: each original goes as it is replaced
                keep = batch[4] >= self.floor
                self.held[i] = tuple(a[keep] for a in batch)
            self.held_pairs = sum(len(batch[4]) for batch in self.held)

    def drain(self) -> Iterator[tuple[np.ndarray, ...]]:
        """The held pairs at or above the final floor (every held pair if it never rose), batch by batch.

        Each batch leaves the sink as it is yielded (in the order they arrived), so that draining
        into the caller's own lists holds the pairs once.
        """
        # No rise here: the take that left the final counts rose already if it had to.
        held, self.held, self.held_pairs = self.held, [], 0
        held.reverse()
        while held:
            batch = held.pop()
            if self.raised:
                keep = batch[4] >= self.floor
                batch = tuple(a[keep] for a in batch)
            yield batch
