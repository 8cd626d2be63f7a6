"""Tests for the shortcuts of the blocked comparison (coordinator.linkage.band_kernels, block_kernels,
compare): each must give exactly what the long way gives."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage.band_kernels import least_shared_bits
from coordinator.linkage.block_kernels import column_census
from coordinator.linkage.blocking import BlockingConfig, compute_band_keys
from coordinator.linkage.compare import compare_datasets
from coordinator.linkage.similarity import check_datasets


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
    """Without a histogram the kernel skips the division below the threshold (and, for 1024-bit
    encodings on a CPU with vector popcounts, takes its own loop): it keeps exactly the pairs, with
    the same similarities, and makes the same comparisons as with a histogram."""
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
