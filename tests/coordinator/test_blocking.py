"""Tests for coordinator.linkage.blocking: band choice, keys, giant-bucket guard and pair generation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from coordinator.linkage.blocking import (
    BlockingConfig,
    bit_frequencies,
    choose_band_bits,
    compute_band_keys,
)
from coordinator.linkage.bucket_join import iter_pair_chunks, join_bands, sort_band


def _random_encodings(rng: np.random.Generator, n: int, nbytes: int = 128, density: float = 0.3) -> np.ndarray:
    return np.packbits(rng.random((n, nbytes * 8)) < density, axis=1)


def _bits(data: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Reference key: bit t of the key is the encoding's (big-endian) bit at positions[t]."""
    unpacked = np.unpackbits(data, axis=1).astype(np.uint64)
    return (unpacked[:, positions] << np.arange(len(positions), dtype=np.uint64)).sum(axis=1)


# --- configuration -------------------------------------------------------------------------------


def test_config_rejects_keys_that_do_not_fit_64_bits() -> None:
    """bits_per_band + split_bits above 62 leaves no room for the split flag and the sentinel."""
    with pytest.raises(ValidationError, match="must be at most 62"):
        BlockingConfig(bits_per_band=48, split_bits=16)


@pytest.mark.parametrize(
    ("field", "value"),
    [("bits_per_band", 0), ("bands", 0), ("min_bit_frequency", 0.5), ("max_bucket_pairs", 0), ("split_bits", 17)],
)
def test_config_rejects_out_of_range_values(field: str, value: object) -> None:
    """Each bound is enforced by validation, naming the field."""
    with pytest.raises(ValidationError, match=field):
        BlockingConfig(**{field: value})


def test_config_is_frozen_and_strict() -> None:
    """A validated config cannot change mid-run, and a misspelt setting is an error."""
    config = BlockingConfig()
    with pytest.raises(ValidationError):
        config.bands = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="bandz"):
        BlockingConfig(bandz=3)  # type: ignore[call-arg]


# --- bit frequencies and band choice --------------------------------------------------------------


def test_bit_frequencies_match_unpacked_means() -> None:
    """Frequencies are the per-position mean of the unpacked bits (big-endian), across datasets."""
    rng = np.random.default_rng(1)
    datasets = [_random_encodings(rng, 50, 4), _random_encodings(rng, 30, 4)]
    expected = np.unpackbits(np.concatenate(datasets), axis=1).mean(axis=0)
    np.testing.assert_allclose(bit_frequencies(datasets), expected)


def _sampled_unpacked_frequencies(datasets: list[np.ndarray], seed: int, sample: int) -> np.ndarray:
    """The frequencies as first computed: the same seeded sample rows, unpacked and averaged."""
    rng = np.random.default_rng(seed)
    totals, rows = np.zeros(datasets[0].shape[1] * 8, dtype=np.int64), 0
    for data in datasets:
        if data.shape[0] > sample:
            data = data[np.sort(rng.choice(data.shape[0], sample, replace=False))]
        totals += np.unpackbits(data, axis=1).sum(axis=0, dtype=np.int64)
        rows += data.shape[0]
    return totals / rows


