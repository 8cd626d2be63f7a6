"""Compiled helpers for blocking: band keys from sampled bits, bucket sizes per band, bucket joins.

numpy spent most of a match building band keys (unpacking every bit, transposing) and counting
bucket sizes with full-table passes; these numba loops read each encoding once, from the cache,
and touch only the keys that occur. They release the GIL, so callers run them on threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from coordinator.linkage.band_sort import radix_sort_bits

__all__ = [
    "bit_counts", "bit_word_shifts", "bucket_census", "bucket_pair_weights", "column_census", "gather_columns",
    "merge_join", "pack_keys",
]


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


#: Rows counted into 8-bit lanes before the lanes are flushed (a lane holds at most 255).
_LANE_ROWS = 255


@njit(nogil=True, cache=True)
def bit_counts(words: np.ndarray, rows: np.ndarray, totals: np.ndarray) -> None:
    """Add to ``totals[p]`` how many of ``rows`` set bit position ``p`` (big-endian-packed bytes as uint64 words).

    Bit ``j`` of all eight bytes of a word is counted at once, each byte in its own 8-bit lane
    (``(word >> j) & 0x0101...``): eight shifts and adds per word and row instead of unpacking 64
    bits to bytes; the lanes are added to ``totals`` every 255 rows, before they can overflow.
    """
    n_words = words.shape[1]
    lanes = np.zeros((n_words, 8), dtype=np.uint64)
    ones = np.uint64(0x0101010101010101)
    for start in range(0, rows.shape[0], _LANE_ROWS):
        stop = min(start + _LANE_ROWS, rows.shape[0])
        for i in range(start, stop):
            row = rows[i]
            for w in range(n_words):
                value = words[row, w]
                for j in range(8):
                    lanes[w, j] += (value >> np.uint64(j)) & ones
        for w in range(n_words):
            for j in range(8):
                lane = lanes[w, j]
                for b in range(8):
                    # Byte b of word w is byte 8w + b; its bit j is position 8 * (8w + b) + 7 - j.
                    totals[64 * w + 8 * b + 7 - j] += np.int64((lane >> np.uint64(8 * b)) & np.uint64(0xFF))
                lanes[w, j] = 0


#: Rows whose words are transposed together in ``pack_keys`` (16 words x 512 rows: 64 KB).
_PACK_ROWS = 512


@njit(nogil=True, cache=True)
def pack_keys(words: np.ndarray, word: np.ndarray, shift: np.ndarray, out: np.ndarray, first: int, last: int) -> None:
    """Set ``out[r, band]`` to the bits ``(word[band, t], shift[band, t])`` of row ``r``, bit ``t`` first.

    Rows ``first:last`` only, so that threads can share the work. Each block of rows is first
    transposed to one row of values per word, so that every sampled bit is taken from a whole
    block of rows by one contiguous (vectorised) loop instead of one row at a time.
    """
    bands, width = word.shape
    columns = np.empty((words.shape[1], _PACK_ROWS), dtype=np.uint64)
    narrow = np.empty(_PACK_ROWS, dtype=np.uint32)
    wide = np.empty(_PACK_ROWS, dtype=np.uint64)
    for start in range(first, last, _PACK_ROWS):
        rows = min(_PACK_ROWS, last - start)
        for r in range(rows):
            for w in range(words.shape[1]):
                columns[w, r] = words[start + r, w]
        for band in range(bands):
            # Fixed-length loops over 32-bit keys where they fit: they vectorise best.
            if out.itemsize == 4:
                for r in range(_PACK_ROWS):
                    narrow[r] = 0
                for t in range(width):
                    column = columns[word[band, t]]
                    at = np.uint64(shift[band, t])
                    bit = np.uint32(t)
                    for r in range(_PACK_ROWS):
                        narrow[r] |= np.uint32((column[r] >> at) & np.uint64(1)) << bit
                for r in range(rows):
                    out[start + r, band] = narrow[r]
            else:
                for r in range(_PACK_ROWS):
                    wide[r] = 0
                for t in range(width):
                    column = columns[word[band, t]]
                    at = np.uint64(shift[band, t])
                    bit = np.uint64(t)
                    for r in range(_PACK_ROWS):
                        wide[r] |= ((column[r] >> at) & np.uint64(1)) << bit
                for r in range(rows):
                    out[start + r, band] = wide[r]


@njit(nogil=True, cache=True)
def gather_columns(keys, first, out):  # noqa: ANN001, ANN201
    """Copy columns ``first .. first + len(out) - 1`` of the key matrices into ``out``'s rows, datasets in turn.

    One pass reads each record's keys of these bands together, from one cache line where they share
    one, instead of a whole line per key and band. The buffer is the caller's (allocated with numpy)
    and reused: a large array allocated inside a numba kernel does not get numpy's huge-page advice,
    and first touching its 4 KB pages cost ten times the copy on the shared VM.
    """
    at = 0
    for d in range(len(keys)):
        matrix = keys[d]
        for row in range(matrix.shape[0]):
            for c in range(out.shape[0]):
                out[c, at + row] = matrix[row, first + c]
        at += matrix.shape[0]
    return out


def bucket_census(columns: list[np.ndarray], cap: int) -> tuple[np.ndarray, int]:
    """Cross-dataset pairs per key in one band: which keys exceed ``cap``, and the largest that does not.

    Args:
        columns: the band's keys, one array per dataset (non-negative integers).
        cap: most pairs a bucket may give.

    Returns:
        ``(giant_keys, largest)``: the keys whose buckets give more than ``cap`` pairs (ascending),
        and the most pairs any other bucket gives.

    Examples:
        >>> giant, largest = bucket_census([np.array([1, 1, 2]), np.array([1, 2, 2, 3])], cap=1)
        >>> giant.tolist(), largest
        ([1, 2], 0)
    """
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in columns])]).astype(np.int64)
    return column_census(np.concatenate(columns), offsets, cap)


def column_census(
    column: np.ndarray, offsets: np.ndarray, cap: int, *, exact_largest: bool = True
) -> tuple[np.ndarray, int]:
    """:func:`bucket_census` of one band's keys of all datasets, dataset after dataset (``offsets`` as in ``compare``).

    Sorts the band's (key, record) entries once (``band_kernels.sorted_entries``: a compiled
    radix sort, two passes of 11-bit digits for 21-bit keys) and counts each run's records per
    dataset in a compiled loop: far cheaper than key-indexed tables, whose random accesses miss
    the cache.

    With ``exact_largest=False`` a band that cannot hold a giant bucket is not sorted at all: one
    pass counts its records per hash of the key (:func:`_most_per_hash`, a table that stays in
    cache), and when no hash holds enough records for more than ``cap`` pairs, no key does
    either. Such a band reports 0 as its largest bucket: the caller learns it from comparing,
    which walks every bucket anyway (``compare.compare_datasets`` does).
    """
    from coordinator.linkage.band_sort import sorted_entries

    if not exact_largest:
        most = _most_per_hash(column)
        if most * (most - 1) // 2 <= cap:
            return np.zeros(0, dtype=column.dtype), 0
    records, largest = _census_runs(sorted_entries(column, None), offsets, cap)
    return np.sort(column[records]), largest


#: Bits of the key hash that :func:`_most_per_hash` counts records by (64K counters: 512 KB, in cache).
_SCREEN_BITS = 16


@njit(nogil=True, cache=True)
def _most_per_hash(column: np.ndarray) -> int:
    """Most records sharing one hash of their key: at least as many as any one key has.

    Equal keys hash alike, so a bucket's records all land in one counter; a counter only ever
    holds more (other keys hashing alike), which makes it a safe upper bound for a giant check.
    """
    counts = np.zeros(1 << _SCREEN_BITS, dtype=np.int64)
    most = 0
    shift = np.uint64(64 - _SCREEN_BITS)
    for i in range(column.shape[0]):
        # Fibonacci hashing: the top bits of key * 2**64 / golden ratio spread any key pattern.
        at = (np.uint64(column[i]) * np.uint64(0x9E3779B97F4A7C15)) >> shift
        counts[at] += 1
        if counts[at] > most:
            most = counts[at]
    return most


@njit(nogil=True, cache=True)
def _census_runs(entries: np.ndarray, offsets: np.ndarray, cap: int) -> tuple[np.ndarray, int]:
    """Giant runs (their first records) and the most pairs of any other run, of ``key << 32 | record`` entries."""
    giant = np.empty(entries.shape[0], dtype=np.int64)
    n_giant = 0
    largest = 0
    mask = np.uint64(0xFFFFFFFF)
    n = entries.shape[0]
    i = 0
    while i < n:
        key = entries[i] >> np.uint64(32)
        j = i + 1
        while j < n and entries[j] >> np.uint64(32) == key:
            j += 1
        if j - i > 1:
            # Records ascend within a key, so each dataset is one stretch of the run.
            squares = 0
            p = i
            while p < j:
                d = 0
                while np.int64(entries[p] & mask) >= offsets[d + 1]:
                    d += 1
                q = p + 1
                while q < j and np.int64(entries[q] & mask) < offsets[d + 1]:
                    q += 1
                squares += (q - p) * (q - p)
                p = q
            pairs = ((j - i) * (j - i) - squares) // 2
            if pairs > cap:
                giant[n_giant] = np.int64(entries[i] & mask)
                n_giant += 1
            elif pairs > largest:
                largest = pairs
        i = j
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


@njit(nogil=True, cache=True)
def bucket_pair_weights(keys, owners, weights, owner_bits, values):  # noqa: ANN001, ANN201
    """Weighted cross-agency pairs of every (band, key) bucket of sampled band keys, bands then keys ascending.

    ``keys[i]`` is an ``(n_i, bands)`` key matrix of agency ``owners[i]``, whose records each
    weigh ``weights[i]``. A bucket whose agencies weigh ``W_a`` in all gives
    ``((sum W_a) ** 2 - sum W_a ** 2) / 2`` pairs. Each band's ``key << owner_bits | owner`` codes
    are radix-sorted on their own (a band's few thousand fit in cache), and the sums are taken in the
    order, and with the operations, of numpy's ``bincount`` over the codes of all bands sorted at
    once, so the values are the same floats.

    Returns:
        How many buckets there are: their pairs are written to ``values[:count]`` (allocated by the
        caller, with numpy: see ``gather_columns``; one per key suffices).
    """
    total = 0
    for i in range(len(keys)):
        total += keys[i].shape[0]
    bands = keys[0].shape[1]
    codes = np.empty(total, dtype=np.uint64)
    spare = np.empty(total, dtype=np.uint64)
    scaled = np.empty(total, dtype=np.float64)
    top = 0
    for i in range(len(keys)):
        matrix = keys[i]
        for row in range(matrix.shape[0]):
            for band in range(matrix.shape[1]):
                top |= np.int64(matrix[row, band])
    code_bits = owner_bits
    while top > 0:
        code_bits += 1
        top >>= 1
    count = 0
    mask = np.uint64((1 << owner_bits) - 1)
    for band in range(bands):
        at = 0
        for i in range(len(keys)):
            matrix = keys[i]
            for row in range(matrix.shape[0]):
                codes[at] = (np.uint64(matrix[row, band]) << np.uint64(owner_bits)) | np.uint64(owners[i])
                at += 1
        # Sorted in whichever of the two buffers the passes end in; the next band refills ``codes``.
        ordered = radix_sort_bits(codes, spare, 0, code_bits)
        for e in range(total):
            scaled[e] = weights[np.int64(ordered[e] & mask)]
        e = 0
        while e < total:
            bucket = ordered[e] >> np.uint64(owner_bits)
            weighted = 0.0
            squares = 0.0
            while e < total and ordered[e] >> np.uint64(owner_bits) == bucket:
                code = ordered[e]
                cell = 0.0
                while e < total and ordered[e] == code:
                    weighted += scaled[e]
                    cell += scaled[e]
                    e += 1
                squares += cell * cell
            values[count] = (weighted * weighted - squares) / 2
            count += 1
    return count
