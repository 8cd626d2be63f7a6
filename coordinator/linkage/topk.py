"""Bound the pairs an automatic round keeps at its low calibration floor: each record's best few below a bound.

An automatic round compares at the calibration floor (0.55) and keeps the pairs at or above it
for several solves (:mod:`coordinator.linkage.auto`). At 4 x 100k that is 13M pairs (24 bytes
each); at 4 x 1M it is on the order of 1e9, past any memory target. Most of them are strangers
that a one-to-one greedy solve never links: a record is linked to at most one record of each
other agency, and the greedy solver takes pairs best first, so a pair that is not among either
record's best few in that agency is almost never taken.

:class:`PairSink` receives the comparison's batches as they arrive. It keeps every pair at or
above ``keep_all_from`` (so a solve at a threshold at or above it is exact), and passes the rest
through unchanged until their number passes ``engage_above``: small rounds keep every pair and
stay exact. Past that it keeps, below the bound, only each record's best ``k`` pairs per other
agency (ranked by similarity, ties by the other record's global number, lower first), in a
compiled streaming top-k of ``records x agencies x k`` slots. A pair is kept if it is among the
best ``k`` of either of its records; since a record's best ``k`` among all its pairs are its best
``k`` among any subset that holds them, the streamed result is exactly the top-k of all pairs
(:func:`top_k_pairs` is the reference, ``tests/coordinator/test_topk.py`` checks the two agree).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

__all__ = ["PairSink", "top_k_pairs"]


@njit(cache=True, nogil=True)
def _better(sim: float, partner: int, sim2: float, partner2: int) -> bool:
    """Whether ``(sim, partner)`` ranks before ``(sim2, partner2)``: higher similarity, then lower partner."""
    return sim > sim2 or (sim == sim2 and partner < partner2)


@njit(cache=True, nogil=True)
def _insert(best_sim: np.ndarray, best_node: np.ndarray, slot: int, sim: float, partner: int) -> None:
    """Insert a pair into one record-and-agency's sorted list of ``k`` slots, if it ranks among them."""
    k = best_sim.shape[1]
    if not _better(sim, partner, best_sim[slot, k - 1], best_node[slot, k - 1]):
        return
    at = k - 1
    while at > 0 and _better(sim, partner, best_sim[slot, at - 1], best_node[slot, at - 1]):
        best_sim[slot, at] = best_sim[slot, at - 1]
        best_node[slot, at] = best_node[slot, at - 1]
        at -= 1
    best_sim[slot, at] = sim
    best_node[slot, at] = partner


@njit(cache=True, nogil=True)
def _stream(best_sim, best_node, offsets, n_sets, dset_a, dset_b, rows_a, rows_b, sims, bound):  # noqa: ANN001, ANN202
    """Stream a batch's pairs below ``bound`` into both records' slots; move those at or above it to the front.

    Returns how many pairs are at or above the bound (now the batch's first, in their order).
    """
    high = 0
    for i in range(len(sims)):
        if sims[i] >= bound:
            dset_a[high], dset_b[high], rows_a[high], rows_b[high], sims[high] = (
                dset_a[i], dset_b[i], rows_a[i], rows_b[i], sims[i])
            high += 1
            continue
        a = offsets[dset_a[i]] + rows_a[i]
        b = offsets[dset_b[i]] + rows_b[i]
        _insert(best_sim, best_node, a * n_sets + dset_b[i], sims[i], b)
        _insert(best_sim, best_node, b * n_sets + dset_a[i], sims[i], a)
    return high


@njit(cache=True, nogil=True)
def _drain(best_sim, best_node, node_set, offsets, n_sets):  # noqa: ANN001, ANN202
    """Every kept pair once, from its lower-numbered record's side or, if not kept there, its higher one's."""
    k = best_sim.shape[1]
    n = len(node_set)
    total = 0
    for slot in range(best_sim.shape[0]):
        for j in range(k):
            if best_node[slot, j] >= 0:
                total += 1
    out_a = np.empty(total, dtype=np.int64)
    out_b = np.empty(total, dtype=np.int64)
    out_s = np.empty(total, dtype=np.float64)
    count = 0
    for node in range(n):
        for other_set in range(n_sets):
            slot = node * n_sets + other_set
            for j in range(k):
                partner = best_node[slot, j]
                if partner < 0:
                    break
                if partner < node:
                    # Kept at the partner's side too? Then it was emitted there.
                    back = partner * n_sets + node_set[node]
                    seen = False
                    for m in range(k):
                        if best_node[back, m] == node:
                            seen = True
                            break
                    if seen:
                        continue
                    out_a[count], out_b[count] = partner, node
                else:
                    out_a[count], out_b[count] = node, partner
                out_s[count] = best_sim[slot, j]
                count += 1
    return out_a[:count], out_b[:count], out_s[:count]


