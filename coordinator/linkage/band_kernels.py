"""One compiled pass per band: group every dataset's records by key, then score the shared buckets.

Per band, each record's key and global number are packed in one uint64 (key above bit 32) and
radix-sorted on the key bits only (two 11-bit passes for 21-bit keys, the digit counts of both
taken in one read), so the records of a key come out ascending, dataset by dataset. The walk over
the runs of equal keys copies each shared bucket's encodings into one contiguous block (their
loads started a few entries ahead, so that they overlap) and scores every cross-dataset pair of
it from there with a fixed-length popcount loop. Pairs scoring at least the dedup floor are
checked against earlier bands in one batch at the end of the call, their earlier keys prefetched
a few pairs ahead: only those pairs ever read earlier keys.

Results are those of :func:`coordinator.linkage.kernels.bucket_pair_dice`: the same Dice
arithmetic, the same first-band rule, the same comparison count; only the order in which pairs
are found differs, and the caller sorts the candidates anyway.
"""

from __future__ import annotations

import numpy as np
import llvmlite.binding as ll
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from coordinator.linkage.kernels import _popcount64

__all__ = ["band_columns", "band_entries", "radix_sort", "score_band_runs", "sorted_entries"]

#: Most bits per radix digit: 4096 counters (32 KB) stay in the first-level cache.
_DIGIT = 12
#: uint64 words per 64-byte cache line.
_LINE_WORDS = 8
#: Entries the walk looks ahead to start loading an encoding (about the loads a core keeps in flight).
_AHEAD = 24
#: Pairs the earlier-band check looks ahead to start loading the two records' earlier keys.
_CHECK_AHEAD = 8
#: Whether the CPU counts bits of 512-bit vectors in one instruction: then a 1024-bit AND-popcount is two.
_VECTOR_POPCOUNT = "avx512vpopcntdq" in ll.get_host_cpu_features().flatten()
#: Entries carry the key above this bit and the global record below it.
_RECORD_BITS = 32


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


