"""Tests for the compiled kernels (coordinator.linkage.kernels, block_kernels, compare) against
brute-force numpy references and anonlink's Dice."""

from __future__ import annotations

import numpy as np
import pytest
from anonlink.similarities import dice_coefficient_accelerated
from bitarray import bitarray

from coordinator.linkage import compare
from coordinator.linkage.band_sort import radix_sort
from coordinator.linkage.block_kernels import bit_word_shifts, bucket_census, merge_join, pack_keys
from coordinator.linkage.blocking import BlockingConfig, compute_band_keys
from coordinator.linkage.compare import Found, compare_datasets
from coordinator.linkage.kernels import bucket_pair_dice, row_popcounts
from coordinator.linkage.similarity import as_words, check_datasets, compute_dice
from pplink.aligned import empty_line_aligned, line_aligned
from pplink.errors import MatchError


def _encodings(rng: np.random.Generator, rows: int, nbytes: int = 128, density: float = 0.33) -> np.ndarray:
    return np.packbits(rng.random((rows, nbytes * 8)) < density, axis=1)


def _bitarrays(data: np.ndarray) -> list[bitarray]:
    out = []
    for row in data:
        bits = bitarray(endian="big")
        bits.frombytes(row.tobytes())
        out.append(bits)
    return out


def _reference_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs Dice by unpacking bits: 2|a & b| / (|a| + |b|), 0 for two empty encodings."""
    bits_a, bits_b = np.unpackbits(a, axis=1).astype(np.int64), np.unpackbits(b, axis=1).astype(np.int64)
    inter = bits_a @ bits_b.T
    denominator = bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :]
    return np.divide(2.0 * inter, denominator, out=np.zeros(inter.shape), where=denominator > 0)


@pytest.mark.parametrize("nbytes", [1, 7, 8, 13, 128])
def test_pair_dice_is_anonlinks_dice_bit_for_bit(nbytes: int) -> None:
    """The scattered-pair kernel returns exactly anonlink's float64 Dice, for any encoding width."""
    rng = np.random.default_rng(nbytes)
    a, b = _encodings(rng, 40, nbytes), _encodings(rng, 30, nbytes)
    a[0] = 0
    b[0] = 0
    sims, (rows_a, rows_b) = dice_coefficient_accelerated((_bitarrays(a), _bitarrays(b)), 0.0)
    ours = compute_dice(a, b, np.frombuffer(rows_a, np.uint32), np.frombuffer(rows_b, np.uint32))
    assert np.array_equal(ours, np.frombuffer(sims, np.float64))
    assert ours.dtype == np.float64 and len(ours) >= 1100  # anonlink drops only 0-similarity pairs


def test_compute_dice_refuses_rows_out_of_range() -> None:
    """The compiled loop has no bounds checks, so compute_dice checks the indices before it runs."""
    a = np.zeros((3, 8), np.uint8)
    with pytest.raises(MatchError, match="rows_b holds row indices outside 0..2"):
        compute_dice(a, a, np.array([0]), np.array([3]))
    with pytest.raises(MatchError, match="one length"):
        compute_dice(a, a, np.array([0, 1]), np.array([0]))


def test_row_popcounts_count_set_bits() -> None:
    """row_popcounts equals numpy's bit count summed per row."""
    words = as_words(_encodings(np.random.default_rng(1), 50, 24)).copy()
    assert np.array_equal(row_popcounts(words), np.bitwise_count(words).sum(axis=1))


def _bucket_inputs(rng: np.random.Generator, sizes_a: list[int], sizes_b: list[int]) -> dict:
    """Records of two datasets grouped in buckets, laid out as the compare step lays them out."""
    n_a, n_b = sum(sizes_a), sum(sizes_b)
    a, b = _encodings(rng, n_a, 32), _encodings(rng, n_b, 32)
    order_a, order_b = rng.permutation(n_a).astype(np.int64), rng.permutation(n_b).astype(np.int64)
    start_a, start_b = np.cumsum([0, *sizes_a[:-1]]), np.cumsum([0, *sizes_b[:-1]])
    # Most b records are noisy copies of an a record of their bucket, so that pairs pass a threshold.
    for k, (size_a, size_b) in enumerate(zip(sizes_a, sizes_b, strict=True)):
        for j in range(min(size_a, size_b)):
            noise = (rng.random(32 * 8) < 0.03).astype(np.uint8)
            b[order_b[start_b[k] + j]] = a[order_a[start_a[k] + j]] ^ np.packbits(noise)
    words_a, words_b = as_words(a).copy(), as_words(b).copy()
    return dict(
        a=a, b=b, order_a=order_a, order_b=order_b,
        sorted_a=words_a[order_a], sorted_b=words_b[order_b],
        pops_a=row_popcounts(words_a)[order_a], pops_b=row_popcounts(words_b)[order_b],
        start_a=start_a.astype(np.int64), count_a=np.array(sizes_a, np.int64),
        start_b=start_b.astype(np.int64), count_b=np.array(sizes_b, np.int64),
    )  # fmt: skip


