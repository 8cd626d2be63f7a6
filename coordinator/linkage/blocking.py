"""Hamming LSH blocking over the encodings themselves, so that matching never compares all pairs.

Each *band* samples ``bits_per_band`` bit positions of the encodings; two records from different
datasets become a candidate pair when they agree on every sampled bit of at least one band.
On the informative positions a true match with Dice similarity 0.8 agrees on about 87% of bits,
so it agrees on 21 sampled bits with probability ~0.05 and 96 bands find it with probability
~0.99 (more similar pairs: almost surely); a random pair agrees on only ~58% of those bits, so
it collides in a band with probability ~1e-5.

The coordinator has no linkage secret and needs none: the bands are drawn from ``seed`` among
the bit positions whose frequency (measured on the encodings) is informative. Positions that are
almost always set (the date separators, say) would only make buckets larger.

Very frequent keys (the all-zero key, many people with one common name and birth date) would
make giant buckets. A bucket that would yield more than ``max_bucket_pairs`` cross-dataset pairs
is split with ``split_bits`` more sampled bits; what is still too big is skipped in that band
(its records can still meet in the other bands) and counted in :class:`BlockingStats`, so that
memory and time stay bounded and nothing is lost silently.

Keys are stored per record and band (:class:`BandKeys`) so that a pair found in several bands is
kept only in the first one that finds it (see ``coordinator.linkage.match``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from pplink.models import PplinkModel

__all__ = [
    "BandKeys",
    "BlockingConfig",
    "BlockingStats",
    "bit_frequencies",
    "choose_band_bits",
    "compute_band_keys",
]

#: Rows per block when extracting key bits: keeps the working set in cache.
_ROW_BLOCK = 8_192
#: Bands whose key columns are copied out together (see ``compute_band_keys``).
_BAND_GROUP = 8
#: Rows per dataset used to estimate bit frequencies; plenty to rank 1024 positions.
_FREQUENCY_SAMPLE = 65_536


class BlockingConfig(PplinkModel):
    """How candidate pairs are chosen (Hamming LSH on sampled bit positions).

    The defaults (96 bands of 21 bits) were chosen by measurement (``benchmarks/match.py``) on
    clkhash encodings of synthetic people (five fields, 1024 bits, ~33% of bits set, typos in most
    records): against all-pairs at Dice >= 0.8 they lose 0.14% of the pairs at 4 x 100k records and
    0.25% at 2 x 1M, while comparing 0.19% of all pairs (1.8e9 of 1e12 at 2 x 1M).

    At the automatic thresholds of realistic data (0.55-0.7) 96 x 21 misses 0.7-8% of the true
    links, so a round does not take these defaults as they are: past ``ALL_PAIRS_LIMIT`` the
    coordinator takes the densest setting of a ladder (21 x 96, 20 x 128, 19 x 128, 18 x 128,
    17 x 160, 16 x 192, 16 x 256, 15 x 256) whose comparisons, estimated from a sample's band keys,
    fit a budget of ``max(2e8, 500 per record)`` (:mod:`coordinator.linkage.blocking_budget`;
    the table of losses and costs is in docs/scaling.md). 15 x 256 loses at most 0.25% of the true
    links scoring >= 0.55 on every quality dataset, at ~43x the comparisons of 96 x 21.

    Attributes:
        bits_per_band: bit positions per band; more bits mean smaller buckets and lower recall.
        bands: number of bands; more bands mean higher recall and more comparisons.
        seed: draws the bands; any value works, the same value gives the same bands on the same data.
        min_bit_frequency: positions set in fewer than this fraction of records, or in more than
            ``1 - min_bit_frequency``, are not sampled (unless too few positions remain).
        max_bucket_pairs: a bucket that would give more cross-dataset pairs is split, then skipped.
        split_bits: extra sampled bits used to split a giant bucket.

    Examples:
        >>> BlockingConfig().bands
        96
        >>> BlockingConfig(bits_per_band=24, bands=64).bits_per_band
        24
    """

    bits_per_band: Annotated[int, Field(ge=1, le=48)] = 21
    bands: Annotated[int, Field(ge=1, le=1024)] = 96
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    min_bit_frequency: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.2
    max_bucket_pairs: Annotated[int, Field(ge=1)] = 1_000_000
    split_bits: Annotated[int, Field(ge=0, le=16)] = 8

    @model_validator(mode="after")
    def _keys_fit(self) -> BlockingConfig:
        # A split key carries a flag bit above the sampled bits, and the all-ones value is the
        # "skipped" sentinel: both must fit in 64 bits.
        if self.bits_per_band + self.split_bits > 62:
            raise ValueError("bits_per_band + split_bits must be at most 62 so that band keys fit 64 bits")
        return self

    @property
    def bits_per_key(self) -> int:
        """Sampled positions per band, the split bits included."""
        return self.bits_per_band + self.split_bits


class BlockingStats(PplinkModel):
    """What blocking did, reported with every match so that skipped work is visible.

    Attributes:
        bands: number of bands.
        bits_per_band: sampled bits per band.
        buckets_split: (band, key) buckets that were too big and were split with more bits.
        buckets_skipped: buckets still too big after splitting, skipped in that band.
        records_skipped: record-band incidences in skipped buckets (a record counts once per band).
        pairs_skipped: cross-dataset pairs the skipped buckets would have produced.
        largest_bucket_pairs: most cross-dataset pairs any compared bucket produced.
    """

    bands: int
    bits_per_band: int
    buckets_split: int = 0
    buckets_skipped: int = 0
    records_skipped: int = 0
    pairs_skipped: int = 0
    largest_bucket_pairs: int = 0


@dataclass(frozen=True)
class BandKeys:
    """Every record's key in every band.

    Attributes:
        keys: one ``(n_records, bands)`` array per dataset; equal keys in a band mean "compare".
        sentinel: the key of a record whose bucket was skipped; it never matches anything.
        stats: what blocking split and skipped.
    """

    keys: tuple[np.ndarray, ...]
    sentinel: int
    stats: BlockingStats

    @property
    def bands(self) -> int:
        """Number of bands."""
        return int(self.keys[0].shape[1])


def bit_frequencies(datasets: Sequence[np.ndarray], *, seed: int = 0) -> np.ndarray:
    """Fraction of records that set each bit position, estimated on a seeded sample of rows.

    Args:
        datasets: packed encodings, ``uint8`` arrays of shape ``(n_i, nbytes)``, big-endian bits.
        seed: picks the sample rows of datasets larger than the sample size.

    Returns:
        A float array of length ``8 * nbytes``; all zeros if every dataset is empty.

    Examples:
        >>> bit_frequencies([np.array([[0b10000000], [0b10000001]], dtype=np.uint8)]).tolist()
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    """
    from coordinator.linkage.block_kernels import bit_counts
    from coordinator.linkage.similarity import as_words

    rng = np.random.default_rng(seed)
    nbits = datasets[0].shape[1] * 8
    # Counted per uint64 word (the zero bytes that pad a row to whole words count nothing).
    totals = np.zeros(-(-nbits // 64) * 64, dtype=np.int64)
    rows = 0
    for data in datasets:
        # The sample rows are counted where they lie, not copied out.
        sample = (np.sort(rng.choice(data.shape[0], _FREQUENCY_SAMPLE, replace=False))
                  if data.shape[0] > _FREQUENCY_SAMPLE else np.arange(data.shape[0]))
        if len(sample):
            bit_counts(as_words(np.ascontiguousarray(data)), sample, totals)
        rows += len(sample)
    return totals[:nbits] / rows if rows else np.zeros(nbits)


def choose_band_bits(frequencies: np.ndarray, config: BlockingConfig) -> np.ndarray:
    """Draw each band's bit positions from the informative ones.

    Args:
        frequencies: per-position set frequency, as from :func:`bit_frequencies`.
        config: band sizes, seed and frequency bounds.

    Returns:
        An ``(bands, bits_per_band + split_bits)`` int64 array of bit positions, distinct within
        a band; the first ``bits_per_band`` make the band key, the rest split giant buckets.

    Raises:
        ValueError: the encodings have fewer bit positions than a band needs.
    """
    width = config.bits_per_key
    nbits = len(frequencies)
    if nbits < width:
        raise ValueError(f"blocking needs {width} bit positions per band but the encodings have {nbits} bits")
    lo = config.min_bit_frequency
    pool = np.flatnonzero((frequencies >= lo) & (frequencies <= 1.0 - lo))
    if len(pool) < width:
        # Too few balanced positions (tiny or odd data): take the most balanced ones instead.
        pool = np.sort(np.argsort(np.abs(frequencies - 0.5), kind="stable")[:width])
    rng = np.random.default_rng(config.seed)
    return np.stack([rng.choice(pool, width, replace=False) for _ in range(config.bands)]).astype(np.int64)


def _pack_bits(data: np.ndarray, positions: np.ndarray, dtype: type[np.unsignedinteger],
               workers: int = 1) -> np.ndarray:
    """Gather ``positions`` (shape ``(bands, w)``) of every row into one integer per band.

    Bit ``t`` of a band's key is the encoding's bit at ``positions[band, t]``. A compiled loop
    reads each encoding once as uint64 words (``pack_keys``); threads share the rows.
    """
    from coordinator.linkage.block_kernels import bit_word_shifts, pack_keys
    from coordinator.linkage.similarity import as_words
    from pplink.aligned import empty_line_aligned

    words = np.ascontiguousarray(as_words(np.ascontiguousarray(data)))
    word, shift = bit_word_shifts(positions)
    # Line-aligned: the earlier-band check reads records' key rows from all over the matrix.
    out = empty_line_aligned((data.shape[0], positions.shape[0]), dtype)
    starts = range(0, data.shape[0], _ROW_BLOCK)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda first: pack_keys(words, word, shift, out, first, min(first + _ROW_BLOCK, len(out))),
                          starts))
    else:
        pack_keys(words, word, shift, out, 0, len(out))
    return out


def _bucket_pairs(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys over all datasets and the cross-dataset pairs each key's bucket gives."""
    keys, inverse = np.unique(np.concatenate(columns), return_inverse=True)
    total = np.bincount(inverse, minlength=len(keys))
    squares = np.zeros(len(keys), dtype=np.int64)
    offset = 0
    for col in columns:
        counts = np.bincount(inverse[offset : offset + len(col)], minlength=len(keys))
        squares += counts * counts
        offset += len(col)
    return keys, (total * total - squares) // 2


