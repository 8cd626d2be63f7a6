"""Each agency pair's own one-to-one solve of a round's candidates, from one pass over them.

An automatic round solves each agency pair's candidates on its own (:mod:`coordinator.linkage.auto`).
Selecting them with a mask per pair reads every candidate six times at four agencies, and each
selection's solve numbers every record of the round. Here one counting pass puts the positions of
each pair's candidates together (candidate order kept), and each pair's solve reads only its own
pairs and numbers only its two agencies' records: the greedy solver's groups do not depend on how
the records are numbered, so the links are the same (``tests/coordinator/test_pair_split.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from coordinator.linkage.greedy import greedy_roots
from coordinator.linkage.match import Candidates

__all__ = ["AgencyPairs", "pair_links", "same_label_rows", "sorted_label_rows"]


@njit(cache=True, nogil=True)
def _count(d_a: np.ndarray, d_b: np.ndarray, agencies: int) -> np.ndarray:
    """Start of each ``d_a * agencies + d_b`` code's run (one more entry than codes)."""
    start = np.zeros(agencies * agencies + 1, dtype=np.int64)
    for i in range(len(d_a)):
        if d_a[i] < agencies and d_b[i] < agencies:
            start[d_a[i] * agencies + d_b[i] + 1] += 1
    for c in range(agencies * agencies):
        start[c + 1] += start[c]
    return start


@njit(cache=True, nogil=True)
def _place(d_a: np.ndarray, d_b: np.ndarray, agencies: int, start: np.ndarray) -> np.ndarray:
    """Each candidate's position into its code's run, in candidate order.

    The array is numba's (small pages): see :func:`coordinator.linkage.candidate_order._sort_keys`.
    """
    positions = np.empty(start[-1], dtype=np.int64)
    fill = start[:-1].copy()
    for i in range(len(d_a)):
        if d_a[i] < agencies and d_b[i] < agencies:
            c = d_a[i] * agencies + d_b[i]
            positions[fill[c]] = i
            fill[c] += 1
    return positions


@njit(cache=True, nogil=True)
def _nodes(r_a: np.ndarray, r_b: np.ndarray, positions: np.ndarray, offset: int, u: np.ndarray,
           v: np.ndarray) -> None:
    """Node numbers of a run's pairs: first agency's rows, then the second's after ``offset``."""
    for j in range(len(positions)):
        p = positions[j]
        u[j] = r_a[p]
        v[j] = offset + r_b[p]


@njit(cache=True, nogil=True)
def _same_label_rows(labels_a: np.ndarray, labels_b: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`same_label_rows` for labels in ``0..top``, by counting (no sort, no searches)."""
    start = np.zeros(top + 2, dtype=np.int64)
    for j in range(len(labels_b)):
        start[labels_b[j] + 1] += 1
    for x in range(top + 1):
        start[x + 1] += start[x]
    order = np.empty(len(labels_b), dtype=np.int64)  # rows of b by label, rows ascending within one
    fill = start[:-1].copy()
    for j in range(len(labels_b)):
        order[fill[labels_b[j]]] = j
        fill[labels_b[j]] += 1
    total = 0
    for i in range(len(labels_a)):
        x = labels_a[i]
        if 0 <= x <= top:
            total += start[x + 1] - start[x]
    rows_a = np.empty(total, dtype=np.int64)
    rows_b = np.empty(total, dtype=np.int64)
    k = 0
    for i in range(len(labels_a)):
        x = labels_a[i]
        if 0 <= x <= top:
            for at in range(start[x], start[x + 1]):
                rows_a[k] = i
                rows_b[k] = order[at]
                k += 1
    return rows_a, rows_b


def same_label_rows(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Every ``(row_a, row_b)`` whose labels are equal, by ``row_a`` then ``row_b``; ``None`` unless labels are dense.

    Cluster labels (``0..n_clusters-1``) and solver roots (node numbers) are non-negative integers no
    larger than a few times the rows: they are counted rather than sorted and searched.

    >>> same_label_rows(np.array([0, 1, 2]), np.array([2, 0, 0]))
    (array([0, 0, 2]), array([1, 2, 0]))
    """
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if labels_a.dtype.kind not in "iu" or labels_b.dtype.kind not in "iu":
        return None
    if not len(labels_b) or not len(labels_a):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    top = int(labels_b.max())
    if int(labels_b.min()) < 0 or top > 4 * (len(labels_a) + len(labels_b)) + 1024:
        return None
    return _same_label_rows(labels_a.astype(np.int64, copy=False), labels_b.astype(np.int64, copy=False), top)


def sorted_label_rows(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(row_a, row_b)`` whose labels are equal, by ``row_a`` then ``row_b``: any labels, sorted and searched.

    >>> sorted_label_rows(np.array([7, -3]), np.array([-3, 7, 7]))
    (array([0, 0, 1]), array([1, 2, 0]))
    """
    order_b = np.argsort(labels_b, kind="stable")
    sorted_b = labels_b[order_b]
    left = np.searchsorted(sorted_b, labels_a, side="left")
    counts = np.searchsorted(sorted_b, labels_a, side="right") - left
    rows_a = np.repeat(np.arange(len(labels_a)), counts)
    within = np.arange(len(rows_a)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows_a, order_b[np.repeat(left, counts) + within]


class AgencyPairs:
    """A round's candidates grouped by agency pair, each group in candidate order.

    Args:
        candidates: the round's scored pairs in anonlink's candidate order.
        agencies: how many agencies the round has.
    """

    def __init__(self, candidates: Candidates, agencies: int) -> None:
        _, (d_a, d_b), (self.r_a, self.r_b) = candidates
        self.agencies = agencies
        d_a, d_b = np.ascontiguousarray(d_a), np.ascontiguousarray(d_b)
        self.start = _count(d_a, d_b, agencies)
        self.positions = _place(d_a, d_b, agencies, self.start)

    def positions_of(self, d_a: int, d_b: int) -> np.ndarray:
        """Positions (in the candidates) of the pairs between agencies ``d_a`` and ``d_b``, in order."""
        code = d_a * self.agencies + d_b
        return self.positions[self.start[code] : self.start[code + 1]]


def pair_links(pairs: AgencyPairs, d_a: int, d_b: int, size_a: int, size_b: int, *,
               distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(rows_a, rows_b)`` linked by the greedy solve of agencies ``d_a`` and ``d_b``'s candidates alone.

    The same rows, in the same order (by ``rows_a``), as
    :func:`~coordinator.linkage.auto.same_cluster_rows` gives for those agencies' labels after
    :func:`~coordinator.linkage.match.solve_candidates` of the pair's selected candidates.
    ``distinct``: the candidates are known to hold no pair twice (a faster solve).
    """
    from coordinator.linkage.auto import same_cluster_rows

    at = pairs.positions_of(d_a, d_b)
    from coordinator.linkage.candidate_order import _empty_like

    # numba's arrays, in small pages (see candidate_order._sort_keys): a pair holds millions at a floor.
    like = np.zeros(0, dtype=np.int32 if size_a + size_b < 2**31 else np.int64)
    u, v = _empty_like(like, len(at)), _empty_like(like, len(at))
    _nodes(pairs.r_a, pairs.r_b, at, size_a, u, v)
    party = np.repeat(np.arange(2), [size_a, size_b])
    root = greedy_roots(u, v, size_a + size_b, party, distinct=distinct)
    alone = root < 0
    root[alone] = np.flatnonzero(alone)  # a record in no group is its own cluster
    return same_cluster_rows(root[:size_a], root[size_a:])
