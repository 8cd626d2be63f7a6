"""Compiled helpers for blocking: band keys from sampled bits, bucket sizes per band, bucket joins.

numpy spent most of a match building band keys (unpacking every bit, transposing) and counting
bucket sizes with full-table passes; these numba loops read each encoding once, from the cache,
and touch only the keys that occur. They release the GIL, so callers run them on threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["bucket_census", "bit_word_shifts", "merge_join", "pack_keys"]


def bit_word_shifts(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each bit position lies in little-endian uint64 words of big-endian-packed bytes.

    Bit ``p`` is bit ``7 - p % 8`` of byte ``p // 8``; byte ``k`` is bits ``8 * (k % 8)`` and up
    of word ``k // 8``.

    Args:
        positions: bit positions, any shape.

    Returns:
        ``(word, shift)`` int64 arrays of the same shape: the bit is ``(words[word] >> shift) & 1``.

    Examples:
        >>> [a.tolist() for a in bit_word_shifts(np.array([0, 7, 8, 64]))]
        [[0, 0, 0, 1], [7, 0, 15, 7]]
    """
    positions = np.asarray(positions, dtype=np.int64)
    return positions // 64, 8 * ((positions // 8) % 8) + 7 - positions % 8


@njit(nogil=True, cache=True)
def pack_keys(words: np.ndarray, word: np.ndarray, shift: np.ndarray, out: np.ndarray, first: int, last: int) -> None:
    """Set ``out[r, band]`` to the bits ``(word[band, t], shift[band, t])`` of row ``r``, bit ``t`` first.

    Rows ``first:last`` only, so that threads can share the work.
    """
    bands, width = word.shape
    for row in range(first, last):
        for band in range(bands):
            key = np.uint64(0)
            for t in range(width):
                key |= ((words[row, word[band, t]] >> np.uint64(shift[band, t])) & np.uint64(1)) << np.uint64(t)
            out[row, band] = key


def bucket_census(columns: list[np.ndarray], cap: int) -> tuple[np.ndarray, int]:
    """Cross-dataset pairs per key in one band: which keys exceed ``cap``, and the largest that does not.

    Sorts each key tagged with its dataset in the low bits once (a compiled radix sort: two
    passes of 12-bit digits for 21-bit keys, several times faster than numpy's sort) and counts the runs
    in a compiled loop: far cheaper than key-indexed tables, whose random
    accesses miss the cache.

    Args:
        columns: the band's keys, one array per dataset (keys below ``2**(63 - tag bits)``).
        cap: most pairs a bucket may give.

    Returns:
        ``(giant_keys, largest)``: the keys whose buckets give more than ``cap`` pairs (ascending),
        and the most pairs any other bucket gives.

    Examples:
        >>> giant, largest = bucket_census([np.array([1, 1, 2]), np.array([1, 2, 2, 3])], cap=1)
        >>> giant.tolist(), largest
        ([1, 2], 0)
    """
    tag_bits = max(1, (len(columns) - 1).bit_length())
    tagged = np.empty(sum(len(c) for c in columns), dtype=np.int64)
    first = 0
    for d, column in enumerate(columns):
        part = tagged[first : first + len(column)]
        np.left_shift(column, tag_bits, out=part, dtype=np.int64)
        part |= d
        first += len(column)
    from coordinator.linkage.band_kernels import radix_sort

    if len(tagged) and tagged.min() < 0:
        # Keys too wide for their tag (never with valid blocking settings): numpy's signed order.
        tagged.sort()
        return _census_runs(tagged, tag_bits, cap)
    return _census_runs(radix_sort(tagged), tag_bits, cap)


@njit(nogil=True, cache=True)
def _census_runs(tagged: np.ndarray, tag_bits: int, cap: int) -> tuple[np.ndarray, int]:
    giant = np.empty(tagged.shape[0], dtype=np.int64)
    n_giant = 0
    largest = 0
    i = 0
    while i < tagged.shape[0]:
        key = tagged[i] >> tag_bits
        total = 0
        squares = 0
        while i < tagged.shape[0] and tagged[i] >> tag_bits == key:
            tag = tagged[i]
            run = 0
            while i < tagged.shape[0] and tagged[i] == tag:
                run += 1
                i += 1
            total += run
            squares += run * run
        pairs = (total * total - squares) // 2
        if pairs > cap:
            giant[n_giant] = key
            n_giant += 1
        elif pairs > largest:
            largest = pairs
    return giant[:n_giant].copy(), largest


@njit(nogil=True, cache=True)
def merge_join(keys_a: np.ndarray, keys_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the keys two ascending, distinct key arrays share: ``keys_a[ia] == keys_b[ib]``."""
    size = min(keys_a.shape[0], keys_b.shape[0])
    ia = np.empty(size, dtype=np.int64)
    ib = np.empty(size, dtype=np.int64)
    i = j = n = 0
    while i < keys_a.shape[0] and j < keys_b.shape[0]:
        if keys_a[i] < keys_b[j]:
            i += 1
        elif keys_b[j] < keys_a[i]:
            j += 1
        else:
            ia[n] = i
            ib[n] = j
            n += 1
            i += 1
            j += 1
    return ia[:n], ib[:n]
