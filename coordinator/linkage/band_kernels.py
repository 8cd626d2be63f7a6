"""One compiled pass per band: group every dataset's records by key, then score the shared buckets in place.

The per-band work used to be numpy sorts per dataset, a join per pair of datasets and copies of
the shared buckets' encodings: about 1.3 us per record per band, far more than scoring the few
pairs a bucket holds. Here a band costs two or three passes of a radix sort over ``(key, record)``
entries of all datasets at once (keys of 21 bits need two 11-bit digits), then one walk over the
runs of equal keys that scores every cross-dataset pair by row index, reading each encoding where
it lies (prefetched a few entries ahead, so that the loads overlap). Nothing but the kept pairs is
copied. Results are those of :func:`coordinator.linkage.kernels.bucket_pair_dice`: the same Dice
arithmetic, the same first-band rule, the same comparison count; only the order in which pairs are
found differs, and the caller sorts the candidates anyway.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from coordinator.linkage.kernels import _dice, _popcount64

__all__ = ["band_entries", "radix_sort", "score_band_runs"]

#: Most bits per radix digit: 4096 counters (32 KB) stay in the first-level cache.
_DIGIT = 12
#: uint64 words per 64-byte cache line.
_LINE_WORDS = 8
#: Entries the walk looks ahead to start loading an encoding (about the loads a core keeps in flight).
_AHEAD = 24


@intrinsic
def _prefetch(typingctx, array, row, column):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """Ask the CPU to start loading the cache line of ``array[row, column]`` (no effect on results)."""
    signature = types.void(array, types.intp, types.intp)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [args[1], args[2]])
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        prefetch = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0i8")
        # read (0), keep in all cache levels (3), data cache (1)
        builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


@njit(nogil=True, cache=True, inline="always")
def _seen_before(keys_a, keys_b, row_a, row_b, band, sentinel):  # noqa: ANN001, ANN202
    """Whether the two records share a key (other than ``sentinel``) in a band before ``band``."""
    for earlier in range(band):
        key = keys_a[row_a, earlier]
        if key != sentinel and key == keys_b[row_b, earlier]:
            return True
    return False


@njit(nogil=True, cache=True, inline="always")
def _in_run(sorted_keys, entry):  # noqa: ANN001, ANN202
    """Whether an entry shares its key with a neighbour (only such entries are ever scored)."""
    key = sorted_keys[entry]
    return (entry > 0 and sorted_keys[entry - 1] == key) or (
        entry + 1 < sorted_keys.shape[0] and sorted_keys[entry + 1] == key
    )


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
def _radix_pairs(keys, rows, spare_keys, spare_rows, bits):  # noqa: ANN001, ANN202
    """Stable LSD radix sort of ``keys`` (uint64) carrying ``rows``; returns the sorted pair of arrays."""
    digit_bits = _digit_bits(bits)
    mask = np.uint64((1 << digit_bits) - 1)
    counts = np.empty(1 << digit_bits, dtype=np.int64)
    n = keys.shape[0]
    shift = 0
    while shift < bits:
        counts[:] = 0
        for i in range(n):
            counts[(keys[i] >> np.uint64(shift)) & mask] += 1
        total = 0
        for digit in range(counts.shape[0]):
            size = counts[digit]
            counts[digit] = total
            total += size
        for i in range(n):
            digit = (keys[i] >> np.uint64(shift)) & mask
            at = counts[digit]
            spare_keys[at] = keys[i]
            spare_rows[at] = rows[i]
            counts[digit] = at + 1
        keys, spare_keys = spare_keys, keys
        rows, spare_rows = spare_rows, rows
        shift += digit_bits
    return keys, rows


@njit(nogil=True, cache=True)
def radix_sort(values: np.ndarray) -> np.ndarray:
    """Ascending copy of a uint64 or int64 array of non-negative values (LSD radix, digits of at most 12 bits)."""
    keys = values.astype(np.uint64)
    top = np.uint64(0)
    for i in range(keys.shape[0]):
        top |= keys[i]
    out, _ = _radix_pairs_keys_only(keys, np.empty_like(keys), _bit_length(top))
    return out.astype(values.dtype)


@njit(nogil=True, cache=True)
def _radix_pairs_keys_only(keys, spare, bits):  # noqa: ANN001, ANN202
    digit_bits = _digit_bits(bits)
    mask = np.uint64((1 << digit_bits) - 1)
    counts = np.empty(1 << digit_bits, dtype=np.int64)
    n = keys.shape[0]
    shift = 0
    while shift < bits:
        counts[:] = 0
        for i in range(n):
            counts[(keys[i] >> np.uint64(shift)) & mask] += 1
        total = 0
        for digit in range(counts.shape[0]):
            size = counts[digit]
            counts[digit] = total
            total += size
        for i in range(n):
            digit = (keys[i] >> np.uint64(shift)) & mask
            at = counts[digit]
            spare[at] = keys[i]
            counts[digit] = at + 1
        keys, spare = spare, keys
        shift += digit_bits
    return keys, spare


@njit(nogil=True, cache=True)
def band_entries(keys, band, sentinel, offsets):  # noqa: ANN001, ANN201
    """Every record's key in ``band`` (skipped records left out), sorted by key, then by global record.

    Args:
        keys: per dataset, the ``(n_d, bands)`` key matrix (a tuple of arrays of one type).
        band: the band.
        sentinel: the key of skipped records.
        offsets: ``offsets[d]`` is dataset ``d``'s first global record number (``len(keys) + 1`` values).

    Returns:
        ``(sorted_keys, records)``: uint64 keys ascending and the uint32 global record of each;
        within a key, records ascend, so datasets come in order.
    """
    n = offsets[len(keys)]
    entry_keys = np.empty(n, dtype=np.uint64)
    records = np.empty(n, dtype=np.uint32)
    at = 0
    top = np.uint64(0)
    for d in range(len(keys)):
        column = keys[d]
        first = offsets[d]
        for row in range(column.shape[0]):
            key = column[row, band]
            if key != sentinel:
                entry_keys[at] = np.uint64(key)
                records[at] = np.uint32(first + row)
                top |= np.uint64(key)
                at += 1
    return _radix_pairs(
        entry_keys[:at], records[:at], np.empty(at, dtype=np.uint64), np.empty(at, dtype=np.uint32), _bit_length(top)
    )


@njit(nogil=True, cache=True, inline="always")
def _dataset_of(record, offsets):  # noqa: ANN001, ANN202
    d = 0
    while record >= offsets[d + 1]:
        d += 1
    return d


@njit(nogil=True, cache=True, inline="always")
def _row_popcount(words, row):  # noqa: ANN001, ANN202
    total = np.uint64(0)
    for w in range(words.shape[1]):
        total += _popcount64(words[row, w])
    return np.int64(total)


@njit(nogil=True, cache=True)
def score_band_runs(
    sorted_keys,
    records,
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

    Returns:
        ``(next_entry, kept, comparisons)``: where to resume (``len(records)`` when done), pairs
        written, and pairs scored. A run is started only when all its pairs would fit the output,
        so the caller must size the output for the largest bucket.
    """
    datasets = len(words)
    bins = histogram.shape[0]
    capacity = out_sim.shape[0]
    n = records.shape[0]
    starts = np.empty(datasets + 1, dtype=np.int64)
    run_pops = np.empty(n, dtype=np.int64)
    owner = np.empty(datasets, dtype=np.int64)
    kept = 0
    comparisons = 0
    # Prefetch distances count in keys of the matrix's own width: 64-byte lines.
    line_keys = 64 // keys[0].itemsize
    i = first
    ahead = first
    while i < n:
        key = sorted_keys[i]
        j = i + 1
        while j < n and sorted_keys[j] == key:
            j += 1
        # Start loading, once each, the encodings (and for the first-band rule, the earlier keys)
        # of the records that will be scored a few entries from now.
        limit = min(j + _AHEAD, n)
        while ahead < limit:
            if _in_run(sorted_keys, ahead):
                record = records[ahead]
                d = _dataset_of(record, offsets)
                row = np.int64(record) - offsets[d]
                words_d = words[d]
                for column in range(0, words_d.shape[1], _LINE_WORDS):
                    _prefetch(words_d, row, column)
                if band > 0:
                    keys_d = keys[d]
                    for column in range(0, band, line_keys):
                        _prefetch(keys_d, row, column)
            ahead += 1
        if j - i < 2:
            i = j
            continue
        # Split the run into its datasets (records ascend, so each dataset is one stretch).
        parts = 0
        total = 0
        squares = 0
        p = i
        while p < j:
            d = _dataset_of(records[p], offsets)
            q = p + 1
            while q < j and records[q] < offsets[d + 1]:
                q += 1
            starts[parts] = p
            owner[parts] = d
            parts += 1
            total += q - p
            squares += (q - p) * (q - p)
            p = q
        starts[parts] = j
        pairs = (total * total - squares) // 2
        if pairs == 0:
            i = j
            continue
        if kept + pairs > capacity:
            return i, kept, comparisons
        for p in range(i, j):
            d = owner[0]
            for part in range(parts):
                if p >= starts[part]:
                    d = owner[part]
            run_pops[p - i] = _row_popcount(words[d], np.int64(records[p]) - offsets[d])
        for part_a in range(parts):
            d_a = owner[part_a]
            words_a = words[d_a]
            keys_a = keys[d_a]
            base_a = offsets[d_a]
            for part_b in range(part_a + 1, parts):
                d_b = owner[part_b]
                words_b = words[d_b]
                keys_b = keys[d_b]
                base_b = offsets[d_b]
                for p in range(starts[part_a], starts[part_a + 1]):
                    row_a = np.int64(records[p]) - base_a
                    pop_a = run_pops[p - i]
                    for q in range(starts[part_b], starts[part_b + 1]):
                        row_b = np.int64(records[q]) - base_b
                        sim = _dice(words_a, words_b, row_a, row_b, pop_a, run_pops[q - i])
                        if sim >= floor and band > 0:
                            if _seen_before(keys_a, keys_b, row_a, row_b, band, sentinel):
                                continue
                        if bins > 0:
                            histogram[min(int(sim * bins), bins - 1)] += 1
                        if sim >= threshold:
                            out_da[kept] = d_a
                            out_db[kept] = d_b
                            out_ra[kept] = row_a
                            out_rb[kept] = row_b
                            out_sim[kept] = sim
                            kept += 1
        comparisons += pairs
        i = j
    return n, kept, comparisons
