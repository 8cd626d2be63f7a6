"""Compiled Dice kernels for candidate pairs: bucket all-pairs and scattered gather-and-popcount.

numpy's chunked gathers cost 20-40 times the popcount itself (``benchmarks/match.py`` measured
5e6 pairs/s per core); these numba loops read each encoding in place, popcount 64-bit words with
LLVM's ``ctpop`` (one ``popcnt`` instruction on x86-64) and never build pair arrays, reaching
1e8-3e8 pairs/s per core. Every score is ``2.0 * popcount(a & b) / (|a| + |b|)`` in double
precision, exactly as anonlink's C++ kernel computes it, so results are bit-identical to
anonlink's Dice (two empty encodings score 0). The kernels release the GIL: the caller's
threads run them on every core.

Compiled code is cached on disk (numba ``cache=True``: ``__pycache__`` beside this file, or
numba's per-user cache where that is read-only, or ``NUMBA_CACHE_DIR``), so only the first run
on a machine pays the ~2-4 s compile; later imports load it in well under a second.
"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "VECTOR_POPCOUNT",
    "and_popcount_1024",
    "bucket_pair_dice",
    "gather_buckets",
    "pair_dice",
    "popcount64",
    "prefetch",
    "record_dice",
    "row_popcounts",
]

#: Whether the CPU counts bits of 512-bit vectors in one instruction: then a 1024-bit AND-popcount is two.
VECTOR_POPCOUNT = "avx512vpopcntdq" in ll.get_host_cpu_features().flatten()


@intrinsic
def popcount64(typingctx, value):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """Population count of a uint64 via LLVM ``ctpop``."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return builder.ctpop(args[0])

    return signature, codegen


def _emit_prefetch(context, builder, array_type, array, indices):  # noqa: ANN001, ANN202 (numba codegen objects)
    """Emit ``llvm.prefetch`` of the cache line holding ``array[indices]`` (a hint: no effect on results)."""
    data = context.make_array(array_type)(context, builder, array)
    pointer = cgutils.get_item_pointer(context, builder, array_type, data, indices)
    byte_pointer = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
    prefetch = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0i8")
    # read (0), keep in all cache levels (3), data cache (1)
    builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
    return context.get_dummy_value()


@intrinsic
def _prefetch_row(typingctx, array, row):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """Ask the CPU to start loading the first cache line of ``array[row]`` (no effect on results)."""
    signature = types.void(array, types.intp)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return _emit_prefetch(context, builder, sig.args[0], args[0], [args[1], context.get_constant(types.intp, 0)])

    return signature, codegen


@intrinsic
def prefetch(typingctx, array, row, column):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """Ask the CPU to start loading the cache line of ``array[row, column]`` (no effect on results)."""
    signature = types.void(array, types.intp, types.intp)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        return _emit_prefetch(context, builder, sig.args[0], args[0], [args[1], args[2]])

    return signature, codegen


@intrinsic
def and_popcount_1024(typingctx, block, p, q):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
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
def row_popcounts(words: np.ndarray) -> np.ndarray:
    """Set bits of each row of a ``(n, w)`` uint64 matrix, as int64."""
    out = np.empty(words.shape[0], dtype=np.int64)
    for row in range(words.shape[0]):
        total = np.uint64(0)
        for w in range(words.shape[1]):
            total += popcount64(words[row, w])
        out[row] = np.int64(total)
    return out


@njit(nogil=True, cache=True, inline="always")
def record_dice(words_a, words_b, row_a, row_b, pop_a, pop_b):  # noqa: ANN001, ANN201
    """Dice of ``words_a[row_a]`` and ``words_b[row_b]`` (popcounts ``pop_a``, ``pop_b``): anonlink's arithmetic."""
    shared = np.uint64(0)
    for w in range(words_a.shape[1]):
        shared += popcount64(words_a[row_a, w] & words_b[row_b, w])
    denominator = pop_a + pop_b
    if denominator == 0:
        return 0.0
    # anonlink's arithmetic: (2 * popcount(a & b)) / (double)(|a| + |b|), no fused or reordered steps.
    return 2.0 * np.float64(shared) / np.float64(denominator)


@njit(nogil=True, cache=True)
def pair_dice(
    words_a: np.ndarray,
    words_b: np.ndarray,
    pops_a: np.ndarray,
    pops_b: np.ndarray,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    out: np.ndarray,
) -> None:
    """Dice of the scattered pairs ``(words_a[rows_a[k]], words_b[rows_b[k]])`` into ``out[k]``."""
    for k in range(rows_a.shape[0]):
        a, b = rows_a[k], rows_b[k]
        out[k] = record_dice(words_a, words_b, a, b, pops_a[a], pops_b[b])


