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
    _radix_sort,
    sorted_candidates,
)

__all__ = ["sorted_batches"]

#: Pairs from which a sort's halves run on two threads (below it, threads cost more than they save).
_PARALLEL_FROM = 1 << 20


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


def _sort_halves(key: np.ndarray, payload: np.ndarray, bits: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_radix_sort` of ``key`` with ``payload``, each half on its own thread, then merged (equal result).

    Both halves run the passes the whole array needs (a digit every key shares is skipped by both),
    so both end in the same buffer and the merge writes into the other one, which is already mapped.
    """
    n = len(key)
    key_tmp, pay_tmp = _empty_like(key, n), _empty_like(payload, n)
    if workers < 2 or n < _PARALLEL_FROM:
        return _radix_sort(key, payload, bits, key_tmp, pay_tmp)
    passes = (bits + _DIGIT - 1) // _DIGIT
    half = n // 2
    with ThreadPoolExecutor(2) as pool:
        counted = pool.submit(_digit_counts, key[:half], passes)
        second = _digit_counts(key[half:], passes)
        first = counted.result()
        total = first + second
        run = np.array([total[p].max() < n for p in range(passes)], dtype=np.bool_)
        left = pool.submit(_radix_passes, key[:half], payload[:half], first, run, key_tmp[:half], pay_tmp[:half])
        k_b, p_b = _radix_passes(key[half:], payload[half:], second, run, key_tmp[half:], pay_tmp[half:])
        k_a, p_a = left.result()
    # An even number of passes leaves the halves in ``key``, an odd one in ``key_tmp``: merge into the other.
    out_key, out_pay = (key_tmp, pay_tmp) if int(run.sum()) % 2 == 0 else (key, payload)
    _merge(k_a, p_a, k_b, p_b, out_key, out_pay)
    return out_key, out_pay


@njit(cache=True, nogil=True)
def _batch_bounds(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray,
                  r_b: np.ndarray) -> tuple[float, float, bool, int, int, int, int, int]:
    """One batch's lowest and highest similarity, whether all are finite, its lowest index and each column's highest."""
    lo, hi, finite = np.inf, -np.inf, True
    low = 0
    m_da, m_db, m_ra, m_rb = 0, 0, 0, 0
    for i in range(len(sims)):
        s = sims[i]
        if not np.isfinite(s):
            finite = False
        lo, hi = min(lo, s), max(hi, s)
        low = min(low, int(d_a[i]), int(d_b[i]), int(r_a[i]), int(r_b[i]))
        m_da, m_db = max(m_da, int(d_a[i])), max(m_db, int(d_b[i]))
        m_ra, m_rb = max(m_ra, int(r_a[i])), max(m_rb, int(r_b[i]))
    return lo, hi, finite, low, m_da, m_db, m_ra, m_rb


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

    The batches are never joined: each one's keys are written straight into one array and the batch
    is dropped (the lists are emptied), and every large array is numba's, in small pages (see
    :func:`_sort_keys`): at a round's floor, fresh 100 MB numpy arrays cost seconds of page faults.
    With ``workers`` > 1 a large sort's halves run on two threads and are merged (the same order).

    >>> [c.tolist() for c in sorted_batches([np.array([0.7]), np.array([0.9, 0.7])], *([np.array([0]),
    ...                                      np.array([0, 0])],) * 2, [np.array([2]), np.array([0, 1])],
    ...                                     [np.array([0]), np.array([0, 0])])]
    [[0.9, 0.7, 0.7], [0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 0, 0]]
    """
    columns = (sims, d_a, d_b, r_a, r_b)
    n = sum(len(x) for x in sims)
    if n == 0 or any(len(c) != len(sims) for c in columns) or \
            any(len({x.dtype for x in c}) != 1 for c in columns) or sims[0].dtype != np.float64 or \
            any(not np.issubdtype(c[0].dtype, np.integer) for c in columns[1:]):
        joined = [np.concatenate(c) if c else np.zeros(0) for c in columns]
        for c in columns:
            c.clear()
        return sorted_candidates(*joined, overwrite=True)
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
        return sorted_candidates(*joined, overwrite=True)
    layout = np.array(widths, dtype=np.int64)
    dtypes = [batches[0][k].dtype for k in range(5)]
    key = _empty_like(np.zeros(0, dtype=np.uint64), n)
    values = _empty_like(np.zeros(0, dtype=np.float64), n)

    def fill(part: list[tuple[np.ndarray, ...]], at: int) -> None:
        part.reverse()
        while part:  # each batch goes as soon as its keys are written
            batch = part.pop()
            _keys_into(*batch, layout, rank_bits, lo, hi, key, values, at)
            at += len(batch[0])
            del batch

    out = [_empty_like(np.zeros(0, dtype=dtype), n) for dtype in dtypes[1:]]
    index_bits = int(layout.sum())
    if workers > 1 and n >= _PARALLEL_FROM and len(batches) > 1:
        # Two threads key the batches of each half of the pairs, and unpack each half of the sorted keys.
        starts = np.cumsum([0] + [len(batch[0]) for batch in batches])
        cut = min(max(int(np.searchsorted(starts, n // 2)), 1), len(batches) - 1)
        first, second, at = batches[:cut], batches[cut:], int(starts[cut])
        batches.clear()
        with ThreadPoolExecutor(1) as pool:
            keyed = pool.submit(fill, first, 0)
            fill(second, at)
            keyed.result()
        key, values = _sort_halves(key, values, index_bits + rank_bits, workers)
        _fix_ties(key, values, values, index_bits, False)
        half = n // 2
        with ThreadPoolExecutor(1) as pool:
            unpacked = pool.submit(_unpack_all, key[:half], layout, *(o[:half] for o in out))
            _unpack_all(key[half:], layout, *(o[half:] for o in out))
            unpacked.result()
        return (values, *out)
    fill(batches, 0)
    key, values = _sort_halves(key, values, index_bits + rank_bits, workers)
    _fix_ties(key, values, values, index_bits, False)
    _unpack_all(key, layout, *out)
    return (values, *out)
