"""One compiled walk per band: score every cross-dataset pair of every shared bucket, in place.

The band's records come grouped by key (:func:`coordinator.linkage.band_sort.sorted_entries`).
The walk over the runs of equal keys copies each shared bucket's encodings into one contiguous
block (their loads started a few runs ahead, so that they overlap) and scores every
cross-dataset pair from there (two ``vpopcntq`` per 1024-bit pair where the CPU has them).
Pairs scoring at least the dedup floor are checked against earlier bands in one batch at the end
of the call, their earlier keys prefetched a few pairs ahead: only those pairs ever read
earlier keys.

Results are those of :func:`coordinator.linkage.kernels.bucket_pair_dice`: the same Dice
arithmetic, the same first-band rule, the same comparison count; only the order in which pairs
are found differs, and the caller sorts the candidates anyway.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from coordinator.linkage.band_sort import RECORD_BITS
from coordinator.linkage.kernels import VECTOR_POPCOUNT, and_popcount_1024, popcount64, prefetch

__all__ = ["score_band_runs"]

#: uint64 words per 64-byte cache line.
_LINE_WORDS = 8
#: Entries the walk looks ahead to start loading an encoding (about the loads a core keeps in flight).
_AHEAD = 24
#: Pairs the earlier-band check looks ahead to start loading the two records' earlier keys.
_CHECK_AHEAD = 8


@njit(nogil=True, cache=True, inline="always")
def _dataset_of(record, offsets):  # noqa: ANN001, ANN202
    d = 0
    while record >= offsets[d + 1]:
        d += 1
    return d


@njit(nogil=True, cache=True, inline="always")
def _seen_before(keys_a, keys_b, row_a, row_b, band, sentinel):  # noqa: ANN001, ANN202
    """Whether the two records share a key (other than ``sentinel``) in a band before ``band``."""
    for earlier in range(band):
        key = keys_a[row_a, earlier]
        if key != sentinel and key == keys_b[row_b, earlier]:
            return True
    return False


@njit(nogil=True, cache=True)
def _drop_seen(keys, band, sentinel, threshold, histogram, pending, out_da, out_db, out_ra, out_rb, out_sim):  # noqa: ANN001, ANN202, E501
    """Check the ``pending`` pairs against earlier bands; count and keep (compacted) those no earlier band found."""
    bins = histogram.shape[0]
    line_keys = 64 // keys[0].itemsize
    for k in range(min(_CHECK_AHEAD, pending)):
        for column in range(0, band, line_keys):
            prefetch(keys[out_da[k]], out_ra[k], column)
            prefetch(keys[out_db[k]], out_rb[k], column)
    kept = 0
    for k in range(pending):
        ahead = k + _CHECK_AHEAD
        if ahead < pending:
            for column in range(0, band, line_keys):
                prefetch(keys[out_da[ahead]], out_ra[ahead], column)
                prefetch(keys[out_db[ahead]], out_rb[ahead], column)
        d_a, d_b, row_a, row_b, sim = out_da[k], out_db[k], out_ra[k], out_rb[k], out_sim[k]
        if _seen_before(keys[d_a], keys[d_b], row_a, row_b, band, sentinel):
            continue
        if bins > 0:
            histogram[min(int(sim * bins), bins - 1)] += 1
        if sim >= threshold:
            out_da[kept], out_db[kept], out_ra[kept], out_rb[kept], out_sim[kept] = d_a, d_b, row_a, row_b, sim
            kept += 1
    return kept


@njit(nogil=True, cache=True)
def score_band_runs(
    entries,
    first,
    offsets,
    words,
    keys,
    band,
    sentinel,
    threshold,
    floor,
    histogram,
    out_da,
    out_db,
    out_ra,
    out_rb,
    out_sim,
):  # noqa: ANN001, ANN201  (fmt: one argument per kernel input)
    """Score every cross-dataset pair of every run of equal keys from entry ``first`` on.

    Pairs are ``(d_a, row_a)``, ``(d_b, row_b)`` with ``d_a < d_b``. A pair scoring at least
    ``floor`` that shares a key (other than ``sentinel``) in a band before ``band`` is neither
    counted nor kept (the first-band rule); every other pair is counted in ``histogram`` (when it
    has bins) and kept in the ``out_*`` arrays if it scores at least ``threshold``.

    Args:
        entries: the band's sorted entries (:func:`coordinator.linkage.band_sort.sorted_entries`).
        first: the entry to start from.
        offsets: ``offsets[d]`` is dataset ``d``'s first global record number (``len(words) + 1`` values).
        words: per dataset, the encodings as uint64 words (a tuple of arrays of one type).
        keys: per dataset, the ``(n_d, bands)`` key matrix (a tuple of arrays of one type).
        band: the band.
        sentinel: the key of skipped records in ``keys``.
        threshold: keep pairs scoring at least this.
        floor: pairs scoring at least this are checked against earlier bands (at most ``threshold``).
        histogram: similarity counts per bin (updated), or an empty array for none.
        out_da: output, dataset of each kept pair's first record (likewise ``out_db``, ``out_ra``,
            ``out_rb``, ``out_sim``: its second record's dataset, the rows and the similarity).
        out_db: see ``out_da``.
        out_ra: see ``out_da``.
        out_rb: see ``out_da``.
        out_sim: see ``out_da``.

    Returns:
        ``(next_entry, kept, comparisons)``: where to resume (``len(entries)`` when done), pairs
        written, and pairs scored. A run is started only when all its pairs would fit the output,
        so the caller must size the output for the largest bucket.
    """
    datasets = len(words)
    width = words[0].shape[1]
    bins = histogram.shape[0]
    capacity = out_sim.shape[0]
    n = entries.shape[0]
    record_mask = np.uint64((1 << RECORD_BITS) - 1)
    starts = np.empty(datasets + 1, dtype=np.int64)
    owner = np.empty(datasets, dtype=np.int64)
    block = np.empty((64, width), dtype=np.uint64)
    block_pops = np.empty(64, dtype=np.int64)
    block_rows = np.empty(64, dtype=np.int64)
    block_sets = np.empty(64, dtype=np.int64)
    block_next = np.empty(64, dtype=np.int64)
    check = band > 0
    vector = VECTOR_POPCOUNT and width == 16
    pending = 0
    comparisons = 0
    i = first
    ahead = first
    while i < n:
        key = entries[i] >> np.uint64(RECORD_BITS)
        j = i + 1
        while j < n and entries[j] >> np.uint64(RECORD_BITS) == key:
            j += 1
        # Start loading, once each, the encodings of the runs that will be scored a few entries
        # from now: runs of two datasets or more (records ascend, so the first and last differ).
        while ahead < n and ahead < j + _AHEAD:
            ahead_key = entries[ahead] >> np.uint64(RECORD_BITS)
            end = ahead + 1
            while end < n and entries[end] >> np.uint64(RECORD_BITS) == ahead_key:
                end += 1
            first_dataset = _dataset_of(np.int64(entries[ahead] & record_mask), offsets)
            if end - ahead > 1 and np.int64(entries[end - 1] & record_mask) >= offsets[first_dataset + 1]:
                for entry in range(ahead, end):
                    record = np.int64(entries[entry] & record_mask)
                    d = _dataset_of(record, offsets)
                    for column in range(0, width, _LINE_WORDS):
                        prefetch(words[d], record - offsets[d], column)
            ahead = end
        size = j - i
        if size < 2:
            i = j
            continue
        # Split the run into its datasets (records ascend, so each dataset is one stretch).
        parts = 0
        squares = 0
        p = i
        while p < j:
            d = _dataset_of(np.int64(entries[p] & record_mask), offsets)
            q = p + 1
            while q < j and np.int64(entries[q] & record_mask) < offsets[d + 1]:
                q += 1
            starts[parts] = p - i
            owner[parts] = d
            parts += 1
            squares += (q - p) * (q - p)
            p = q
        starts[parts] = size
        pairs = (size * size - squares) // 2
        if pairs == 0:
            i = j
            continue
        if pending + pairs > capacity:
            break
        # Copy the run's encodings into one block: scored from there, each is read from memory once.
        if size > block.shape[0]:
            block = np.empty((2 * size, width), dtype=np.uint64)
            block_pops = np.empty(2 * size, dtype=np.int64)
            block_rows = np.empty(2 * size, dtype=np.int64)
            block_sets = np.empty(2 * size, dtype=np.int64)
            block_next = np.empty(2 * size, dtype=np.int64)
        for part in range(parts):
            words_d = words[owner[part]]
            base = offsets[owner[part]]
            for p in range(starts[part], starts[part + 1]):
                row = np.int64(entries[i + p] & record_mask) - base
                total = np.uint64(0)
                for w in range(width):
                    value = words_d[row, w]
                    block[p, w] = value
                    total += popcount64(value)
                block_pops[p] = np.int64(total)
                block_rows[p] = row
        # Every pair (p, q) with q in a later dataset than p: one inner loop per record.
        for p in range(starts[1]):
            block_next[p] = starts[1]
            block_sets[p] = owner[0]
        for part in range(1, parts):
            for p in range(starts[part], starts[part + 1]):
                block_next[p] = starts[part + 1]
                block_sets[p] = owner[part]
        for p in range(starts[parts - 1]):
            d_a = block_sets[p]
            pop_a = block_pops[p]
            for q in range(block_next[p], size):
                if vector:
                    shared = and_popcount_1024(block, p, q)
                else:
                    shared = np.uint64(0)
                    for w in range(width):
                        shared += popcount64(block[p, w] & block[q, w])
                denominator = pop_a + block_pops[q]
                # anonlink's arithmetic: (2 * popcount(a & b)) / (double)(|a| + |b|); two empty encodings score 0.
                sim = 0.0 if denominator == 0 else 2.0 * np.float64(shared) / np.float64(denominator)
                if sim >= floor and (check or sim >= threshold):
                    # Checked against earlier bands (and then counted) in one batch below.
                    out_da[pending] = d_a
                    out_db[pending] = block_sets[q]
                    out_ra[pending] = block_rows[p]
                    out_rb[pending] = block_rows[q]
                    out_sim[pending] = sim
                    pending += 1
                    if check:
                        continue
                if bins > 0:
                    histogram[min(int(sim * bins), bins - 1)] += 1
        comparisons += pairs
        i = j
    if check:
        outputs = (out_da, out_db, out_ra, out_rb, out_sim)
        pending = _drop_seen(keys, band, sentinel, threshold, histogram, pending, *outputs)
    return i, pending, comparisons
