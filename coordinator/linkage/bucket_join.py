"""Joining two agencies' records on one band's keys: sort each side once, then walk equal keys.

Used where pairs are found one band at a time outside the fused kernels (the incremental round's
new rows against its state, and tests of the blocking rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["BucketJoin", "SortedBand", "iter_pair_chunks", "join_bands", "sort_band"]


@dataclass(frozen=True)
class SortedBand:
    """One dataset's records grouped by their key in one band.

    Attributes:
        order: record indices sorted by key.
        keys: distinct keys (the skipped sentinel left out), ascending.
        starts: where each key's records begin in ``order``.
        counts: how many records hold each key.
    """

    order: np.ndarray
    keys: np.ndarray
    starts: np.ndarray
    counts: np.ndarray


def sort_band(column: np.ndarray, sentinel: int) -> SortedBand:
    """Group one dataset's records by key in one band.

    Args:
        column: each record's key in this band.
        sentinel: the key of skipped records; they are left out of every bucket.

    Returns:
        The grouping.

    Examples:
        >>> band = sort_band(np.array([5, 3, 5, 9], dtype=np.uint32), sentinel=9)
        >>> band.keys.tolist(), band.counts.tolist(), band.order[band.starts[1]:].tolist()
        ([3, 5], [1, 2], [0, 2, 3])
    """
    if column.dtype == np.uint32 and len(column) < 2**32:
        # Sorting (key, row) packed in one uint64 is several times faster than a stable argsort
        # and gives the same order.
        packed = (column.astype(np.uint64) << np.uint64(32)) | np.arange(len(column), dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
        ordered = (packed >> np.uint64(32)).astype(np.uint32)
    else:
        order = np.argsort(column, kind="stable")
        ordered = column[order]
    if len(ordered) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return SortedBand(order=order, keys=ordered, starts=empty, counts=empty)
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    counts = np.diff(np.append(starts, len(ordered)))
    keys = ordered[starts]
    keep = keys != sentinel
    return SortedBand(order=order, keys=keys[keep], starts=starts[keep], counts=counts[keep])


@dataclass(frozen=True)
class BucketJoin:
    """The buckets two datasets share in one band.

    Attributes:
        order_a: record indices of the first dataset, sorted by key.
        order_b: the same for the second dataset.
        start_a: where each shared bucket begins in ``order_a``.
        count_a: its size in the first dataset.
        start_b: where it begins in ``order_b``.
        count_b: its size in the second dataset.
        ends: cumulative pair counts: the pairs of bucket ``k`` are numbered ``ends[k-1]..ends[k]``.
    """

    order_a: np.ndarray
    order_b: np.ndarray
    start_a: np.ndarray
    count_a: np.ndarray
    start_b: np.ndarray
    count_b: np.ndarray
    ends: np.ndarray

    @property
    def pairs(self) -> int:
        """Number of candidate pairs in this join."""
        return int(self.ends[-1]) if len(self.ends) else 0


def join_bands(a: SortedBand, b: SortedBand) -> BucketJoin:
    """Match up the buckets of two datasets in the same band.

    Args:
        a: the first dataset's grouping.
        b: the second dataset's grouping.

    Returns:
        The shared buckets, with their pair numbering.
    """
    from coordinator.linkage.block_kernels import merge_join

    ia, ib = merge_join(a.keys, b.keys)
    count_a, count_b = a.counts[ia].astype(np.int64), b.counts[ib].astype(np.int64)
    return BucketJoin(
        order_a=a.order,
        order_b=b.order,
        start_a=a.starts[ia].astype(np.int64),
        count_a=count_a,
        start_b=b.starts[ib].astype(np.int64),
        count_b=count_b,
        ends=np.cumsum(count_a * count_b),
    )


def iter_pair_chunks(join: BucketJoin, chunk_pairs: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the join's candidate pairs as row-index arrays, at most ``chunk_pairs`` at a time.

    Pairs come bucket by bucket, and within a bucket row by row, so that consecutive pairs touch
    the same few encodings (cache friendly); a bucket larger than a chunk spans several chunks.

    Args:
        join: shared buckets from :func:`join_bands`.
        chunk_pairs: most pairs per chunk.

    Yields:
        ``(rows_a, rows_b)``: record indices in the first and second dataset, as int64 arrays.

    Examples:
        >>> a = sort_band(np.array([1, 2, 1], dtype=np.uint32), sentinel=99)
        >>> b = sort_band(np.array([1, 1, 7], dtype=np.uint32), sentinel=99)
        >>> [(x.tolist(), y.tolist()) for x, y in iter_pair_chunks(join_bands(a, b), 3)]
        [([0, 0, 2], [0, 1, 0]), ([2], [1])]
    """
    total = join.pairs
    for first in range(0, total, chunk_pairs):
        last = min(first + chunk_pairs, total)
        k0 = int(np.searchsorted(join.ends, first, side="right"))
        k1 = int(np.searchsorted(join.ends, last - 1, side="right")) + 1
        ends = join.ends[k0:k1]
        begins = ends - join.count_a[k0:k1] * join.count_b[k0:k1]
        per_bucket = np.minimum(ends, last) - np.maximum(begins, first)
        bucket = np.repeat(np.arange(k0, k1), per_bucket)
        offset = np.arange(first, last) - np.repeat(begins, per_bucket)
        width = join.count_b[bucket]
        rows_a = join.order_a[join.start_a[bucket] + offset // width]
        rows_b = join.order_b[join.start_b[bucket] + offset % width]
        yield rows_a, rows_b