@pytest.mark.parametrize("capacity", [64, 10_000])
def test_bucket_kernel_scores_every_bucket_pair_and_resumes(capacity: int) -> None:
    """Every cross pair of every bucket is scored once; kept pairs and the histogram equal a
    brute-force reference, also when the output buffer fills and the caller resumes."""
    rng = np.random.default_rng(5)
    sizes_a, sizes_b = [3, 1, 8, 2, 5, 1], [4, 2, 8, 1, 5, 3]
    x = _bucket_inputs(rng, sizes_a, sizes_b)
    sims = _reference_dice(x["a"], x["b"])
    expected_pairs, expected_hist = set(), np.zeros(10, np.int64)
    for k in range(len(sizes_a)):
        for p in range(x["start_a"][k], x["start_a"][k] + sizes_a[k]):
            for q in range(x["start_b"][k], x["start_b"][k] + sizes_b[k]):
                ra, rb = int(x["order_a"][p]), int(x["order_b"][q])
                expected_hist[min(int(sims[ra, rb] * 10), 9)] += 1
                if sims[ra, rb] >= 0.7:
                    expected_pairs.add((ra, rb, float(sims[ra, rb])))
    keys = np.zeros((max(len(x["a"]), len(x["b"])), 1), np.uint32)
    hist = np.zeros(10, np.int64)
    out_a, out_b, out_s = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity)
    got, bucket, comparisons, calls = set(), 0, 0, 0
    while bucket < len(sizes_a):
        bucket, kept, done = bucket_pair_dice(
            x["sorted_a"], x["sorted_b"], x["pops_a"], x["pops_b"], x["order_a"], x["order_b"],
            x["start_a"], x["count_a"], x["start_b"], x["count_b"], bucket, keys, keys, 0, 2**32 - 1,
            0.7, 0.5, hist, out_a, out_b, out_s,
        )  # fmt: skip
        got |= {(int(a), int(b), float(s)) for a, b, s in zip(out_a[:kept], out_b[:kept], out_s[:kept], strict=True)}
        comparisons += done
        calls += 1
    assert got == expected_pairs and len(expected_pairs) > 5
    assert np.array_equal(hist, expected_hist)
    assert comparisons == sum(a * b for a, b in zip(sizes_a, sizes_b, strict=True))
    assert (calls > 1) == (capacity == 64)  # the small buffer forced resumes


def _brute_force_blocked(datasets: list[np.ndarray], config: BlockingConfig, threshold: float, bins: int) -> tuple:
    """Blocked candidates by definition: every pair sharing a (non-sentinel) key in some band,
    histogrammed once per band below 0.5 and once overall (first band) from 0.5, kept >= threshold."""
    band_keys = compute_band_keys(datasets, config)
    keys, sentinel = band_keys.keys, band_keys.sentinel
    pairs, hist, comparisons = set(), np.zeros(bins, np.int64), 0
    for d_a in range(len(datasets)):
        for d_b in range(d_a + 1, len(datasets)):
            sims = _reference_dice(datasets[d_a], datasets[d_b])
            same = (keys[d_a][:, None, :] == keys[d_b][None, :, :]) & (keys[d_a][:, None, :] != sentinel)
            bands_hit = same.sum(axis=2)
            comparisons += int(bands_hit.sum())
            counted = np.where(sims >= 0.5, bands_hit > 0, bands_hit)
            np.add.at(hist, np.minimum((sims * bins).astype(np.int64), bins - 1), counted)
            for ra, rb in zip(*np.nonzero((bands_hit > 0) & (sims >= threshold)), strict=True):
                pairs.add((d_a, d_b, int(ra), int(rb), float(sims[ra, rb])))
    return pairs, hist, comparisons


def _pairs(found: Found) -> set:
    out = set()
    for arrays in zip(found.dset_a, found.dset_b, found.rows_a, found.rows_b, found.sims, strict=True):
        out |= {(int(a), int(b), int(ra), int(rb), float(s)) for a, b, ra, rb, s in zip(*arrays, strict=True)}
    return out


