"""anonlink's candidate order, fast: similarity descending, then ``(dataset_a, dataset_b, row_a, row_b)``.

``np.lexsort`` over the five keys took 11.7 s for the 13M pairs a 4 x 100k round finds at the
calibration floor. Here each pair becomes one 64-bit key: a similarity rank on top, then the four
indices packed below it, and the keys are radix-sorted (least significant digit first, so stable,
with passes whose digit never varies skipped). The rank is ``floor((hi - s) * 2**e)``, a monotone
function of the similarity, for the largest ``e`` that fits; Dice values of ``b``-bit encodings are
fractions ``2c / s`` with ``s <= 2b``, at least ``2 / (2b)^2`` apart, so with 1024-bit encodings
distinct values get distinct ranks. Pairs whose ranks tie but whose similarities differ (other
values) are put in order afterwards, so the result is exactly ``np.lexsort((r_b, r_a, d_b, d_a,
-sims))`` whatever the values are (``tests/coordinator/test_greedy.py``).

:func:`sorted_candidates` sorts the columns themselves: the similarity rides along with its key and
the indices are read back from the sorted keys, so no permutation is gathered through.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["candidate_order", "sorted_candidates"]

#: Bits of a radix digit: 4096 counters (32 KB) stay in the first-level cache, and a floor's 60-bit keys
#: take five passes, not six.
_DIGIT = 12
#: Rank bits at most: with the rank's range below 2**22 over a span of 0.45, Dice values of
#: 1024-bit encodings (at least 2**-21 apart) get distinct ranks.
_RANK_BITS = 22


@njit(cache=True, nogil=True)
def _digit_counts(key: np.ndarray, passes: int) -> np.ndarray:
    """Every digit's counts over ``key``, in one pass: ``(passes, 2**_DIGIT)``."""
    radix = 1 << _DIGIT
    mask = np.uint64(radix - 1)
    counts = np.zeros((max(passes, 1), radix), dtype=np.int64)
    for i in range(len(key)):
        k = key[i]
        for p in range(passes):
            counts[p, (k >> np.uint64(p * _DIGIT)) & mask] += 1
    return counts