def compute_band_keys(
    datasets: Sequence[np.ndarray],
    config: BlockingConfig,
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    exact_largest: bool = True,
) -> BandKeys:
    """Compute every record's key in every band, splitting and skipping giant buckets.

    Args:
        datasets: packed encodings, ``uint8`` arrays of shape ``(n_i, nbytes)`` (checked by the caller).
        config: the blocking settings.
        workers: threads for extracting key bits.
        progress: called with ``(bands counted, bands)`` as buckets are counted.
        exact_largest: count every band's buckets for ``largest_bucket_pairs``. ``False`` counts
            only bands that may hold a giant bucket (a cheap bound screens out the rest), so the
            stat is a lower bound that comparing completes (``compare.compare_datasets``).

    Returns:
        The keys (one ``(n_i, bands)`` array per dataset) and what was split or skipped.

    Raises:
        ValueError: the encodings have fewer bit positions than a band needs.
    """
    positions = choose_band_bits(bit_frequencies(datasets, seed=config.seed), config)
    b, width, cap = config.bits_per_band, config.bits_per_key, config.max_bucket_pairs
    dtype: type[np.unsignedinteger] = np.uint32 if width <= 30 else np.uint64
    sentinel = int(np.iinfo(dtype).max)
    split_flag = dtype(1 << width)
    keys = [_pack_bits(data, positions[:, :b], dtype, workers) for data in datasets]
    stats = dict(buckets_split=0, buckets_skipped=0, records_skipped=0, pairs_skipped=0, largest_bucket_pairs=0)

    lock, counted = threading.Lock(), []

    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)

    # Column buffers, one per thread at a time, reused from group to group (see ``gather_columns``).
    buffers: list[np.ndarray] = []

    def giants(first: int) -> list[tuple[np.ndarray, int]]:
        from coordinator.linkage.block_kernels import column_census, gather_columns

        bands = range(first, min(first + _BAND_GROUP, config.bands))
        with lock:
            buffer = buffers.pop() if buffers else np.empty((_BAND_GROUP, int(offsets[-1])), dtype=dtype)
        # One compiled copy of a group of columns reads each row's keys once; a column at a time
        # would read a whole cache line per key.
        columns = gather_columns(tuple(keys), bands.start, buffer[: len(bands)])
        out = []
        for column in columns:
            giant_keys, largest = column_census(column, offsets, cap, exact_largest=exact_largest)
            # A copy: the buffer is overwritten by the next group.
            out.append((giant_keys.astype(dtype, copy=True), int(largest)))
        with lock:
            buffers.append(buffer)
        if progress:
            with lock:
                counted.append(len(bands))
                progress(sum(counted), config.bands)
        return out

    firsts = range(0, config.bands, _BAND_GROUP)
    if workers > 1 and len(firsts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = [pair for group in pool.map(giants, firsts) for pair in group]
    else:
        found = [pair for first in firsts for pair in giants(first)]
    for band, (giant_keys, largest) in enumerate(found):
        columns = [k[:, band] for k in keys]  # views: splitting below writes through to ``keys``
        if len(giant_keys):
            stats["buckets_split"] += len(giant_keys)
            members = [np.flatnonzero(np.isin(col, giant_keys)) for col in columns]
            split = [
                _pack_bits(data[rows], positions[band : band + 1], dtype)[:, 0] | split_flag
                for data, rows in zip(datasets, members, strict=True)
            ]
            sub_keys, sub_pairs = _bucket_pairs(split)
            still = sub_pairs > cap
            largest = max(largest, int(sub_pairs[~still].max(initial=0)))
            stats["buckets_skipped"] += int(still.sum())
            stats["pairs_skipped"] += int(sub_pairs[still].sum())
            for col, rows, split_col in zip(columns, members, split, strict=True):
                skipped = np.isin(split_col, sub_keys[still])
                stats["records_skipped"] += int(skipped.sum())
                split_col[skipped] = sentinel
                col[rows] = split_col
        stats["largest_bucket_pairs"] = max(stats["largest_bucket_pairs"], largest)
    return BandKeys(
        keys=tuple(keys),
        sentinel=sentinel,
        stats=BlockingStats(bands=config.bands, bits_per_band=b, **stats),
    )