@pytest.mark.parametrize("nbytes", [1, 5, 8, 128])
def test_bit_frequencies_count_the_sampled_rows_exactly(nbytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled lane counter gives bit for bit the unpacked counts of the same sample rows.

    A small sample size makes the seeded sampling path run, and more than 255 rows per dataset
    make the 8-bit lanes flush (an overflow would show as a wrong count).
    """
    import coordinator.linkage.blocking as blocking

    monkeypatch.setattr(blocking, "_FREQUENCY_SAMPLE", 700)
    rng = np.random.default_rng(7)
    datasets = [_random_encodings(rng, 1000, nbytes, 0.9), _random_encodings(rng, 600, nbytes, 0.3),
                _random_encodings(rng, 0, nbytes)]
    for seed in (0, 5):
        expected = _sampled_unpacked_frequencies(datasets, seed, 700)
        assert np.array_equal(bit_frequencies(datasets, seed=seed), expected)


def test_band_bits_are_seeded_distinct_and_informative() -> None:
    """Same seed, same bands; positions distinct within a band; rare and constant bits excluded."""
    freq = np.full(256, 0.3)
    freq[:20] = 1.0  # always set: carries no information
    freq[20:40] = 0.01  # almost never set
    config = BlockingConfig(bits_per_band=10, bands=30, split_bits=4, seed=7)
    positions = choose_band_bits(freq, config)
    assert positions.shape == (30, 14)
    assert np.array_equal(positions, choose_band_bits(freq, config))
    assert not np.array_equal(positions, choose_band_bits(freq, config.model_copy(update={"seed": 8})))
    assert all(len(set(band)) == 14 for band in positions.tolist())
    assert positions.min() >= 40


def test_band_bits_fall_back_to_most_balanced_positions() -> None:
    """With too few informative positions, the most balanced ones are used rather than failing."""
    freq = np.zeros(64)
    freq[[3, 9, 11]] = [0.5, 0.4, 0.9]
    # Only positions 3 and 9 lie within [0.2, 0.8]; a band needs 3, so the 3 closest to 0.5 serve.
    positions = choose_band_bits(freq, BlockingConfig(bits_per_band=3, bands=5, split_bits=0))
    assert set(positions.ravel().tolist()) == {3, 9, 11}


def test_band_bits_refuse_short_encodings() -> None:
    """Encodings with fewer bits than a band needs are refused with the numbers, not silently."""
    with pytest.raises(ValueError, match="29 bit positions per band but the encodings have 16 bits"):
        choose_band_bits(np.full(16, 0.5), BlockingConfig())


# --- keys -----------------------------------------------------------------------------------------


def test_band_keys_are_the_sampled_bits() -> None:
    """Each record's key in a band is exactly its bits at that band's sampled positions."""
    rng = np.random.default_rng(2)
    datasets = [_random_encodings(rng, 200), _random_encodings(rng, 150)]
    config = BlockingConfig(bits_per_band=12, bands=6)
    band_keys = compute_band_keys(datasets, config, workers=2)
    positions = choose_band_bits(bit_frequencies(datasets, seed=config.seed), config)
    assert band_keys.stats.buckets_split == 0
    for data, keys in zip(datasets, band_keys.keys, strict=True):
        assert keys.shape == (len(data), 6) and keys.dtype == np.uint32
        for band in range(6):
            assert np.array_equal(keys[:, band], _bits(data, positions[band, :12]))


def test_giant_buckets_are_split_with_more_bits() -> None:
    """A bucket over max_bucket_pairs is re-keyed with split bits; nothing is skipped if that suffices."""
    rng = np.random.default_rng(3)
    datasets = [_random_encodings(rng, 400, density=0.5), _random_encodings(rng, 400, density=0.5)]
    config = BlockingConfig(bits_per_band=2, bands=4, split_bits=10, max_bucket_pairs=5_000)
    band_keys = compute_band_keys(datasets, config)
    positions = choose_band_bits(bit_frequencies(datasets, seed=config.seed), config)
    stats = band_keys.stats
    # 2 bits give 4 buckets of ~100 x 100 = 10,000 pairs: all too big, all split, none skipped.
    assert stats.buckets_split == 16 and stats.buckets_skipped == 0 and stats.records_skipped == 0
    assert 0 < stats.largest_bucket_pairs <= 5_000
    flag = np.uint32(1 << 12)
    for data, keys in zip(datasets, band_keys.keys, strict=True):
        for band in range(4):
            assert np.array_equal(keys[:, band], _bits(data, positions[band]).astype(np.uint32) | flag)


def test_buckets_that_cannot_be_split_are_skipped_and_reported() -> None:
    """Identical records stay together under any bits: their bucket is skipped and counted."""
    rng = np.random.default_rng(4)
    twin = _random_encodings(rng, 1)
    datasets = [
        np.concatenate([np.repeat(twin, 60, axis=0), _random_encodings(rng, 40)]),
        np.concatenate([np.repeat(twin, 50, axis=0), _random_encodings(rng, 40)]),
    ]
    config = BlockingConfig(bits_per_band=8, bands=5, max_bucket_pairs=1_000)
    band_keys = compute_band_keys(datasets, config)
    stats = band_keys.stats
    assert stats.buckets_skipped == 5
    assert stats.records_skipped == 5 * 110
    assert stats.pairs_skipped == 5 * 60 * 50
    assert (band_keys.keys[0][:60] == band_keys.sentinel).all()
    assert (band_keys.keys[1][:50] == band_keys.sentinel).all()
    assert not (band_keys.keys[0][60:] == band_keys.sentinel).any()
    # Skipped records are in no bucket, so they form no candidate pair.
    grouped = [sort_band(k[:, 0], band_keys.sentinel) for k in band_keys.keys]
    for rows_a, rows_b in iter_pair_chunks(join_bands(*grouped), 64):
        assert (rows_a >= 60).all() and (rows_b >= 50).all()


def test_wide_keys_use_64_bit_storage() -> None:
    """Keys that do not fit 30 bits (with the split flag) are stored as uint64, bit for bit."""
    rng = np.random.default_rng(5)
    datasets = [_random_encodings(rng, 30), _random_encodings(rng, 30)]
    config = BlockingConfig(bits_per_band=40, bands=2)
    band_keys = compute_band_keys(datasets, config)
    positions = choose_band_bits(bit_frequencies(datasets, seed=config.seed), config)
    assert band_keys.keys[0].dtype == np.uint64
    assert np.array_equal(band_keys.keys[1][:, 1], _bits(datasets[1], positions[1, :40]))


# --- pair generation ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    keys_a=st.lists(st.integers(0, 6), max_size=40),
    keys_b=st.lists(st.integers(0, 6), max_size=40),
    chunk=st.integers(1, 50),
)
def test_pair_chunks_are_exactly_the_shared_key_pairs(keys_a: list[int], keys_b: list[int], chunk: int) -> None:
    """Invariant: the chunks list every (i, j) with equal, non-sentinel keys exactly once, and no
    chunk exceeds its size bound (memory stays bounded for any bucket size)."""
    sentinel = 6
    a = sort_band(np.array(keys_a, dtype=np.uint32), sentinel)
    b = sort_band(np.array(keys_b, dtype=np.uint32), sentinel)
    join = join_bands(a, b)
    pairs: list[tuple[int, int]] = []
    for rows_a, rows_b in iter_pair_chunks(join, chunk):
        assert 0 < len(rows_a) == len(rows_b) <= chunk
        pairs.extend(zip(rows_a.tolist(), rows_b.tolist(), strict=True))
    expected = {(i, j) for i, x in enumerate(keys_a) for j, y in enumerate(keys_b) if x == y != sentinel}
    assert len(pairs) == len(set(pairs)) == join.pairs
    assert set(pairs) == expected


def test_sort_band_with_64_bit_keys_groups_like_32_bit() -> None:
    """The fast packed sort (uint32) and the argsort path (uint64) group records identically."""
    column = np.random.default_rng(6).integers(0, 50, 500)
    narrow = sort_band(column.astype(np.uint32), sentinel=2**32 - 1)
    wide = sort_band(column.astype(np.uint64), sentinel=2**64 - 1)
    for name in ("order", "keys", "starts", "counts"):
        assert np.array_equal(getattr(narrow, name), getattr(wide, name)), name


def test_gathered_columns_are_the_band_columns() -> None:
    """The column copy into a reused buffer is each band's keys of all datasets, dataset after dataset, for any
    group of bands (the buffer's earlier contents never show through)."""
    from coordinator.linkage.block_kernels import gather_columns

    rng = np.random.default_rng(8)
    keys = tuple(rng.integers(0, 2**21, (n, 20), dtype=np.uint32) for n in (37, 0, 55))
    buffer = np.full((8, 92), 7, dtype=np.uint32)
    for first, count in ((0, 8), (8, 8), (16, 4)):
        expected = np.concatenate([k[:, first : first + count] for k in keys]).T
        assert np.array_equal(gather_columns(keys, first, buffer[:count]), expected)
