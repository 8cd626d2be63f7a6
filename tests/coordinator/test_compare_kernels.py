"""Tests for the shortcuts of the blocked comparison (coordinator.linkage.band_kernels, block_kernels,
compare): each must give exactly what the long way gives."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from coordinator.linkage import compare
from coordinator.linkage.band_kernels import dice_bins, least_shared_bits
from coordinator.linkage.block_kernels import column_census
from coordinator.linkage.blocking import BlockingConfig, compute_band_keys
from coordinator.linkage.compare import compare_datasets
from coordinator.linkage.kernels import bucket_pair_dice, row_popcounts
from coordinator.linkage.similarity import as_words, check_datasets


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.55, 0.8, 0.9137, 1.0])
def test_least_shared_bits_is_the_division_test(threshold: float) -> None:
    """For every denominator and shared count, ``shared >= least[denominator]`` holds exactly when
    anonlink's ``2.0 * shared / denominator`` (0 for an empty denominator) reaches the threshold."""
    most = 2048
    least = least_shared_bits(threshold, most)
    for denominator in range(most + 1):
        if denominator == 0:  # two empty encodings share nothing and score 0
            shared, sims = np.zeros(1, np.int64), np.zeros(1)
        else:
            shared = np.arange(denominator // 2 + 2)
            sims = 2.0 * shared.astype(np.float64) / denominator
        assert np.array_equal(shared >= least[denominator], sims >= threshold), denominator


def _census_inputs(rng: np.random.Generator, heavy: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = (300, 250, 200)
    columns = [rng.integers(0, 5000, n).astype(np.uint32) for n in sizes]
    columns[0][:heavy] = 7  # one heavy key, in two datasets
    columns[1][:heavy] = 7
    return np.concatenate(columns), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


@pytest.mark.parametrize("heavy", [0, 40])
def test_the_screened_census_finds_the_same_giant_buckets(heavy: int) -> None:
    """Without an exact largest bucket, the census still returns every giant key (a band that may
    hold one is counted exactly); a band that cannot is screened out, and reports no giant and 0."""
    column, offsets = _census_inputs(np.random.default_rng(5), heavy)
    cap = 1000
    exact_giants, exact_largest = column_census(column, offsets, cap)
    giants, largest = column_census(column, offsets, cap, exact_largest=False)
    assert giants.tolist() == exact_giants.tolist()
    assert (len(giants) > 0) == (heavy > 0)  # 40 x 40 pairs share key 7
    # Screened out (no key can give more than ``cap`` pairs) or counted exactly.
    assert largest == (exact_largest if heavy else 0) and exact_largest > 0


@pytest.mark.parametrize("bins", [None, 20])
def test_compared_blocking_stats_equal_the_exact_census(bins: int | None) -> None:
    """The blocking stats a blocked comparison reports (its largest bucket counted while comparing,
    the census screening bands) equal those of an exact census, split buckets included."""
    rng = np.random.default_rng(9)
    base = np.packbits(rng.random((150, 256)) < 0.4, axis=1)
    datasets = check_datasets(
        [base ^ np.packbits(rng.random(base.shape[:1] + (256,)) < 0.03, axis=1) for _ in range(3)]
    )
    split = []
    for config in (
        BlockingConfig(bits_per_band=6, bands=10, split_bits=4, max_bucket_pairs=100),
        BlockingConfig(bits_per_band=12, bands=8),
    ):
        exact = compute_band_keys(datasets, config).stats
        _, stats, *_ = compare_datasets(datasets, 0.6, config, 2, None, bins)
        assert stats == exact and exact.largest_bucket_pairs > 0
        split.append(exact.buckets_split > 0)
    assert split == [True, False]  # with giant buckets split, and without any


@pytest.mark.parametrize("nbytes", [32, 128])
def test_pairs_kept_without_a_histogram_are_those_kept_with_one(nbytes: int) -> None:
    """Without a histogram the kernel skips the division below the threshold (and with one it looks
    each pair's bin up in a table): it keeps exactly the pairs, with the same similarities, and makes
    the same comparisons as with a histogram."""
    rng = np.random.default_rng(11)
    base = np.packbits(rng.random((200, nbytes * 8)) < 0.35, axis=1)
    datasets = check_datasets([base ^ np.packbits(rng.random((200, nbytes * 8)) < 0.04, axis=1) for _ in range(3)])
    config = BlockingConfig(bits_per_band=8, bands=12)
    plain, *_ = compare_datasets(datasets, 0.75, config, 2, None, None)
    counted, *_ = compare_datasets(datasets, 0.75, config, 2, None, 20)

    def pairs(found: object) -> set:
        arrays = [np.concatenate(getattr(found, name)) for name in ("dset_a", "dset_b", "rows_a", "rows_b", "sims")]
        return set(zip(*(a.tolist() for a in arrays), strict=True))

    assert pairs(plain) == pairs(counted) and len(pairs(plain)) > 100
    assert plain.comparisons == counted.comparisons


@njit(cache=False)
def _division_bins(bins: int, denominator: int, most_shared: int) -> np.ndarray:
    """The bins the kernel's division gives: ``min(int(sim * bins), bins - 1)`` of anonlink's Dice."""
    out = np.empty(most_shared + 1, dtype=np.int64)
    for shared in range(most_shared + 1):
        sim = 0.0 if denominator == 0 else 2.0 * np.float64(shared) / np.float64(denominator)
        out[shared] = min(int(sim * bins), bins - 1)
    return out


@pytest.mark.parametrize("bins", [10, 100, 256, 1000])
def test_bin_table_is_the_division_for_every_pair_of_1024_bits(bins: int) -> None:
    """For every denominator ``|a| + |b|`` and shared count that 1024-bit encodings can give
    (``shared <= min(|a|, |b|) <= denominator / 2``), the table's bin is the division's."""
    table, lowest = dice_bins(bins, 0, 1024)
    assert lowest == 0 and table.shape == (2049, 1025)
    for denominator in range(2049):
        most = min(denominator // 2, 1024)
        expected = _division_bins(bins, denominator, most)
        assert np.array_equal(table[denominator, : most + 1].astype(np.int64), expected), denominator
    # A table over a narrower popcount range holds the same bins, shifted to its lowest denominator.
    narrow, lowest = dice_bins(bins, 300, 400)
    assert lowest == 600 and np.array_equal(narrow, table[600:801, :401])


def _bucket_reference(words: tuple, pops: tuple, keys: tuple, band: int, sentinel: int, threshold: float,
                      bins: int) -> tuple[set, np.ndarray, int]:
    """One band by :func:`bucket_pair_dice` (the division and the earlier-band check pair by pair)."""
    column_a, column_b = keys[0][:, band], keys[1][:, band]
    shared_keys = np.setdiff1d(np.intersect1d(column_a, column_b), [sentinel])
    order_a, order_b = np.argsort(column_a, kind="stable"), np.argsort(column_b, kind="stable")
    sides = []
    for column, order in ((column_a, order_a), (column_b, order_b)):
        starts = np.searchsorted(column[order], shared_keys, side="left")
        counts = np.searchsorted(column[order], shared_keys, side="right") - starts
        sides.append((starts.astype(np.int64), counts.astype(np.int64)))
    (start_a, count_a), (start_b, count_b) = sides
    capacity = int((count_a * count_b).sum()) + 1
    out_a, out_b, out_sim = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity)
    histogram = np.zeros(bins, np.int64)
    done, kept, comparisons = bucket_pair_dice(
        words[0][order_a], words[1][order_b], pops[0][order_a], pops[1][order_b], order_a, order_b,
        start_a, count_a, start_b, count_b, 0, keys[0], keys[1], band, sentinel, threshold, compare.DEDUP_FLOOR,
        histogram, out_a, out_b, out_sim,
    )  # fmt: skip
    assert done == len(shared_keys)
    kept_pairs = zip(out_a[:kept], out_b[:kept], out_sim[:kept], strict=True)
    pairs = {(0, 1, int(a), int(b), float(s)) for a, b, s in kept_pairs}
    return pairs, histogram, int(comparisons)


@pytest.mark.parametrize("nbytes", [32, 128])
def test_band_histogram_equals_the_bucket_kernels(nbytes: int) -> None:
    """On random encodings whose pairs score across [0, 1], each band's histogram (bins by table,
    counted in sub-histograms, pairs an earlier band found taken back out), kept pairs and comparison
    count equal those of the reference bucket kernel, which divides and checks pair by pair."""
    rng = np.random.default_rng(17)
    n_a, n_b, bands = 400, 350, 3
    base = np.packbits(rng.random((n_a, nbytes * 8)) < 0.35, axis=1)
    noise = rng.random(n_a)[:, None] * 0.5  # per record: from near copies to unrelated
    a = base
    b = (base ^ np.packbits(rng.random(base.shape[:1] + (nbytes * 8,)) < noise, axis=1))[:n_b]
    sentinel = 2**32 - 1
    keys_a = rng.integers(0, 40, (n_a, bands)).astype(np.uint32)
    keys_b = rng.integers(0, 40, (n_b, bands)).astype(np.uint32)
    keys_b[: n_b // 2] = keys_a[: n_b // 2]  # these pairs share every band: later bands must drop them
    keys_a[:10, 0] = sentinel  # skipped records share no key, the sentinel included
    keys_b[:10, 0] = sentinel
    words = (np.ascontiguousarray(as_words(a)), np.ascontiguousarray(as_words(b)))
    pops = tuple(row_popcounts(w) for w in words)
    keys = (keys_a, keys_b)
    for band in range(bands):
        pairs, histogram, comparisons = _bucket_reference(words, pops, keys, band, sentinel, 0.7, 100)
        found = compare.compare_bands(range(band, band + 1), words, pops, keys, sentinel, 0.7, 100)
        got = set()
        for arrays in zip(found.dset_a, found.dset_b, found.rows_a, found.rows_b, found.sims, strict=True):
            got |= {(int(x), int(y), int(r), int(t), float(s)) for x, y, r, t, s in zip(*arrays, strict=True)}
        assert found.histogram is not None and np.array_equal(found.histogram, histogram), band
        assert got == pairs and found.comparisons == comparisons, band
        twins = {(int(r), int(t)) for _, _, r, t, _ in got if r == t and r < n_b // 2}
        if band == 0:
            assert histogram[:50].sum() > 100 and histogram[50:].sum() > 100  # both sides of the dedup floor
            assert len(twins) > 50
        else:
            # Found in band 0 already, but for those skipped there (first found in band 1).
            assert all(r < 10 for r, _ in twins) and (len(twins) > 0) == (band == 1)


def test_a_popcount_outside_the_bin_table_is_refused() -> None:
    """The kernel indexes the bin table without bounds checks: popcounts that the table (built from
    the caller's ``pops``) does not cover are refused, not read out of bounds."""
    rng = np.random.default_rng(3)
    data = np.packbits(rng.random((50, 1024)) < 0.35, axis=1)
    words = (np.ascontiguousarray(as_words(data)),) * 2
    keys = (np.zeros((50, 1), np.uint32),) * 2
    wrong = (np.full(50, 5, np.int64),) * 2
    with pytest.raises(ValueError, match="outside the histogram's bin table"):
        compare.compare_bands(range(1), words, wrong, keys, 2**32 - 1, 0.7, 100)


def test_gathering_lists_the_shared_buckets_records_that_comparing_scores() -> None:
    """``gather_band_runs`` (the benchmark's per-record work) copies exactly the records of the keys that
    two datasets or more share, and their runs hold exactly the pairs that comparing scores."""
    from coordinator.linkage.band_kernels import gather_band_runs
    from coordinator.linkage.band_sort import sorted_entries

    rng = np.random.default_rng(5)
    sizes = (300, 250, 40)
    data = [np.packbits(rng.random((n, 1024)) < 0.35, axis=1) for n in sizes]
    words = compare.one_type([np.ascontiguousarray(as_words(d)) for d in data])
    keys = compare.one_type([rng.integers(0, 90, (n, 1)).astype(np.uint32) for n in sizes])
    column = np.concatenate([k[:, 0] for k in keys])
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    records, pairs, total = gather_band_runs(sorted_entries(column, 2**32 - 1), offsets, words, 0)
    dataset = np.repeat(np.arange(len(sizes)), sizes)
    pops = np.concatenate([row_popcounts(w) for w in words])
    want_records = want_pairs = want_total = 0
    for key in np.unique(column):
        members = np.flatnonzero(column == key)
        per_set = np.bincount(dataset[members], minlength=len(sizes))
        if (per_set > 0).sum() >= 2:
            want_records += len(members)
            want_pairs += (len(members) ** 2 - int((per_set**2).sum())) // 2
            want_total += int(pops[members].sum())
    found = compare.compare_bands(range(1), words, tuple(row_popcounts(w) for w in words), keys, 2**32 - 1, 0.5, None)
    assert want_records > 100  # shared and unshared keys both occur
    assert (records, pairs, total) == (want_records, want_pairs, want_total)
    assert found.comparisons == pairs
