"""One compiled walk per band: score every cross-dataset pair of every shared bucket, in place.

The band's records come grouped by key (:func:`coordinator.linkage.band_sort.sorted_entries`).
The walk over the runs of equal keys copies each shared bucket's encodings into one contiguous
block (each load started as the walk lists the record, so that they overlap the walk) and
scores every cross-dataset pair from there (two ``vpopcntq`` per 1024-bit pair where the CPU
has them). No pair is divided unless it is written: pairs below the threshold (or the dedup
floor) are told by a table of the fewest shared bits per ``|a| + |b|`` (:func:`least_shared_bits`),
and with a histogram each pair's bin is looked up by ``(|a| + |b|, shared)`` in a table computed
once by the division itself (:func:`dice_bins`), counted into several sub-histograms in turn
(consecutive pairs in one bin would otherwise wait on each other's increment).
Pairs scoring at least the dedup floor are checked against earlier bands in one batch at the end
of the call, their earlier keys prefetched a few pairs ahead: only those pairs ever read
earlier keys, and those an earlier band found are taken back out of the histogram.

Results are those of :func:`coordinator.linkage.kernels.bucket_pair_dice`: the same Dice
arithmetic, the same first-band rule, the same comparison count; only the order in which pairs
are found differs, and the caller sorts the candidates anyway.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from coordinator.linkage.band_sort import RECORD_BITS
from coordinator.linkage.kernels import VECTOR_POPCOUNT, and_popcount_1024, popcount64, prefetch, seen_in_earlier_band

__all__ = ["dice_bins", "gather_band_runs", "least_shared_bits", "score_band_runs"]

#: uint64 words per 64-byte cache line.
_LINE_WORDS = 8
#: Shared-bucket records copied, then scored, together (128 KB of 1024-bit encodings: the L2 cache holds them).
_CHUNK = 1024
#: Histograms counted in turn by consecutive pairs (a power of two).
_SUBCOUNTS = 8
#: Pairs the earlier-band check looks ahead to start loading the two records' earlier keys.
_CHECK_AHEAD = 8
#: Pairs scoring at least this are taken for duplicates of an earlier band when loading their keys
#: ahead (a hint: the check itself is exact).
_LIKELY_SEEN = 0.75


@njit(nogil=True, cache=True, inline="always")
def _dataset_of(record, offsets):  # noqa: ANN001, ANN202
    d = 0
    while record >= offsets[d + 1]:
        d += 1
    return d


@njit(nogil=True, cache=True)
def least_shared_bits(threshold, most):  # noqa: ANN001, ANN201
    """Per denominator ``|a| + |b|`` up to ``most``, the fewest shared bits scoring at least ``threshold``.

    The score ``2.0 * shared / denominator`` (0 for an empty denominator) rises with ``shared``, so
    ``shared >= least[denominator]`` holds exactly when the score reaches the threshold: the kernel
    tests that instead of dividing. Values above ``denominator`` mean never.
    """
    least = np.empty(most + 1, dtype=np.int64)
    least[0] = 0 if 0.0 >= threshold else 1
    for denominator in range(1, most + 1):
        shared = max(0, int(threshold * denominator / 2.0) - 2)
        while shared <= denominator and not 2.0 * np.float64(shared) / np.float64(denominator) >= threshold:
            shared += 1
        least[denominator] = shared
    return least


def dice_bins(bins, lowest_pop, highest_pop):  # noqa: ANN001, ANN201
    """Each pair's histogram bin by ``|a| + |b|`` and shared bits, for popcounts within ``[lowest_pop, highest_pop]``.

    ``table[denominator - 2 * lowest_pop, shared]`` is ``min(int(sim * bins), bins - 1)`` for the
    pair's Dice ``sim`` (anonlink's ``2.0 * shared / denominator``, 0 for an empty denominator),
    computed here once by that very arithmetic (numpy's float64 division and product round as
    the kernel's do), so that the kernel looks the bin up instead of dividing. Shared counts
    above the smaller popcount cannot occur; their entries are never read.

    Returns:
        ``(table, lowest_denominator)``: a ``(2 * (highest_pop - lowest_pop) + 1, highest_pop + 1)``
        table of unsigned bins (uint8 up to 256 bins), and ``2 * lowest_pop``.
    """
    lowest = 2 * lowest_pop
    shared = np.arange(highest_pop + 1, dtype=np.float64)
    denominators = np.arange(lowest, 2 * highest_pop + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sims = 2.0 * shared[None, :] / denominators[:, None]
    sims[denominators == 0] = 0.0
    dtype = np.uint8 if bins <= 1 << 8 else np.uint16 if bins <= 1 << 16 else np.int64
    table = np.minimum((sims * bins).astype(np.int64), bins - 1).astype(dtype)
    return table, lowest


@njit(nogil=True, cache=True, inline="always")
def _prefetch_keys(keys, band, d_a, d_b, row_a, row_b, sim, unchecked_below):  # noqa: ANN001, ANN202
    """Start loading the keys that the earlier-band check of a pair will read (none, below ``unchecked_below``).

    A pair this close almost surely shares one of the first bands, where the check stops: only the
    first line of each row's keys. Others are read to ``band``: every line of it.
    """
    if sim < unchecked_below:
        return
    last = 1 if sim >= _LIKELY_SEEN else band
    line_keys = 64 // keys[0].itemsize
    for column in range(0, last, line_keys):
        prefetch(keys[d_a], row_a, column)
        prefetch(keys[d_b], row_b, column)


@njit(nogil=True, cache=True)
def _drop_seen(keys, band, sentinel, threshold, unchecked_below, histogram, pending, out_da, out_db, out_ra, out_rb,
               out_sim):  # noqa: ANN001, ANN202
    """Check the ``pending`` pairs against earlier bands; keep (compacted) those no earlier band found.

    Pairs scoring below ``unchecked_below`` are kept unchecked (see :func:`score_band_runs`). Every
    pending pair was counted in ``histogram`` when scored: those an earlier band found are taken
    back out of their bin (the same bin: :func:`dice_bins` is this arithmetic).
    """
    bins = histogram.shape[0]
    for k in range(min(_CHECK_AHEAD, pending)):
        _prefetch_keys(keys, band, out_da[k], out_db[k], out_ra[k], out_rb[k], out_sim[k], unchecked_below)
    kept = 0
    for k in range(pending):
        ahead = k + _CHECK_AHEAD
        if ahead < pending:
            _prefetch_keys(keys, band, out_da[ahead], out_db[ahead], out_ra[ahead], out_rb[ahead], out_sim[ahead],
                           unchecked_below)
        d_a, d_b, row_a, row_b, sim = out_da[k], out_db[k], out_ra[k], out_rb[k], out_sim[k]
        if sim >= unchecked_below and seen_in_earlier_band(keys[d_a], keys[d_b], row_a, row_b, band, sentinel):
            if bins > 0:
                histogram[min(int(sim * bins), bins - 1)] -= 1
            continue
        if sim >= threshold:
            out_da[kept], out_db[kept], out_ra[kept], out_rb[kept], out_sim[kept] = d_a, d_b, row_a, row_b, sim
            kept += 1
    return kept


@njit(nogil=True, cache=True, inline="always")
def _shared_bits(block, p, q, vector):  # noqa: ANN001, ANN202
    """popcount(block[p] & block[q]), as two vector popcounts where ``vector`` (1024-bit rows)."""
    if vector:
        return np.int64(and_popcount_1024(block, p, q))
    shared = np.uint64(0)
    for w in range(block.shape[1]):
        shared += popcount64(block[p, w] & block[q, w])
    return np.int64(shared)


@njit(nogil=True, cache=True, inline="always")
def _dice(shared, denominator):  # noqa: ANN001, ANN202
    """Dice as anonlink computes it: (2 * popcount(a & b)) / (double)(|a| + |b|); two empty encodings score 0."""
    return 0.0 if denominator == 0 else 2.0 * np.float64(shared) / np.float64(denominator)


@njit(nogil=True, cache=True)
def _chunk_space(size, width):  # noqa: ANN001, ANN202
    """Room for a chunk of ``size`` shared-bucket records (see :func:`_list_shared_runs`) and their encodings.

    Returns:
        Per record: dataset, row, where its dataset's stretch of its run ends and where its run
        ends (int64); then a ``(size, width)`` block for the encodings, starting on a
        64-byte boundary (each pair's score loads its two rows as 64-byte vectors, which would
        otherwise each straddle two lines), and the popcounts.
    """
    sets = np.empty(size, dtype=np.int64)
    rows = np.empty(size, dtype=np.int64)
    stretch_end = np.empty(size, dtype=np.int64)
    run_end = np.empty(size, dtype=np.int64)
    raw = np.empty(size * width + _LINE_WORDS, dtype=np.uint64)
    lead = (_LINE_WORDS - (raw.ctypes.data % 64) // 8) % _LINE_WORDS
    block = raw[lead : lead + size * width].reshape((size, width))
    return sets, rows, stretch_end, run_end, block, np.empty(size, dtype=np.int64)


@njit(nogil=True, cache=True, inline="always")
def _list_shared_runs(entries, i, offsets, words, room, sets, rows, stretch_end, run_end):  # noqa: ANN001, ANN202
    """List the shared buckets (runs of equal keys holding two datasets or more) from entry ``i`` on.

    At most ``_CHUNK`` records are listed (more only when one run needs them) and at most ``room``
    cross-dataset pairs; each record's encoding starts loading as it is listed, so that the walk's
    own work overlaps the loads and :func:`_copy_chunk` finds the lines in cache.

    Returns:
        ``(next_entry, records_listed, pairs, largest_run_pairs, full)``; ``full`` when the next run
        alone needs more records than the arrays hold or more pairs than ``room``.
    """
    n = entries.shape[0]
    size = sets.shape[0]
    width = words[0].shape[1]
    record_mask = np.uint64((1 << RECORD_BITS) - 1)
    m = 0
    chunk_pairs = 0
    largest = 0
    full = False
    while i < n and m < _CHUNK:
        key = entries[i] >> np.uint64(RECORD_BITS)
        j = i + 1
        while j < n and entries[j] >> np.uint64(RECORD_BITS) == key:
            j += 1
        if j - i < 2:
            i = j
            continue
        if m + j - i > size:
            # This run starts the next chunk; alone, it needs a larger ``scratch`` from the caller.
            full = m == 0
            break
        # Records ascend within a key, so each dataset is one stretch of the run.
        squares = 0
        p = i
        while p < j:
            d = _dataset_of(np.int64(entries[p] & record_mask), offsets)
            q = p + 1
            while q < j and np.int64(entries[q] & record_mask) < offsets[d + 1]:
                q += 1
            words_d = words[d]
            for e in range(p, q):
                at = m + e - i
                sets[at] = d
                rows[at] = np.int64(entries[e] & record_mask) - offsets[d]
                # Start loading the encoding now: the walk's own work overlaps the loads, and
                # the copy below finds the lines in cache.
                for column in range(0, width, _LINE_WORDS):
                    prefetch(words_d, rows[at], column)
                # A row need not start on a line (numpy aligns arrays to 16 bytes): its last
                # words may lie on one more line than the loop above starts loading.
                prefetch(words_d, rows[at], width - 1)
                stretch_end[at] = m + q - i
                run_end[at] = m + j - i
            squares += (q - p) * (q - p)
            p = q
        pairs = ((j - i) * (j - i) - squares) // 2
        if pairs == 0:
            i = j
            continue
        if chunk_pairs + pairs > room:
            full = True
            break
        chunk_pairs += pairs
        largest = max(largest, pairs)
        m += j - i
        i = j
    return i, m, chunk_pairs, largest, full


@njit(nogil=True, cache=True, inline="always")
def _copy_chunk(m, words, sets, rows, block, pops, check_pops, lowest_pop, highest_pop):  # noqa: ANN001, ANN202
    """Copy the ``m`` listed records' encodings into ``block`` and their popcounts into ``pops``.

    Raises:
        ValueError: ``check_pops`` and a popcount lies outside ``[lowest_pop, highest_pop]``.
    """
    width = block.shape[1]
    for k in range(m):
        words_d = words[sets[k]]
        row = rows[k]
        total = np.uint64(0)
        for w in range(width):
            value = words_d[row, w]
            block[k, w] = value
            total += popcount64(value)
        pops[k] = np.int64(total)
        if check_pops and not lowest_pop <= pops[k] <= highest_pop:
            raise ValueError("a popcount lies outside the histogram's bin table")


@njit(nogil=True, cache=True)
def gather_band_runs(entries, offsets, words, scratch):  # noqa: ANN001, ANN201
    """What :func:`score_band_runs` does to a band's records before it scores any pair, and nothing else.

    It lists the shared buckets and copies their encodings into the block, exactly as comparing
    does (the same compiled steps). ``benchmarks/match.py`` times it to show the per-record work
    that a faster pair kernel cannot remove: at 4 x 100k most records share a bucket in every band,
    and their loads bound the comparison rate per core (docs/scaling.md).

    Args:
        entries: the band's sorted entries (:func:`coordinator.linkage.band_sort.sorted_entries`).
        offsets: ``offsets[d]`` is dataset ``d``'s first global record number.
        words: per dataset, the encodings as uint64 words (a tuple of arrays of one type).
        scratch: the most records of one run (at least ``_CHUNK`` are held).

    Returns:
        ``(records, pairs, popcounts)``: records copied, cross-dataset pairs their runs hold, and
        the sum of their popcounts (read, so that no copy can be skipped).

    Raises:
        ValueError: a run holds more records than ``scratch``.
    """
    size = max(_CHUNK, scratch)
    sets, rows, stretch_end, run_end, block, pops = _chunk_space(size, words[0].shape[1])
    copied = 0
    pairs = 0
    total = 0
    i = 0
    while i < entries.shape[0]:
        i, m, chunk_pairs, _, full = _list_shared_runs(entries, i, offsets, words, np.int64(1) << 62, sets, rows,
                                                       stretch_end, run_end)
        if full and m == 0:
            raise ValueError("a run holds more records than the scratch")
        _copy_chunk(m, words, sets, rows, block, pops, False, 0, 0)
        for k in range(m):
            total += pops[k]
        copied += m
        pairs += chunk_pairs
    return copied, pairs, total


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
    bin_of,
    lowest_denominator,
    out_da,
    out_db,
    out_ra,
    out_rb,
    out_sim,
    scratch,
    repeats_below=0.0,
):  # noqa: ANN001, ANN201  (fmt: one argument per kernel input)
    """Score every cross-dataset pair of every run of equal keys from entry ``first`` on.

    Pairs are ``(d_a, row_a)``, ``(d_b, row_b)`` with ``d_a < d_b``. A pair scoring at least
    ``floor`` (and, without a histogram, at least ``repeats_below``) that shares a key (other than
    ``sentinel``) in a band before ``band`` is neither counted nor kept (the first-band rule); every
    other pair is counted in ``histogram`` (when it has bins) and kept in the ``out_*`` arrays if it
    scores at least ``threshold``.

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
        bin_of: with a histogram, each pair's bin by popcounts (:func:`dice_bins` of the histogram's
            bins, for popcounts covering every record's); unread without one.
        lowest_denominator: the denominator of ``bin_of``'s first row.
        out_da: output, dataset of each kept pair's first record (likewise ``out_db``, ``out_ra``,
            ``out_rb``, ``out_sim``: its second record's dataset, the rows and the similarity).
        out_db: see ``out_da``.
        out_ra: see ``out_da``.
        out_rb: see ``out_da``.
        out_sim: see ``out_da``.
        scratch: the most records of one run the call must hold (at least ``_CHUNK`` are held).
        repeats_below: without a histogram, pairs scoring below this are kept without the
            earlier-band check: a pair that several bands find is then kept by each of them, and
            the caller drops the repeats. With a histogram every pair is checked.

    Returns:
        ``(next_entry, kept, comparisons, largest)``: where to resume (``len(entries)`` when done),
        pairs written, pairs scored, and the most cross-dataset pairs of one run scored. A run is
        started only when all its pairs fit the output and its records fit ``scratch``: when the
        call returns ``first``, the next run needs more of either.

    Raises:
        ValueError: with a histogram, a record's popcount lies outside ``bin_of``'s.
    """
    width = words[0].shape[1]
    bins = histogram.shape[0]
    least_shared = least_shared_bits(threshold, 2 * 64 * width)
    # With a histogram, pairs from the floor on are checked against earlier bands (from the threshold
    # on in the first band: there is none to check).
    least_pending = least_shared_bits(floor if band > 0 else threshold, 2 * 64 * width)
    lowest_pop = (lowest_denominator + 1) // 2
    highest_pop = bin_of.shape[1] - 1
    capacity = out_sim.shape[0]
    n = entries.shape[0]
    # Allocated once: arrays reassigned inside the loops would cost reference counting on every run.
    size = max(_CHUNK, scratch)
    sets, rows, stretch_end, run_end, block, pops = _chunk_space(size, width)
    # Pairs are counted into _SUBCOUNTS histograms in turn, summed at the end: consecutive pairs in
    # one bin would otherwise each wait for the previous increment's store.
    counts = np.zeros((_SUBCOUNTS, max(bins, 1)), dtype=np.int64)
    check = band > 0
    vector = VECTOR_POPCOUNT and width == 16
    pending = 0
    comparisons = 0
    largest = 0
    i = first
    full = False
    while i < n and not full:
        i, m, chunk_pairs, most, full = _list_shared_runs(entries, i, offsets, words, capacity - pending, sets, rows,
                                                          stretch_end, run_end)
        largest = max(largest, most)
        _copy_chunk(m, words, sets, rows, block, pops, bins > 0, lowest_pop, highest_pop)
        # Score every pair (p, q) of a run with q in a later dataset than p, from the block.
        if bins > 0:
            # Every pair is counted by its bin (``bin_of``, no division); those from ``least_pending``
            # on are written for the earlier-band check (which takes those found there back out)
            # or, in the first band, kept from the threshold on.
            for p in range(m):
                d_a = sets[p]
                pop_a = pops[p]
                for q in range(stretch_end[p], run_end[p]):
                    shared = _shared_bits(block, p, q, vector)
                    denominator = pop_a + pops[q]
                    counts[q & (_SUBCOUNTS - 1), bin_of[denominator - lowest_denominator, shared]] += 1
                    if shared >= least_pending[denominator]:
                        out_da[pending] = d_a
                        out_db[pending] = sets[q]
                        out_ra[pending] = rows[p]
                        out_rb[pending] = rows[q]
                        out_sim[pending] = _dice(shared, denominator)
                        pending += 1
            comparisons += chunk_pairs
            continue
        # Without a histogram, only pairs at or above the threshold (``least_shared``, no division)
        # are scored further; the floor is the threshold, so all of them are kept or checked.
        for p in range(m):
            d_a = sets[p]
            pop_a = pops[p]
            for q in range(stretch_end[p], run_end[p]):
                shared = _shared_bits(block, p, q, vector)
                denominator = pop_a + pops[q]
                if shared >= least_shared[denominator]:
                    out_da[pending] = d_a
                    out_db[pending] = sets[q]
                    out_ra[pending] = rows[p]
                    out_rb[pending] = rows[q]
                    out_sim[pending] = _dice(shared, denominator)
                    pending += 1
        comparisons += chunk_pairs
    for b in range(bins):
        for sub in range(_SUBCOUNTS):
            histogram[b] += counts[sub, b]
    if check:
        outputs = (out_da, out_db, out_ra, out_rb, out_sim)
        unchecked_below = repeats_below if bins == 0 else -1.0
        pending = _drop_seen(keys, band, sentinel, threshold, unchecked_below, histogram, pending, *outputs)
    return i, pending, comparisons, largest