@intrinsic
def _and_popcount_1024(typingctx, block, p, q):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """popcount(block[p] & block[q]) for rows of 16 uint64 words (1024 bits), as two 512-bit vectors.

    LLVM lowers the vector ``ctpop`` to ``vpopcntq`` where the CPU has it (AVX-512 VPOPCNTDQ); the
    caller uses this only there, and the scalar loop elsewhere. The count is exact either way.
    """
    signature = types.uint64(block, types.intp, types.intp)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        array_type = sig.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, 8)
        vec_ptr = vec.as_pointer()
        total = None
        rows = [cgutils.get_item_pointer(context, builder, array_type, data, [row, zero]) for row in args[1:]]
        ptr_p, ptr_q = (builder.bitcast(row, vec_ptr) for row in rows)
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), "llvm.ctpop.v8i64")
        for half in range(2):
            idx = ir.Constant(ir.IntType(64), half)
            a = builder.load(builder.gep(ptr_p, [idx]), align=8)
            b = builder.load(builder.gep(ptr_q, [idx]), align=8)
            c = builder.call(ctpop, [builder.and_(a, b)])
            total = c if total is None else builder.add(total, c)
        reduce_type = ir.FunctionType(i64, [vec])
        reduce = cgutils.get_or_insert_function(builder.module, reduce_type, "llvm.vector.reduce.add.v8i64")
        return builder.call(reduce, [total])

    return signature, codegen


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
def _radix_sort_bits(values, spare, low, bits):  # noqa: ANN001, ANN202
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
    out = _radix_sort_bits(keys, np.empty_like(keys), 0, _bit_length(top))
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
    entries = np.empty(n, dtype=np.uint64)
    at = 0
    top = np.uint64(0)
    for record in range(n):
        key = column[record]
        if key != sentinel:
            entries[at] = (np.uint64(key) << np.uint64(_RECORD_BITS)) | np.uint64(record)
            top |= np.uint64(key)
            at += 1
    return _radix_sort_bits(entries[:at], np.empty(at, dtype=np.uint64), _RECORD_BITS, _bit_length(top))


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
def _drop_seen(keys, band, sentinel, threshold, histogram, pending, out_da, out_db, out_ra, out_rb, out_sim):  # noqa: ANN001, ANN202
    """Check the ``pending`` pairs against earlier bands; count and keep (compacted) those no earlier band found."""
    bins = histogram.shape[0]
    line_keys = 64 // keys[0].itemsize
    for k in range(min(_CHECK_AHEAD, pending)):
        for column in range(0, band, line_keys):
            _prefetch(keys[out_da[k]], out_ra[k], column)
            _prefetch(keys[out_db[k]], out_rb[k], column)
    kept = 0
    for k in range(pending):
        ahead = k + _CHECK_AHEAD
        if ahead < pending:
            for column in range(0, band, line_keys):
                _prefetch(keys[out_da[ahead]], out_ra[ahead], column)
                _prefetch(keys[out_db[ahead]], out_rb[ahead], column)
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
        entries: the band's sorted entries (:func:`band_entries`).
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
    record_mask = np.uint64((1 << _RECORD_BITS) - 1)
    starts = np.empty(datasets + 1, dtype=np.int64)
    owner = np.empty(datasets, dtype=np.int64)
    block = np.empty((64, width), dtype=np.uint64)
    block_pops = np.empty(64, dtype=np.int64)
    block_rows = np.empty(64, dtype=np.int64)
    block_sets = np.empty(64, dtype=np.int64)
    block_next = np.empty(64, dtype=np.int64)
    check = band > 0
    vector = _VECTOR_POPCOUNT and width == 16
    pending = 0
    comparisons = 0
    i = first
    ahead = first
    while i < n:
        key = entries[i] >> np.uint64(_RECORD_BITS)
        j = i + 1
        while j < n and entries[j] >> np.uint64(_RECORD_BITS) == key:
            j += 1
        # Start loading, once each, the encodings of the runs that will be scored a few entries
        # from now: runs of two datasets or more (records ascend, so the first and last differ).
        while ahead < n and ahead < j + _AHEAD:
            ahead_key = entries[ahead] >> np.uint64(_RECORD_BITS)
            end = ahead + 1
            while end < n and entries[end] >> np.uint64(_RECORD_BITS) == ahead_key:
                end += 1
            first_record = np.int64(entries[ahead] & record_mask)
            if end - ahead > 1 and np.int64(entries[end - 1] & record_mask) >= offsets[_dataset_of(first_record, offsets) + 1]:
                for entry in range(ahead, end):
                    record = np.int64(entries[entry] & record_mask)
                    d = _dataset_of(record, offsets)
                    for column in range(0, width, _LINE_WORDS):
                        _prefetch(words[d], record - offsets[d], column)
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
                    total += _popcount64(value)
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
                    shared = _and_popcount_1024(block, p, q)
                else:
                    shared = np.uint64(0)
                    for w in range(width):
                        shared += _popcount64(block[p, w] & block[q, w])
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
        return i, _drop_seen(keys, band, sentinel, threshold, histogram, pending, out_da, out_db, out_ra, out_rb, out_sim), comparisons
    return i, pending, comparisons


@njit(nogil=True, cache=True)
def band_columns(keys, first, count):  # noqa: ANN001, ANN201
    """Columns ``first .. first + count - 1`` of the key matrices, as ``(count, records)`` rows of all datasets.

    One pass reads each record's keys of these bands together, from one cache line where they
    share one, instead of a whole line per key and band.
    """
    total = 0
    for d in range(len(keys)):
        total += keys[d].shape[0]
    out = np.empty((count, total), dtype=keys[0].dtype)
    at = 0
    for d in range(len(keys)):
        matrix = keys[d]
        for row in range(matrix.shape[0]):
            for c in range(count):
                out[c, at] = matrix[row, first + c]
            at += 1
    return out


def sorted_entries(column: np.ndarray, sentinel: int | None) -> np.ndarray:
    """:func:`band_entries` of one band's keys of any unsigned or non-negative integer type.

    Keys that do not fit below ``2**32 - 1`` (``bits_per_band + split_bits > 30``, or a column
    holding that value) are replaced by their rank among the band's distinct keys first: the
    walks only compare keys for equality, and ranks keep the keys' order.

    Args:
        column: the band's key of every record of all datasets, dataset after dataset.
        sentinel: the key of skipped records, left out; ``None`` when none is skipped.

    Returns:
        uint64 entries ``key << 32 | record``, ascending.
    """
    narrow_sentinel = np.uint32(np.iinfo(np.uint32).max)
    if column.dtype == np.uint32 and (sentinel == narrow_sentinel or not np.any(column == narrow_sentinel)):
        return band_entries(column, narrow_sentinel)
    skipped = np.zeros(len(column), dtype=bool) if sentinel is None else column == sentinel
    _, ranks = np.unique(column, return_inverse=True)
    ranks = ranks.reshape(-1).astype(np.uint32)
    ranks[skipped] = narrow_sentinel
    return band_entries(ranks, narrow_sentinel)
