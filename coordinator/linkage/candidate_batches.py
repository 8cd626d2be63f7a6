"""A round's found batches in anonlink's candidate order, sorted without joining them, on two threads.

:func:`sorted_batches` gives what :func:`~coordinator.linkage.candidate_order.sorted_candidates` gives
for the joined columns, with the same keys, radix sort and tie fixing: the batches' keys are written
straight into one array (each batch dropped as it is read), every large array is numba's (small
pages: at a round's floor, fresh 100 MB numpy arrays cost seconds of page faults), and with two
workers the keying, the sort (each half's passes, then a merge) and the unpacking run on two threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from coordinator.linkage.candidate_order import (
    _DIGIT,
    _RANK_BITS,
    _digit_counts,
    _empty_like,
    _fix_ties,
    _keys_into,
    _radix_passes,
    sorted_candidates,
)

__all__ = ["sorted_batches", "sorted_distinct_batches"]

#: Pairs from which a sort's halves run on two threads (below it, threads cost more than they save).
_PARALLEL_FROM = 1 << 20
#: Keys sharing their sorted low bits searched for a repeated index before the answer is "not known".
_RUN_MOST = 256
#: A rank no pair has yet: a NaN's bits, never those of a similarity the sort takes (all finite).
_UNSET = 0xFFFFFFFFFFFFFFFF


@njit(cache=True, nogil=True)
def _merge(key_a: np.ndarray, pay_a: np.ndarray, key_b: np.ndarray, pay_b: np.ndarray, key_out: np.ndarray,
           pay_out: np.ndarray) -> None:
    """Merge two key-sorted runs (``a``'s first among equal keys, as a stable sort of ``a`` then ``b`` puts them)."""
    i, j, o = 0, 0, 0
    while i < len(key_a) and j < len(key_b):
        if key_b[j] < key_a[i]:
            key_out[o], pay_out[o] = key_b[j], pay_b[j]
            j += 1
        else:
            key_out[o], pay_out[o] = key_a[i], pay_a[i]
            i += 1
        o += 1
    while i < len(key_a):
        key_out[o], pay_out[o] = key_a[i], pay_a[i]
        i += 1
        o += 1
    while j < len(key_b):
        key_out[o], pay_out[o] = key_b[j], pay_b[j]
        j += 1
        o += 1


@njit(cache=True, nogil=True)
def _merge_keys(key_a: np.ndarray, key_b: np.ndarray, key_out: np.ndarray) -> None:
    """:func:`_merge` of keys that carry nothing."""
    i, j, o = 0, 0, 0
    while i < len(key_a) and j < len(key_b):
        if key_b[j] < key_a[i]:
            key_out[o] = key_b[j]
            j += 1
        else:
            key_out[o] = key_a[i]
            i += 1
        o += 1
    key_out[o : o + len(key_a) - i] = key_a[i:]
    o += len(key_a) - i
    key_out[o : o + len(key_b) - j] = key_b[j:]


@njit(cache=True, nogil=True)
def _unset_table(rank_bits: int) -> np.ndarray:
    """A table of each rank's similarity (its float64 bits), every slot :data:`_UNSET`."""
    return np.full(1 << rank_bits, np.uint64(_UNSET), dtype=np.uint64)


@njit(cache=True, nogil=True)
def _table_ranks(key: np.ndarray, sims_bits: np.ndarray, rank_shift: int, table: np.ndarray, start: int) -> bool:
    """Note each pair's similarity (``sims_bits``, keys ``key[start:]``) under its rank; ``False``: a rank holds two."""
    consistent = True
    shift = np.uint64(rank_shift)
    for i in range(len(sims_bits)):
        rank = key[start + i] >> shift
        held = table[rank]
        if held != sims_bits[i]:
            if held == np.uint64(_UNSET):
                table[rank] = sims_bits[i]
            else:
                consistent = False
    return consistent


@njit(cache=True, nogil=True)
def _join_tables(table: np.ndarray, other: np.ndarray) -> bool:
    """Add ``other``'s ranks to ``table``; ``False`` if a rank holds two similarities."""
    for r in range(len(table)):
        if other[r] != np.uint64(_UNSET):
            if table[r] == np.uint64(_UNSET):
                table[r] = other[r]
            elif table[r] != other[r]:
                return False
    return True


@njit(cache=True, nogil=True)
def _unpack_tabled(key: np.ndarray, widths: np.ndarray, table: np.ndarray, sims_bits: np.ndarray, d_a: np.ndarray,
                   d_b: np.ndarray, r_a: np.ndarray, r_b: np.ndarray) -> None:
    """:func:`_unpack_all`, and each pair's similarity read from ``table`` by its rank.

    ``sims_bits`` may be ``key``'s own memory: every key is read before its slot is written.
    """
    rank_shift = np.uint64(widths[0] + widths[1] + widths[2] + widths[3])
    _unpack_all(key, widths, d_a, d_b, r_a, r_b)
    for i in range(len(key)):
        sims_bits[i] = table[key[i] >> rank_shift]


@njit(cache=True, nogil=True)
def _index_repeats(key_a: np.ndarray, key_b: np.ndarray, sorted_bits: int, index_bits: int) -> int:
    """Whether two keys of ``key_a`` and ``key_b`` share their low ``index_bits``: 1 yes, 0 no, -1 not known.

    Each array is sorted by its keys' low ``sorted_bits`` (at most ``index_bits``): walking both in
    merged order, keys sharing those bits are neighbours, and each run of them is searched for equal
    indices (a run holds at most ``2**(index_bits - sorted_bits)`` keys unless indices repeat; past
    :data:`_RUN_MOST` the answer is "not known").
    """
    low = np.uint64((1 << sorted_bits) - 1)
    index = np.uint64((1 << index_bits) - 1)
    run = np.empty(_RUN_MOST, dtype=np.uint64)
    length = 0
    current = np.uint64(0)
    i, j = 0, 0
    while i < len(key_a) or j < len(key_b):
        if j >= len(key_b) or (i < len(key_a) and key_a[i] & low <= key_b[j] & low):
            k = key_a[i]
            i += 1
        else:
            k = key_b[j]
            j += 1
        if length == 0 or k & low != current:
            current = k & low
            length = 0
        else:
            for t in range(length):
                if run[t] == k & index:
                    return 1
            if length == _RUN_MOST:
                return -1
        run[length] = k & index
        length += 1
    return 0


@njit(cache=True, nogil=True)
def _first_at_least(key: np.ndarray, sorted_bits: int, value: np.uint64) -> int:
    """Where the first key whose low ``sorted_bits`` are at least ``value`` is (``key`` sorted by those bits)."""
    low = np.uint64((1 << sorted_bits) - 1)
    lo, hi = 0, len(key)
    while lo < hi:
        mid = (lo + hi) // 2
        if key[mid] & low < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _repeats_on_two_threads(pool: ThreadPoolExecutor | None, key_a: np.ndarray, key_b: np.ndarray, sorted_bits: int,
                            index_bits: int) -> int:
    """:func:`_index_repeats` split at one value of the sorted bits (no run split) on two threads; no pool: one."""
    if pool is None or sorted_bits == 0 or len(key_a) == 0:
        return _index_repeats(key_a, key_b, sorted_bits, index_bits)
    pivot = key_a[len(key_a) // 2] & np.uint64((1 << sorted_bits) - 1)
    at_a, at_b = _first_at_least(key_a, sorted_bits, pivot), _first_at_least(key_b, sorted_bits, pivot)
    below = pool.submit(_index_repeats, key_a[:at_a], key_b[:at_b], sorted_bits, index_bits)
    above = _index_repeats(key_a[at_a:], key_b[at_b:], sorted_bits, index_bits)
    answers = (below.result(), above)
    return 1 if 1 in answers else -1 if -1 in answers else 0


def _sort_halves(key: np.ndarray, payload: np.ndarray, bits: int, workers: int,
                 index_bits: int = 0) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """:func:`_radix_sort` of ``key`` with ``payload``, each half on its own thread, then merged (equal result).

    Both halves run the passes the whole array needs (a digit every key shares is skipped by both),
    so both end in the same buffer and the merge writes into the other one, which is already mapped.
    Also says whether the keys' low ``index_bits`` are known to be distinct: after the passes of the
    digits below them the halves are sorted by those digits, and one walk over both finds equal
    ones (:func:`_index_repeats`; no ``index_bits``: not known). An empty ``payload`` carries
    nothing (the keys alone move). Last comes the other key buffer, mapped and free for reuse.
    """
    n = len(key)
    key_tmp, pay_tmp = _empty_like(key, n), _empty_like(payload, len(payload))
    passes = (bits + _DIGIT - 1) // _DIGIT
    split = min(index_bits // _DIGIT, passes)  # passes of digits wholly below ``index_bits``
    parallel = workers >= 2 and n >= _PARALLEL_FROM
    half = n // 2 if parallel else n
    buffers = ((key, payload), (key_tmp, pay_tmp))
    where = 0  # which of ``buffers`` holds the keys
    repeats = -1
    with ThreadPoolExecutor(1) as pool:
        counted = pool.submit(_digit_counts, key[:half], passes)
        second = _digit_counts(key[half:], passes)
        first = counted.result()
        total = first + second
        run = np.array([total[p].max() < n for p in range(passes)], dtype=np.bool_)
        for stage in (run & (np.arange(passes) < split), run & (np.arange(passes) >= split)):
            (k, q), (k_tmp, q_tmp) = buffers[where], buffers[1 - where]
            left = pool.submit(_radix_passes, k[:half], q[:half], first, stage, k_tmp[:half], q_tmp[:half])
            k_b, p_b = _radix_passes(k[half:], q[half:], second, stage, k_tmp[half:], q_tmp[half:])
            k_a, p_a = left.result()
            where ^= int(stage.sum()) % 2
            if repeats < 0 and index_bits:
                repeats = _repeats_on_two_threads(pool if parallel else None, k_a, k_b, split * _DIGIT, index_bits)
    if not parallel:
        return k_a, p_a, repeats == 0, buffers[1 - where][0]
    # The halves lie in one buffer: merged into the other, already mapped.
    out_key, out_pay = buffers[1 - where]
    if len(payload):
        _merge(k_a, p_a, k_b, p_b, out_key, out_pay)
    else:
        _merge_keys(k_a, k_b, out_key)
    return out_key, out_pay, repeats == 0, buffers[where][0]


@njit(cache=True, nogil=True)
def _drop_repeated_keys(key: np.ndarray, payload: np.ndarray) -> int:
    """Keep the first of each run of equal keys of sorted ``key`` in place (``payload`` with it, if as long).

    Returns:
        How many keys remain, at the front of ``key``.
    """
    n = len(key)
    carry = len(payload) == n
    kept = min(n, 1)
    for i in range(1, n):
        if key[i] != key[kept - 1]:
            key[kept] = key[i]
            if carry:
                payload[kept] = payload[i]
            kept += 1
    return kept


@njit(cache=True, nogil=True)
def _batch_bounds(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray,
                  r_b: np.ndarray) -> tuple[float, float, bool, int, int, int, int, int, bool]:
    """One batch's similarity bounds, whether all are finite, its lowest index, each column's highest, and more.

    The last value says whether every pair's first dataset is below its second.
    """
    lo, hi, finite = np.inf, -np.inf, True
    low = 0
    m_da, m_db, m_ra, m_rb = 0, 0, 0, 0
    ordered = True
    for i in range(len(sims)):
        s = sims[i]
        if not np.isfinite(s):
            finite = False
        if d_a[i] >= d_b[i]:
            ordered = False
        lo, hi = min(lo, s), max(hi, s)
        low = min(low, int(d_a[i]), int(d_b[i]), int(r_a[i]), int(r_b[i]))
        m_da, m_db = max(m_da, int(d_a[i])), max(m_db, int(d_b[i]))
        m_ra, m_rb = max(m_ra, int(r_a[i])), max(m_rb, int(r_b[i]))
    return lo, hi, finite, low, m_da, m_db, m_ra, m_rb, ordered


@njit(cache=True, nogil=True)
def _unpack_all(key: np.ndarray, widths: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray,
                r_b: np.ndarray) -> None:
    """The four packed indices of each key, in one pass."""
    s_db, s_ra = np.uint64(widths[2] + widths[3]), np.uint64(widths[3])
    s_da = np.uint64(widths[1]) + s_db
    m_da, m_db = np.uint64((1 << widths[0]) - 1), np.uint64((1 << widths[1]) - 1)
    m_ra, m_rb = np.uint64((1 << widths[2]) - 1), np.uint64((1 << widths[3]) - 1)
    for i in range(len(key)):
        k = key[i]
        d_a[i] = (k >> s_da) & m_da
        d_b[i] = (k >> s_db) & m_db
        r_a[i] = (k >> s_ra) & m_ra
        r_b[i] = k & m_rb


def sorted_batches(sims: list[np.ndarray], d_a: list[np.ndarray], d_b: list[np.ndarray], r_a: list[np.ndarray],
                   r_b: list[np.ndarray], *, workers: int = 1) -> tuple[np.ndarray, ...]:
    """:func:`sorted_candidates` of batches of pairs, each column given as a list of its batches' arrays.

    The batches are never joined: each one's keys are written straight into one array (the lists
    are emptied), and every large array is numba's, in small pages (see :func:`_sort_keys`): at a
    round's floor, fresh 100 MB numpy arrays cost seconds of page faults. When every similarity
    rank holds one value (Dice values of one round's encodings), the keys are sorted alone and the
    similarities read back by rank; otherwise they ride with their keys. With ``workers`` > 1 a
    large sort's halves run on two threads and are merged (the same order).

    >>> [c.tolist() for c in sorted_batches([np.array([0.7]), np.array([0.9, 0.7])], *([np.array([0]),
    ...                                      np.array([0, 0])],) * 2, [np.array([2]), np.array([0, 1])],
    ...                                     [np.array([0]), np.array([0, 0])])]
    [[0.9, 0.7, 0.7], [0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 0, 0]]
    """
    return sorted_distinct_batches(sims, d_a, d_b, r_a, r_b, workers=workers)[0]


def sorted_distinct_batches(sims: list[np.ndarray], d_a: list[np.ndarray], d_b: list[np.ndarray],
                            r_a: list[np.ndarray], r_b: list[np.ndarray], *,
                            workers: int = 1, drop_repeats: bool = False) -> tuple[tuple[np.ndarray, ...], bool]:
    """:func:`sorted_batches`, and whether the pairs are known to be distinct (no pair given twice).

    Known when every pair's first dataset is below its second (a pair has one spelling) and the
    sort, which orders the keys by their packed indices before their similarity ranks (least
    significant digit first), finds no two equal indices on the way (:func:`_index_repeats`): the
    greedy solver then needs no adjacency (:func:`~coordinator.linkage.greedy.greedy_roots`).
    ``False`` means repeated or not known.

    With ``drop_repeats``, a pair given more than once is kept once (a comparison that kept
    repeats: ``compare.REPEATS_BELOW``): with one spelling per pair its repeats share a key and
    lie side by side once sorted, and the pairs are then known to be distinct. With some pair
    spelt the other way round (or with batches of mixed types) the repeats stay, and are not
    known distinct: the solver's adjacency takes them, as for any repeats.

    >>> columns, distinct = sorted_distinct_batches([np.array([0.7, 0.9])], [np.array([0, 0])], [np.array([1, 1])],
    ...                                             [np.array([2, 2])], [np.array([0, 1])])
    >>> distinct, columns[0].tolist()
    (True, [0.9, 0.7])
    """
    columns = (sims, d_a, d_b, r_a, r_b)
    n = sum(len(x) for x in sims)
    if n == 0 or any(len(c) != len(sims) for c in columns) or \
            any(len({x.dtype for x in c}) != 1 for c in columns) or sims[0].dtype != np.float64 or \
            any(not np.issubdtype(c[0].dtype, np.integer) for c in columns[1:]):
        joined = [np.concatenate(c) if c else np.zeros(0) for c in columns]
        for c in columns:
            c.clear()
        return sorted_candidates(*joined, overwrite=True), n == 0
    batches = [tuple(np.ascontiguousarray(c[i]) for c in columns) for i in range(len(sims))]
    for c in columns:
        c.clear()
    bounds = [_batch_bounds(*batch) for batch in batches if len(batch[0])]
    lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
    widths = [max(b[4 + k] for b in bounds).bit_length() for k in range(4)]
    rank_bits = min(64 - sum(widths), _RANK_BITS)
    if not all(b[2] for b in bounds) or min(b[3] for b in bounds) < 0 or rank_bits < 1:
        joined = [np.concatenate([batch[k] for batch in batches]) for k in range(5)]
        batches.clear()
        return sorted_candidates(*joined, overwrite=True), False
    layout = np.array(widths, dtype=np.int64)
    dtypes = [batches[0][k].dtype for k in range(5)]
    key = _empty_like(np.zeros(0, dtype=np.uint64), n)
    # With some pair's datasets the other way round (or one dataset) a repeat may be spelt differently.
    index_bits = int(layout.sum())
    checked = index_bits if all(b[8] for b in bounds) else 0
    parallel = workers > 1 and n >= _PARALLEL_FROM and len(batches) > 1
    half = n // 2
    if parallel:
        starts = np.cumsum([0] + [len(batch[0]) for batch in batches])
        cut = min(max(int(np.searchsorted(starts, n // 2)), 1), len(batches) - 1)
        parts = [(batches[:cut], 0), (batches[cut:], int(starts[cut]))]
    else:
        parts = [(batches[:], 0)]
    batches.clear()

    # First the keys alone, each similarity noted under its rank: Dice values of the same encodings
    # are far enough apart that every rank holds one (see candidate_order), and then the sort moves
    # the keys alone (half the bytes a pass moves with the similarities) and reads them back by rank.
    # Each batch's indices go as soon as its keys are written; its similarities stay until the table
    # is known to hold them (no more memory than the similarities' copy riding with the keys took).
    def tabled(part: list[tuple[np.ndarray, ...]], at: int) -> tuple[np.ndarray, bool, list[np.ndarray]]:
        table, consistent, kept = _unset_table(rank_bits), True, []
        part.reverse()
        while part:
            batch = part.pop()
            _keys_into(*batch, layout, rank_bits, lo, hi, key, key[:0], at)
            consistent &= _table_ranks(key, batch[0].view(np.uint64), index_bits, table, at)
            at += len(batch[0])
            kept.append(batch[0])
            del batch
        return table, consistent, kept

    with ThreadPoolExecutor(1) as pool:
        keyed = [pool.submit(tabled, *part) for part in parts[1:]]
        results = [tabled(*parts[0])] + [f.result() for f in keyed]
    parts.clear()
    table = results[0][0]
    if all(ok for _, ok, _ in results) and all(_join_tables(table, other) for other, _, _ in results[1:]):
        results.clear()
        key, _, distinct, spare = _sort_halves(key, np.zeros(0), index_bits + rank_bits, workers, checked)
        kept = n
        if drop_repeats and checked:
            kept = _drop_repeated_keys(key, key[:0])
            key, distinct, half = key[:kept], True, kept // 2
        # Fresh memory costs its page faults (~35 ms per 100 MB): the similarities overwrite their own
        # sorted keys (each slot once its key is read), and two 4-byte columns fill the sort's spare buffer.
        values = key.view(np.float64)
        out = [_empty_like(np.zeros(0, dtype=dtype), kept) for dtype in dtypes[3:]]
        if dtypes[1].itemsize == dtypes[2].itemsize == 4:
            out = [spare.view(dtypes[1])[:kept], spare.view(dtypes[2])[n : n + kept], *out]
        else:
            out = [_empty_like(np.zeros(0, dtype=dtype), kept) for dtype in dtypes[1:3]] + out
        del spare
        if parallel:
            with ThreadPoolExecutor(1) as pool:
                unpacked = pool.submit(_unpack_tabled, key[:half], layout, table, values[:half].view(np.uint64),
                                       *(o[:half] for o in out))
                _unpack_tabled(key[half:], layout, table, values[half:].view(np.uint64), *(o[half:] for o in out))
                unpacked.result()
        else:
            _unpack_tabled(key, layout, table, values.view(np.uint64), *out)
        return (values, *out), distinct
    # Some rank holds two similarities: the similarities ride with their keys (in the keys' order:
    # the parts' batches in turn), and ties are put right.
    values = _empty_like(np.zeros(0, dtype=np.float64), n)
    at = 0
    for _, _, kept in results:
        for sims_part in kept:
            values[at : at + len(sims_part)] = sims_part
            at += len(sims_part)
    results.clear()
    key, values, distinct, _ = _sort_halves(key, values, index_bits + rank_bits, workers, checked)
    _fix_ties(key, values, values, index_bits, False)
    if drop_repeats and checked:
        kept = _drop_repeated_keys(key, values)
        key, values, distinct, half = key[:kept], values[:kept], True, kept // 2
    out = [_empty_like(np.zeros(0, dtype=dtype), len(key)) for dtype in dtypes[1:]]
    if parallel:
        with ThreadPoolExecutor(1) as pool:
            unpacked = pool.submit(_unpack_all, key[:half], layout, *(o[:half] for o in out))
            _unpack_all(key[half:], layout, *(o[half:] for o in out))
            unpacked.result()
    else:
        _unpack_all(key, layout, *out)
    return (values, *out), distinct
