"""anonlink's candidate order, fast: similarity descending, then ``(dataset_a, dataset_b, row_a, row_b)``.

``np.lexsort`` over the five keys took 11.7 s for the 13M pairs a 4 x 100k round finds at the
calibration floor. Here the four indices are packed into one 64-bit key (when they fit) and the
pairs are bucketed by similarity in one counting pass (the bucket of a similarity is a monotone
function of it, so buckets come in similarity order), then each bucket is sorted by
``(-similarity, key)``. Dice values of ``b``-bit encodings are fractions ``2c / s`` with ``s <= 2b``,
at least ``1 / (2b)^2`` apart, so with about one bucket per pair most buckets hold one similarity
value and few pairs; the result is exactly ``np.lexsort((r_b, r_a, d_b, d_a, -sims))`` whatever the
values are (``tests/coordinator/test_greedy.py``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["candidate_order"]


@njit(cache=True, nogil=True)
def _sort_segment(sims: np.ndarray, key: np.ndarray, seg: np.ndarray) -> None:
    """Sort ``seg`` (indices) in place by similarity descending, then key ascending."""
    m = len(seg)
    if m < 24:  # insertion sort: most buckets hold a handful of pairs
        for i in range(1, m):
            x = seg[i]
            j = i - 1
            while j >= 0 and (sims[seg[j]] < sims[x] or (sims[seg[j]] == sims[x] and key[seg[j]] > key[x])):
                seg[j + 1] = seg[j]
                j -= 1
            seg[j + 1] = x
        return
    by_key = seg[np.argsort(key[seg], kind="mergesort")]
    first = sims[seg[0]]
    for i in range(1, m):
        if sims[seg[i]] != first:
            seg[:] = by_key[np.argsort(-sims[by_key], kind="mergesort")]
            return
    seg[:] = by_key  # one similarity (the usual case: about one bucket per pair): ordered by key


@njit(cache=True, nogil=True)
def _order(sims: np.ndarray, key: np.ndarray, bucket: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The order, using ``bucket`` (one per pair) and ``start`` (zeros, one more than the pairs) as scratch."""
    n = len(sims)
    lo, hi = sims.min(), sims.max()
    buckets = max(n, 1)
    scale = (buckets - 1) / (hi - lo) if hi > lo else 0.0
    for i in range(n):
        b = min(max(int((hi - sims[i]) * scale), 0), buckets - 1)  # monotone: higher similarity, lower bucket
        bucket[i] = b
        start[b + 1] += 1
    for b in range(buckets):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[fill[bucket[i]]] = i
        fill[bucket[i]] += 1
    for b in range(buckets):
        if start[b + 1] - start[b] > 1:
            _sort_segment(sims, key, order[start[b] : start[b + 1]])
    return order


def candidate_order(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray,
                    r_b: np.ndarray) -> np.ndarray:
    """The permutation ``np.lexsort((r_b, r_a, d_b, d_a, -sims))`` gives, computed faster.

    Args:
        sims: similarities (float64).
        d_a: first record's dataset (non-negative integers).
        d_b: second record's dataset.
        r_a: first record's row.
        r_b: second record's row.

    Returns:
        The permutation (int64).

    Examples:
        >>> candidate_order(np.array([0.7, 0.9, 0.7]), *(np.array([0, 0, 0]),) * 2,
        ...                 np.array([2, 0, 1]), np.array([0, 0, 0])).tolist()
        [1, 2, 0]
    """
    if len(sims) == 0:
        return np.zeros(0, dtype=np.int64)
    widths = [max(int(x.max()), 0).bit_length() for x in (d_a, d_b, r_a, r_b)]
    sims = np.ascontiguousarray(sims, dtype=np.float64)
    if sum(widths) > 63 or not np.isfinite(sims).all():
        return np.lexsort((r_b, r_a, d_b, d_a, -sims))
    key = np.zeros(len(sims), dtype=np.int64)
    for column, width in zip((d_a, d_b, r_a, r_b), widths, strict=True):
        key <<= width
        key |= np.asarray(column, dtype=np.int64)
    # 32-bit scratch where the pairs allow: at the floor of a large round every byte per pair counts.
    scratch = np.int32 if len(sims) < 2**31 - 1 else np.int64
    return _order(sims, key, np.empty(len(sims), dtype=scratch), np.zeros(len(sims) + 1, dtype=scratch))