@pytest.mark.parametrize(
    ("workers", "buffer_pairs", "nbytes"), [(1, 1 << 18, 32), (2, 1 << 18, 32), (1, 1, 32), (2, 7, 32), (2, 7, 128)]
)
def test_blocked_comparison_equals_its_definition(workers: int, buffer_pairs: int, nbytes: int, monkeypatch) -> None:  # noqa: ANN001
    """The compiled blocked comparison finds exactly the pairs, comparisons and histogram that the
    definition of blocking gives (computed by brute force), each kept pair once, with any thread count,
    and whatever the kernel's output buffer holds (a full buffer is drained and the band resumed, a bucket
    larger than the buffer grows it); 1024-bit encodings take the kernel's vector popcount where the CPU has it."""
    monkeypatch.setattr(compare, "_OUTPUT_PAIRS", buffer_pairs)
    rng = np.random.default_rng(8)
    base = _encodings(rng, 120, nbytes)
    datasets = [base ^ (rng.random(base.shape) < 0.02).astype(np.uint8) for _ in range(3)]
    datasets = [np.concatenate([d, _encodings(rng, 40 + 10 * i, nbytes)]) for i, d in enumerate(datasets)]
    config = BlockingConfig(bits_per_band=6, bands=10, split_bits=4, max_bucket_pairs=400)
    pairs, hist, comparisons = _brute_force_blocked(datasets, config, 0.6, 20)
    found, stats, *_ = compare_datasets(check_datasets(datasets), 0.6, config, workers, None, 20)
    assert stats is not None and stats.buckets_split > 0  # the split path is exercised too
    got = _pairs(found)
    assert got == pairs and len(pairs) > 100
    assert found.pairs == len(got)  # no duplicates across bands
    assert found.comparisons == comparisons
    assert found.histogram is not None and np.array_equal(found.histogram, hist)


@pytest.mark.parametrize(("dtype", "rows"), [(np.uint32, 25), (np.uint32, 1300), (np.uint64, 1300)])
def test_pack_keys_reads_big_endian_bits(dtype: type, rows: int) -> None:
    """Key bit t is the encoding's bit at position t of the band (big-endian within each byte), for
    32- and 64-bit keys, over several of the kernel's row blocks, and only rows first:last are written."""
    rng = np.random.default_rng(3)
    data = _encodings(rng, rows, 16)
    width = 9 if dtype == np.uint32 else 40
    positions = np.stack([rng.choice(128, width, replace=False) for _ in range(4)])
    word, shift = bit_word_shifts(positions)
    out = np.zeros((rows, 4), dtype)
    first, last = (0, rows) if rows < 100 else (3, rows - 5)
    pack_keys(as_words(data).copy(), word, shift, out, first, last)
    bits = np.unpackbits(data, axis=1).astype(np.uint64)
    expected = (bits[:, positions] << np.arange(width, dtype=np.uint64)).sum(axis=2).astype(dtype)
    expected[:first] = 0
    expected[last:] = 0
    assert np.array_equal(out, expected)


def test_bucket_census_counts_cross_dataset_pairs() -> None:
    """Giant keys and the largest other bucket equal a count over np.unique per dataset."""
    rng = np.random.default_rng(4)
    columns = [rng.integers(0, 30, n).astype(np.uint32) for n in (200, 150, 90)]
    giant, largest = bucket_census(columns, cap=120)
    pairs = {}
    for key in range(30):
        counts = [int((c == key).sum()) for c in columns]
        pairs[key] = (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
    assert giant.tolist() == sorted(k for k, p in pairs.items() if p > 120)
    assert largest == max(p for p in pairs.values() if p <= 120)


def test_merge_join_equals_intersect1d() -> None:
    """The merge join returns the indices np.intersect1d returns for sorted distinct keys."""
    rng = np.random.default_rng(6)
    a, b = np.unique(rng.integers(0, 500, 300)), np.unique(rng.integers(0, 500, 200))
    _, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    got_a, got_b = merge_join(a, b)
    assert np.array_equal(got_a, ia) and np.array_equal(got_b, ib)


@pytest.mark.parametrize("bits", [0, 5, 11, 21, 33, 63])
def test_radix_sort_equals_numpys_sort(bits: int) -> None:
    """The compiled radix sort returns numpy's ascending order for non-negative keys of any width."""
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=5000, dtype=np.int64) if bits else np.zeros(5000, dtype=np.int64)
    out = radix_sort(values)
    assert out.dtype == values.dtype and np.array_equal(out, np.sort(values))
    assert np.array_equal(radix_sort(values.astype(np.uint64)), np.sort(values).astype(np.uint64))


