"""Grouping one band's records by key: (key, record) entries radix-sorted on the key bits only.

Per band, each record's key and global number are packed in one uint64 (key above bit 32) and
sorted by a stable LSD radix sort on the key bits (two 11-bit passes for 21-bit keys, the digit
counts of every pass taken in one read), so the records of a key come out ascending, dataset by
dataset. The comparing walk (:mod:`coordinator.linkage.band_kernels`) and the bucket census of
blocking (:mod:`coordinator.linkage.block_kernels`) both read these entries.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["RECORD_BITS", "band_entries", "band_entries_into", "radix_sort", "radix_sort_bits", "sorted_entries"]

#: Most bits per radix digit: 4096 counters (32 KB) stay in the first-level cache.
_DIGIT = 12
#: Entries carry the key above this bit and the global record below it.
RECORD_BITS = 32


@njit(nogil=True, cache=True)
def _bit_length(value: np.uint64) -> int:
    bits = 0
    while value != np.uint64(0):
        value >>= np.uint64(1)
        bits += 1
    return bits


@njit(nogil=True, cache=True)
def _digit_bits(bits):  # noqa: ANN001, ANN202
    """Digit width for the fewest passes over ``bits`` bits (21 bits: two of 11; 23: two of 12)."""
    passes = max(1, (bits + _DIGIT - 1) // _DIGIT)
    return (bits + passes - 1) // passes if bits else 1


@njit(nogil=True, cache=True)
def radix_sort_bits(values, spare, low, bits):  # noqa: ANN001, ANN202
    """Stable LSD radix sort of uint64 ``values`` by their bits ``low .. low + bits - 1``.

    One read counts the digits of every pass; a pass whose digit is the same for every value is
    skipped. Returns whichever of ``values`` and ``spare`` holds the result (the other is scratch).
    """
    n = values.shape[0]
    if bits == 0 or n < 2:
        return values
    digit_bits = _digit_bits(bits)
    passes = (bits + digit_bits - 1) // digit_bits
    size = 1 << digit_bits
    mask = np.uint64(size - 1)
    counts = np.zeros((passes, size), dtype=np.int64)
    for i in range(n):
        value = values[i] >> np.uint64(low)
        for p in range(passes):
            counts[p, (value >> np.uint64(p * digit_bits)) & mask] += 1
    for p in range(passes):
        shift = np.uint64(low + p * digit_bits)
        total = 0
        single = False
        for digit in range(size):
            count = counts[p, digit]
            if count == n:
                single = True
            counts[p, digit] = total
            total += count
        if single:
            continue
        for i in range(n):
            value = values[i]
            digit = (value >> shift) & mask
            at = counts[p, digit]
            spare[at] = value
            counts[p, digit] = at + 1
        values, spare = spare, values
    return values


@njit(nogil=True, cache=True)
def radix_sort(values: np.ndarray) -> np.ndarray:
    """Ascending copy of a uint64 or int64 array of non-negative values (LSD radix, digits of at most 12 bits)."""
    keys = values.astype(np.uint64)
    top = np.uint64(0)
    for i in range(keys.shape[0]):
        top |= keys[i]
    out = radix_sort_bits(keys, np.empty_like(keys), 0, _bit_length(top))
    return out.astype(values.dtype)


@njit(nogil=True, cache=True)
def band_entries(column, sentinel):  # noqa: ANN001, ANN201
    """Every record's key in one band (records keyed ``sentinel`` left out), sorted by key, then by record.

    Args:
        column: the band's key of every record of all datasets, dataset after dataset (keys below
            ``2**32``; the global record number is the index).
        sentinel: the key of skipped records.

    Returns:
        uint64 entries ``key << 32 | record``, ascending.
    """
    n = column.shape[0]
    return band_entries_into(column, sentinel, np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64))


@njit(nogil=True, cache=True)
def band_entries_into(column, sentinel, entries, spare):  # noqa: ANN001, ANN201
    """:func:`band_entries` sorted in the caller's buffers (each at least ``len(column)`` long): a view of one.

    A caller comparing band after band reuses its buffers: fresh ones for every band cost more in
    first-touched pages than the sort itself (~0.35 s of CPU over 96 bands of 400k records).
    """
    n = column.shape[0]
    at = 0
    top = np.uint64(0)
    for record in range(n):
        key = column[record]
        if key != sentinel:
            entries[at] = (np.uint64(key) << np.uint64(RECORD_BITS)) | np.uint64(record)
            top |= np.uint64(key)
            at += 1
    return radix_sort_bits(entries[:at], spare[:at], RECORD_BITS, _bit_length(top))


def sorted_entries(column: np.ndarray, sentinel: int | None,
                   scratch: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """:func:`band_entries` of one band's keys of any unsigned or non-negative integer type.

    Keys that do not fit below ``2**32 - 1`` (``bits_per_band + split_bits > 30``, or a column
    holding that value) are replaced by their rank among the band's distinct keys first: the
    walks only compare keys for equality, and ranks keep the keys' order.

    Args:
        column: the band's key of every record of all datasets, dataset after dataset.
        sentinel: the key of skipped records, left out; ``None`` when none is skipped.
        scratch: two uint64 buffers at least ``len(column)`` long to sort in (the result is a view
            of one, valid until they are reused); ``None``: fresh ones.

    Returns:
        uint64 entries ``key << 32 | record``, ascending.
    """
    if scratch is None:
        scratch = np.empty(len(column), dtype=np.uint64), np.empty(len(column), dtype=np.uint64)
    narrow_sentinel = np.uint32(np.iinfo(np.uint32).max)
    if column.dtype == np.uint32 and (sentinel == narrow_sentinel or not np.any(column == narrow_sentinel)):
        return band_entries_into(column, narrow_sentinel, *scratch)
    skipped = np.zeros(len(column), dtype=bool) if sentinel is None else column == sentinel
    _, ranks = np.unique(column, return_inverse=True)
    ranks = ranks.reshape(-1).astype(np.uint32)
    ranks[skipped] = narrow_sentinel
    return band_entries_into(ranks, narrow_sentinel, *scratch)