@njit(cache=True, nogil=True)
def _radix_passes(key: np.ndarray, payload: np.ndarray, counts: np.ndarray, run: np.ndarray, key_tmp: np.ndarray,
                  pay_tmp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LSD passes ``run`` marks, each scattering by its digit (``counts``: this array's digit counts).

    An empty ``payload`` (and ``pay_tmp``) carries nothing: the keys alone move.
    """
    n = len(key)
    radix = 1 << _DIGIT
    mask = np.uint64(radix - 1)
    carry = len(payload) > 0
    for p in range(len(run)):
        if not run[p]:
            continue
        count = counts[p].copy()
        s = np.uint64(p * _DIGIT)
        total = 0
        for d in range(radix):
            c = count[d]
            count[d] = total
            total += c
        if carry:
            for i in range(n):
                k = key[i]
                d = (k >> s) & mask
                j = count[d]
                key_tmp[j] = k
                pay_tmp[j] = payload[i]
                count[d] = j + 1
        else:
            for i in range(n):
                k = key[i]
                d = (k >> s) & mask
                j = count[d]
                key_tmp[j] = k
                count[d] = j + 1
        key, key_tmp = key_tmp, key
        payload, pay_tmp = pay_tmp, payload
    return key, payload


@njit(cache=True, nogil=True)
def _radix_sort(key: np.ndarray, payload: np.ndarray, bits: int, key_tmp: np.ndarray,
                pay_tmp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable LSD radix sort of ``key`` (uint64, below ``2**bits``) carrying ``payload``; all four arrays are reused.

    Every digit's counts come from one pass over the keys (the keys are the same set before each
    pass); a digit every key shares orders nothing, and its pass is skipped.
    """
    passes = (bits + _DIGIT - 1) // _DIGIT
    counts = _digit_counts(key, passes)
    run = np.zeros(passes, dtype=np.bool_)
    for p in range(passes):
        run[p] = counts[p].max() < len(key)
    return _radix_passes(key, payload, counts, run, key_tmp, pay_tmp)


@njit(cache=True, nogil=True)
def _keys(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray, r_b: np.ndarray,
          widths: np.ndarray, rank_bits: int, key: np.ndarray) -> np.ndarray:
    """Each pair's key, into ``key``: ``floor((hi - sim) * 2**e)`` above the packed ``(d_a, d_b, r_a, r_b)``."""
    _keys_into(sims, d_a, d_b, r_a, r_b, widths, rank_bits, sims.min(), sims.max(), key, key[:0], 0)
    return key


@njit(cache=True, nogil=True)
def _keys_into(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray, r_b: np.ndarray,
               widths: np.ndarray, rank_bits: int, lo: float, hi: float, key: np.ndarray, sims_out: np.ndarray,
               start: int) -> None:
    """:func:`_keys` of one batch, ranked over all batches' ``[lo, hi]``, into ``key[start:]``.

    Its similarities go into ``sims_out[start:]`` too, unless that is empty.
    """
    n = len(sims)
    scale = 0.0
    if hi > lo:
        # The largest power of two keeping (hi - lo) * scale below 2**rank_bits (exact scaling, monotone rank).
        scale = math.ldexp(1.0, rank_bits - math.frexp(hi - lo)[1])
    s_da = np.uint64(widths[1] + widths[2] + widths[3])
    s_db = np.uint64(widths[2] + widths[3])
    s_ra = np.uint64(widths[3])
    s_rank = np.uint64(widths[0] + widths[1] + widths[2] + widths[3])
    copy = len(sims_out) > 0
    for i in range(n):
        rank = np.uint64(int((hi - sims[i]) * scale))
        key[start + i] = ((rank << s_rank) | (np.uint64(d_a[i]) << s_da) | (np.uint64(d_b[i]) << s_db)
                          | (np.uint64(r_a[i]) << s_ra) | np.uint64(r_b[i]))
        if copy:
            sims_out[start + i] = sims[i]


@njit(cache=True, nogil=True)
def _fix_ties(key: np.ndarray, sims: np.ndarray, position: np.ndarray, rank_shift: int, carry: bool) -> None:
    """Order each run of equal ranks whose similarities differ by ``(-sim, key, position)`` (in place).

    ``sims`` are the sorted pairs' similarities; ``position`` their original index when ``carry``
    (else ``sims`` again, when the pairs carry no index: equal keys with equal similarities are then
    the same pair, and ``position`` moves with ``sims``).
    """
    n = len(key)
    r = np.uint64(rank_shift)
    start = 0
    while start < n:
        rank = key[start] >> r
        end = start + 1
        mixed = False
        while end < n and key[end] >> r == rank:
            if sims[end] != sims[start]:
                mixed = True
            end += 1
        if mixed and end - start > 16:
            # The run is in (key, position) order already: a stable sort by similarity finishes it.
            by = np.argsort(-sims[start:end], kind="mergesort")
            key[start:end] = key[start:end][by]
            sims[start:end] = sims[start:end][by]
            if carry:
                position[start:end] = position[start:end][by]
        elif mixed:
            # Insertion sort: rank ties between different values are rare (coarse ranks only).
            for i in range(start + 1, end):
                k, s, p = key[i], sims[i], position[i]
                j = i - 1
                while j >= start and (sims[j] < s or (sims[j] == s and (key[j], position[j]) > (k, p))):
                    key[j + 1], sims[j + 1], position[j + 1] = key[j], sims[j], position[j]
                    j -= 1
                key[j + 1], sims[j + 1], position[j + 1] = k, s, p
        start = end


def _sort_keys(sims: np.ndarray, columns: tuple[np.ndarray, ...], widths: np.ndarray, rank_bits: int,
               payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted keys and ``payload`` carried with them (ties of rank not yet put right).

    The scratch arrays are numba's, in small pages: numpy asks the kernel for huge pages, and on a
    machine whose memory is fragmented each costs a compaction (measured: seconds of system time
    for a 4 x 100k round's floor, against a fraction of a second in small pages).
    """
    key = _empty_like(np.zeros(0, dtype=np.uint64), len(sims))
    _keys(sims, *columns, widths, rank_bits, key)
    return _radix_sort(key, payload, int(widths.sum()) + rank_bits, _empty_like(key, len(key)),
                       _empty_like(payload, len(payload)))


@njit(cache=True, nogil=True)
def _empty_like(like: np.ndarray, n: int) -> np.ndarray:
    """An uninitialised array of ``n`` of ``like``'s dtype, allocated by numba."""
    return np.empty(n, dtype=like.dtype)


@njit(cache=True, nogil=True)
def _unpack(key: np.ndarray, shift: int, width: int, out: np.ndarray) -> None:
    """Bits ``shift .. shift + width`` of each key, into ``out``."""
    s = np.uint64(shift)
    mask = np.uint64((1 << width) - 1)
    for i in range(len(key)):
        out[i] = (key[i] >> s) & mask


def _layout(sims: np.ndarray, columns: tuple[np.ndarray, ...]) -> tuple[np.ndarray, int] | None:
    """Bit widths of ``(d_a, d_b, r_a, r_b)`` and of the rank, or ``None`` when they cannot be packed."""
    widths = [max(int(x.max()), 0).bit_length() for x in columns]
    if any(int(x.min()) < 0 for x in columns) or not np.isfinite(sims).all():
        return None
    rank_bits = min(64 - sum(widths), _RANK_BITS)
    if rank_bits < 1:
        return None
    return np.array(widths, dtype=np.int64), rank_bits


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
    sims = np.ascontiguousarray(sims, dtype=np.float64)
    columns = tuple(np.ascontiguousarray(x) for x in (d_a, d_b, r_a, r_b))
    layout = _layout(sims, columns)
    if layout is None:
        return np.lexsort((r_b, r_a, d_b, d_a, -sims))
    widths, rank_bits = layout
    key, order = _sort_keys(sims, columns, widths, rank_bits, np.arange(len(sims), dtype=np.int64))
    _fix_ties(key, np.take(sims, order), order, int(widths.sum()), True)
    return order


def sorted_candidates(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray,
                      r_b: np.ndarray, *, overwrite: bool = False) -> tuple[np.ndarray, ...]:
    """The five columns in :func:`candidate_order`'s order, each in its own dtype.

    Equal to gathering each column through :func:`candidate_order`, without the permutation. With
    ``overwrite`` the given arrays may be reused for the result (at a round's floor every fresh
    100 MB array costs its page faults).

    >>> [c.tolist() for c in sorted_candidates(np.array([0.7, 0.9, 0.7]), *(np.array([0, 0, 0]),) * 2,
    ...                                         np.array([2, 0, 1]), np.array([0, 0, 0]))]
    [[0.9, 0.7, 0.7], [0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 0, 0]]
    """
    columns = (d_a, d_b, r_a, r_b)
    layout = None
    if len(sims):
        sims = np.ascontiguousarray(sims, dtype=np.float64)
        columns = tuple(np.ascontiguousarray(x) for x in columns)
        layout = _layout(sims, columns)
    if layout is None:
        order = candidate_order(sims, *columns)
        return tuple(np.take(c, order) for c in (sims, *columns))
    widths, rank_bits = layout
    key, sorted_sims = _sort_keys(sims, columns, widths, rank_bits, sims if overwrite else sims.copy())
    index_bits = int(widths.sum())
    _fix_ties(key, sorted_sims, sorted_sims, index_bits, False)
    out = [sorted_sims]
    shift = index_bits
    for column, width in zip(columns, widths.tolist(), strict=True):
        shift -= width
        values = column if overwrite and column.flags.writeable else np.empty(len(key), dtype=column.dtype)
        _unpack(key, shift, width, values)
        out.append(values)
    return tuple(out)