def gather_buckets(
    words: np.ndarray, pops: np.ndarray, order: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Copy the records of some buckets out, bucket after bucket, for :func:`bucket_pair_dice`.

    Bucket ``k`` is records ``order[starts[k]:starts[k] + counts[k]]``. The copy itself is
    numpy's ``take`` (many row loads in flight at once; a compiled row loop waits on each).

    Returns:
        ``(words, pops, rows, new_starts)``: the records' encodings and popcounts in bucket order,
        the record index of each copied row, and where each bucket begins in the copy.
    """
    rows, new_starts = _bucket_rows(order, starts, counts)
    return np.take(words, rows, axis=0), np.take(pops, rows), rows, new_starts


@njit(nogil=True, cache=True)
def _bucket_rows(order: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = 0
    for k in range(counts.shape[0]):
        total += counts[k]
    rows = np.empty(total, dtype=np.int64)
    new_starts = np.empty(counts.shape[0], dtype=np.int64)
    at = 0
    for k in range(counts.shape[0]):
        new_starts[k] = at
        rows[at : at + counts[k]] = order[starts[k] : starts[k] + counts[k]]
        at += counts[k]
    return rows, new_starts


@njit(nogil=True, cache=True, inline="always")
def seen_in_earlier_band(keys_a, keys_b, row_a, row_b, band, sentinel):  # noqa: ANN001, ANN202
    """Whether the two records share a key (other than ``sentinel``) in a band before ``band``."""
    for earlier in range(band):
        key = keys_a[row_a, earlier]
        if key != sentinel and key == keys_b[row_b, earlier]:
            return True
    return False


@njit(nogil=True, cache=True)
def bucket_pair_dice(
    sorted_a: np.ndarray,
    sorted_b: np.ndarray,
    pops_a: np.ndarray,
    pops_b: np.ndarray,
    order_a: np.ndarray,
    order_b: np.ndarray,
    start_a: np.ndarray,
    count_a: np.ndarray,
    start_b: np.ndarray,
    count_b: np.ndarray,
    first_bucket: int,
    keys_a: np.ndarray,
    keys_b: np.ndarray,
    band: int,
    sentinel: int,
    threshold: float,
    floor: float,
    histogram: np.ndarray,
    out_a: np.ndarray,
    out_b: np.ndarray,
    out_sim: np.ndarray,
) -> tuple[int, int, int]:
    """Score every pair of shared buckets from ``first_bucket`` on, until the output could overflow.

    ``sorted_a`` holds one dataset's encodings (uint64 words) in bucket order, ``sorted_a[p]``
    being record ``order_a[p]``, and ``pops_a`` their popcounts in the same order; likewise for
    ``b``. Bucket ``k`` is positions ``start_a[k]:start_a[k] + count_a[k]`` of one side and the
    matching slice of the other, so that buckets are read front to back, as contiguous memory,
    and every cross pair is scored. A pair scoring at least ``floor`` that shares a key (other
    than ``sentinel``) in a band before ``band`` was already found there: it is neither counted
    nor kept (the first-band rule). Every other pair is counted in ``histogram`` (when it has
    bins) and, if it scores at least ``threshold``, its record indices and similarity are
    appended to ``out_a``, ``out_b``, ``out_sim``.

    Returns:
        ``(next_bucket, kept, comparisons)``: where to resume (``len(count_a)`` when done), how
        many pairs were written, and how many were scored. A bucket is started only when all its
        pairs would fit in the output, so the caller must size the output for the largest bucket.
    """
    bins = histogram.shape[0]
    capacity = out_sim.shape[0]
    kept = 0
    comparisons = 0
    bucket = first_bucket
    while bucket < count_a.shape[0]:
        size_a, size_b = count_a[bucket], count_b[bucket]
        if kept + size_a * size_b > capacity:
            break
        first_a, first_b = start_a[bucket], start_b[bucket]
        if band > 0:
            # The earlier-band check reads these records' keys, scattered in memory: start the
            # loads now so that they overlap the popcounts.
            for p in range(first_a, first_a + size_a):
                _prefetch_row(keys_a, order_a[p])
            for q in range(first_b, first_b + size_b):
                _prefetch_row(keys_b, order_b[q])
        for p in range(first_a, first_a + size_a):
            pop_a = pops_a[p]
            for q in range(first_b, first_b + size_b):
                sim = record_dice(sorted_a, sorted_b, p, q, pop_a, pops_b[q])
                if sim >= floor and band > 0:
                    if seen_in_earlier_band(keys_a, keys_b, order_a[p], order_b[q], band, sentinel):
                        continue
                if bins > 0:
                    histogram[min(int(sim * bins), bins - 1)] += 1
                if sim >= threshold:
                    out_a[kept] = order_a[p]
                    out_b[kept] = order_b[q]
                    out_sim[kept] = sim
                    kept += 1
        comparisons += size_a * size_b
        bucket += 1
    return bucket, kept, comparisons