def test_compare_bands_takes_read_only_and_writable_arrays_mixed() -> None:
    """Arrays from a caller and from Ray's object store (read-only) may come mixed: the result is the same."""
    rng = np.random.default_rng(11)
    base = _encodings(rng, 60, 16)
    datasets = check_datasets([base ^ (rng.random(base.shape) < 0.02).astype(np.uint8) for _ in range(3)])
    prepared = compare.prepare(datasets, BlockingConfig(bits_per_band=6, bands=8), 1)
    keys = prepared.band_keys.keys
    bands = range(prepared.band_keys.bands)
    expected = compare.compare_bands(bands, prepared.words, prepared.pops, keys, prepared.band_keys.sentinel, 0.6, 10)
    frozen = [w.copy() for w in prepared.words]
    frozen[1].flags.writeable = False
    frozen_keys = [k.copy() for k in keys]
    frozen_keys[0].flags.writeable = False
    got = compare.compare_bands(bands, frozen, prepared.pops, frozen_keys, prepared.band_keys.sentinel, 0.6, 10)
    assert _pairs(got) == _pairs(expected) and len(_pairs(got)) > 10
    assert got.comparisons == expected.comparisons and np.array_equal(got.histogram, expected.histogram)


def test_keys_wider_than_32_bits_compare_as_their_narrow_values() -> None:
    """Only key equality matters: the same keys held as uint64 (ranked before sorting, sentinel
    moved to the uint64 maximum) give the same pairs, comparisons and histogram as uint32 keys."""
    rng = np.random.default_rng(12)
    base = _encodings(rng, 80, 128)
    datasets = check_datasets([base ^ (rng.random(base.shape) < 0.03).astype(np.uint8) for _ in range(3)])
    prepared = compare.prepare(datasets, BlockingConfig(bits_per_band=5, bands=6, split_bits=0, max_bucket_pairs=30), 1)
    keys, sentinel = prepared.band_keys.keys, prepared.band_keys.sentinel
    assert sentinel == 2**32 - 1 and prepared.band_keys.stats.buckets_skipped > 0  # some keys are the sentinel
    wide = [np.where(k == sentinel, np.uint64(2**64 - 1), k.astype(np.uint64) << np.uint64(31)) for k in keys]
    bands = range(prepared.band_keys.bands)
    narrow_found = compare.compare_bands(bands, prepared.words, prepared.pops, keys, sentinel, 0.6, 10)
    wide_found = compare.compare_bands(bands, prepared.words, prepared.pops, wide, 2**64 - 1, 0.6, 10)
    assert _pairs(wide_found) == _pairs(narrow_found) and len(_pairs(narrow_found)) > 10
    assert wide_found.comparisons == narrow_found.comparisons
    assert np.array_equal(wide_found.histogram, narrow_found.histogram)


def test_a_bucket_larger_than_the_kernels_chunk_is_scored_whole() -> None:
    """A bucket of more records than the kernel holds at once (1024) is scored after the caller
    grows the kernel's scratch: every cross-dataset pair once, the kept pairs equal to the reference Dice."""
    rng = np.random.default_rng(13)
    base = _encodings(rng, 700, 128)
    datasets = check_datasets([base ^ (rng.random(base.shape) < 0.05).astype(np.uint8) for _ in range(3)])
    words = tuple(as_words(d).copy() for d in datasets)
    keys = [np.zeros((len(d), 1), np.uint32) for d in datasets]  # one band, one bucket of 2100 records
    found = compare.compare_bands(range(1), words, tuple(row_popcounts(w) for w in words), keys, 2**32 - 1, 0.7, None)
    assert found.comparisons == 3 * 700 * 700
    expected = set()
    for d_a in range(3):
        for d_b in range(d_a + 1, 3):
            sims = _reference_dice(datasets[d_a], datasets[d_b])
            rows_a, rows_b = np.nonzero(sims >= 0.7)
            expected |= {(d_a, d_b, int(a), int(b), float(sims[a, b])) for a, b in zip(rows_a, rows_b, strict=True)}
    assert _pairs(found) == expected and len(expected) >= 3 * 700


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32])
def test_line_aligned_arrays_start_on_a_cache_line(dtype: type) -> None:
    """Encodings and key matrices handed to the kernels start on a 64-byte line, with the same values;
    an array that already does is used as it is."""
    base = np.arange(16 * 101 + 2, dtype=dtype)
    for offset in range(3):  # numpy's 16-byte alignment, and offsets off it
        array = base[offset : offset + 16 * 101].reshape(101, 16)
        aligned = line_aligned(array)
        assert aligned.ctypes.data % 64 == 0 and aligned.flags.c_contiguous
        assert np.array_equal(aligned, array) and aligned.dtype == array.dtype
        assert line_aligned(aligned) is aligned
    empty = empty_line_aligned((7, 96), dtype)
    assert empty.ctypes.data % 64 == 0 and empty.shape == (7, 96) and empty.dtype == dtype