def _to_rows(nodes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global record numbers as ``(dataset, row)`` (uint32)."""
    sets = np.searchsorted(offsets, nodes, side="right") - 1
    return sets.astype(np.uint32), (nodes - offsets[sets]).astype(np.uint32)


def top_k_pairs(
    sizes: list[int], dset_a: np.ndarray, dset_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
    sims: np.ndarray, k: int,
) -> np.ndarray:
    """Which pairs are among the best ``k`` of either record in the other's agency (the reference, by sorting).

    Args:
        sizes: records per dataset.
        dset_a: first record's dataset per pair.
        dset_b: second record's dataset per pair.
        rows_a: first record's row.
        rows_b: second record's row.
        sims: similarities.
        k: pairs kept per record and other agency.

    Returns:
        A boolean mask over the pairs.

    >>> top_k_pairs([2, 2], np.array([0, 0, 0]), np.array([1, 1, 1]), np.array([0, 0, 1]),
    ...             np.array([0, 1, 1]), np.array([0.9, 0.8, 0.85]), 1).tolist()
    [True, False, True]
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    nodes_a = offsets[np.asarray(dset_a, dtype=np.int64)] + rows_a
    nodes_b = offsets[np.asarray(dset_b, dtype=np.int64)] + rows_b
    keep = np.zeros(len(sims), dtype=bool)
    n_sets = len(sizes)
    for own, other, other_set in ((nodes_a, nodes_b, dset_b), (nodes_b, nodes_a, dset_a)):
        group = own * n_sets + np.asarray(other_set, dtype=np.int64)
        order = np.lexsort((other, -np.asarray(sims, dtype=np.float64), group))
        grouped = group[order]
        starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]]))
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(order)]])))
        keep[order[rank < k]] = True
    return keep


class PairSink:
    """Receives a comparison's kept pairs; keeps all at or above a bound and, once many, the best few below.

    Args:
        sizes: records per dataset.
        keep_all_from: pairs at or above this are all kept.
        k: pairs kept per record and other agency below the bound, once pruning is engaged.
        engage_above: pairs below the bound held in full until there are more than this.
    """

    def __init__(self, sizes: list[int], keep_all_from: float, k: int, engage_above: int) -> None:
        self.sizes, self.keep_all_from, self.k, self.engage_above = list(sizes), keep_all_from, k, engage_above
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.held: list[tuple[np.ndarray, ...]] = []
        self.held_pairs = 0
        self.best_sim: np.ndarray | None = None
        self.best_node: np.ndarray | None = None
        self.streamed = 0
        self.pruned = False
        self.lock = threading.Lock()

    def take(self, dset_a: np.ndarray, dset_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray,
             sims: np.ndarray) -> tuple[np.ndarray, ...]:
        """Take a batch: returns its pairs at or above the bound (the caller keeps them); holds or prunes the rest.

        Once pruning, the batch's arrays (the comparison kernel's scratch, int64 and float64) are
        reordered in place.
        """
        if self.best_sim is not None:
            with self.lock:
                if self.best_sim is not None:
                    high, batch = self._stream((dset_a, dset_b, rows_a, rows_b, sims))
                    return tuple(a[:high] for a in batch)
        high = sims >= self.keep_all_from
        low = ~high
        if not low.any():
            return dset_a, dset_b, rows_a, rows_b, sims
        # Held as the comparison keeps pairs (uint32 datasets and rows, float64 similarities: 24 bytes).
        below = (*(a[low].astype(np.uint32) for a in (dset_a, dset_b, rows_a, rows_b)), sims[low].astype(np.float64))
        with self.lock:
            if self.best_sim is None:
                self.held.append(below)
                self.held_pairs += len(below[4])
                if self.held_pairs > self.engage_above:
                    self._engage()
            else:  # engaged by another thread since the check above
                self._stream(below)
        return tuple(a[high] for a in (dset_a, dset_b, rows_a, rows_b, sims))

    def _engage(self) -> None:
        slots = int(self.offsets[-1]) * len(self.sizes)
        self.pruned = True
        self.best_sim = np.full((slots, self.k), -1.0)
        self.best_node = np.full((slots, self.k), -1, dtype=np.int32 if self.offsets[-1] < 2**31 else np.int64)
        while self.held:
            self._stream(self.held.pop())
        self.held_pairs = 0

    def _stream(self, batch: tuple[np.ndarray, ...]) -> tuple[int, tuple[np.ndarray, ...]]:
        """Stream a batch: ``(count, arrays)``, the ``count`` pairs at or above the bound moved first.

        The arrays are the batch's own (reordered in place) where they are int64 and float64 already.
        """
        arrays = (*(np.ascontiguousarray(a, dtype=np.int64) for a in batch[:4]),
                  np.ascontiguousarray(batch[4], dtype=np.float64))
        high = _stream(self.best_sim, self.best_node, self.offsets, len(self.sizes), *arrays, self.keep_all_from)
        self.streamed += len(arrays[4]) - high
        return high, arrays

    def drain(self) -> list[tuple[np.ndarray, ...]]:
        """The pairs below the bound that are kept: all of them, or (engaged) each record's best ``k``."""
        if self.best_sim is None:
            held, self.held = self.held, []
            return held
        node_set = np.repeat(np.arange(len(self.sizes)), self.sizes)
        a, b, s = _drain(self.best_sim, self.best_node, node_set, self.offsets, len(self.sizes))
        self.best_sim = self.best_node = None
        set_a, row_a = _to_rows(a, self.offsets)
        set_b, row_b = _to_rows(b, self.offsets)
        return [(set_a, set_b, row_a, row_b, s)]
