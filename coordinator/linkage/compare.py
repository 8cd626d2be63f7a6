"""Find the candidate pairs at or above a threshold: blocked (compiled kernels) or all pairs (anonlink).

With blocking, each band is one compiled pass: the (key, record) entries of all datasets are
radix-sorted together (:mod:`coordinator.linkage.band_sort`), and the runs of equal keys are
walked (:mod:`coordinator.linkage.band_kernels`), their encodings copied into a contiguous block
a chunk of runs at a time and every cross-dataset pair scored from there, keeping the pairs at or
above the threshold and counting the histogram as it goes. Groups of ``BAND_GROUP`` bands run on
``workers`` threads (the kernels release the GIL). Memory stays bounded: a band's working set is
~32 bytes per record, and the kernel writes kept pairs to a fixed buffer that the caller drains
between calls. A pair that several bands find is kept by the first of them only (each kept pair is
checked against the two records' keys in earlier bands), except, without a histogram, below
``repeats_below``: there the caller drops the repeats (:data:`REPEATS_BELOW`).

Without blocking, every pair is scored by ``anonlink.similarities.dice_coefficient_accelerated``
over ``anonlink.concurrency.split_to_chunks`` chunks: the reference that blocking is measured
against (``blocking_recall.measure_blocking_recall``) and the peer that ``benchmarks/match.py`` runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from coordinator.linkage.band_kernels import dice_bins, score_band_runs
from coordinator.linkage.band_sort import sorted_entries
from coordinator.linkage.block_kernels import gather_columns
from coordinator.linkage.blocking import BandKeys, BlockingConfig, BlockingStats, compute_band_keys
from coordinator.linkage.floor_sink import FloorSink
from coordinator.linkage.kernels import row_popcounts
from coordinator.linkage.similarity import as_words
from pplink.aligned import line_aligned
from pplink.errors import MatchError

__all__ = [
    "Found", "Progress", "announce", "blocking_stats", "compare_bands", "compare_datasets", "one_type", "run_units",
]

#: Pairs scoring at least this are checked against earlier bands, so that each counts once.
#: Below it, a pair found in several bands is counted once per band in the histogram: on the
#: benchmark's clkhash data (default blocking, 2 x 100k) that overcounts a bin by at most 0.3%,
#: while checking every pair would cost about as much as the Dice computation itself.
DEDUP_FLOOR = 0.5
#: An automatic round's floor keeps pairs from 0.55 up; those below this are kept unchecked against
#: earlier bands when the caller drops repeats itself (``repeats_below``: ``match_clks`` does, in its
#: sort). Most of them are found by one band only (at 4 x 100k, 13.56M kept for 12.72M distinct pairs),
#: yet each one's check read every earlier band's keys of both records: a fifth of the floor's comparing.
#: Closer pairs are found by many bands, and checked (their check stops at the first shared band).
REPEATS_BELOW = 0.75
#: Comparisons per anonlink all-pairs chunk (its own chunking helper aims at this).
_ALL_PAIRS_CHUNK = 50_000_000
#: Comparisons per chunk when the all-pairs run also counts a histogram (every pair comes back).
_ALL_PAIRS_HISTOGRAM_CHUNK = 2_000_000
#: Bands per work unit (one task of a thread or of Ray).
BAND_GROUP = 8
#: Bands whose key columns are copied out of the key matrices together (16 uint32 keys share a cache line).
_COLUMN_GROUP = 8
#: Kept pairs the kernel may write per call (24 bytes each); grown to the largest bucket if needed.
_OUTPUT_PAIRS = 1 << 18

Progress = Callable[[int, int], None]


@dataclass
class Found:
    """Pairs at or above the threshold, a histogram, and a comparison count, from some work unit.

    Attributes:
        dset_a: per added batch, the first record's dataset (uint32).
        dset_b: per added batch, the second record's dataset (uint32).
        rows_a: per added batch, the first record's row (uint32).
        rows_b: per added batch, the second record's row (uint32).
        sims: per added batch, the Dice similarities (float64).
        histogram: similarity counts per bin, or ``None`` when not counted.
        comparisons: pair similarities computed.
        may_repeat: whether a pair may be kept more than once (found by several bands below
            ``repeats_below``: see :func:`compare_bands`).
        largest_bucket: most cross-dataset pairs of one compared bucket (blocked comparisons only).
    """

    dset_a: list[np.ndarray] = field(default_factory=list)
    dset_b: list[np.ndarray] = field(default_factory=list)
    rows_a: list[np.ndarray] = field(default_factory=list)
    rows_b: list[np.ndarray] = field(default_factory=list)
    sims: list[np.ndarray] = field(default_factory=list)
    histogram: np.ndarray | None = None
    comparisons: int = 0
    largest_bucket: int = 0
    may_repeat: bool = False

    @classmethod
    def empty(cls, bins: int | None) -> Found:
        """No pairs yet, with a zeroed histogram of ``bins`` bins (or none)."""
        return cls(histogram=None if bins is None else np.zeros(bins, dtype=np.int64))

    def add(self, d_a: int, d_b: int, rows_a: np.ndarray, rows_b: np.ndarray, sims: np.ndarray) -> None:
        """Keep pairs ``(d_a, rows_a[k]) - (d_b, rows_b[k])`` scoring ``sims[k]`` (copies them)."""
        if len(sims):
            self.dset_a.append(np.full(len(sims), d_a, dtype=np.uint32))
            self.dset_b.append(np.full(len(sims), d_b, dtype=np.uint32))
            self.rows_a.append(rows_a.astype(np.uint32))
            self.rows_b.append(rows_b.astype(np.uint32))
            self.sims.append(np.array(sims, dtype=np.float64))

    def add_mixed(
        self, dset_a: np.ndarray, dset_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, sims: np.ndarray
    ) -> None:
        """Keep pairs ``(dset_a[k], rows_a[k]) - (dset_b[k], rows_b[k])`` scoring ``sims[k]`` (copies them)."""
        if len(sims):
            self.dset_a.append(dset_a.astype(np.uint32))
            self.dset_b.append(dset_b.astype(np.uint32))
            self.rows_a.append(rows_a.astype(np.uint32))
            self.rows_b.append(rows_b.astype(np.uint32))
            self.sims.append(np.array(sims, dtype=np.float64))

    def count(self, sims: np.ndarray) -> None:
        """Add similarities to the histogram, if one is kept."""
        if self.histogram is not None and len(sims):
            bins = len(self.histogram)
            self.histogram += np.bincount(np.minimum((sims * bins).astype(np.int64), bins - 1), minlength=bins)

    def merge(self, other: Found) -> None:
        """Add another unit's pairs, histogram and comparisons to this one."""
        for name in ("dset_a", "dset_b", "rows_a", "rows_b", "sims"):
            getattr(self, name).extend(getattr(other, name))
        if self.histogram is not None and other.histogram is not None:
            self.histogram += other.histogram
        self.comparisons += other.comparisons
        self.largest_bucket = max(self.largest_bucket, other.largest_bucket)
        self.may_repeat |= other.may_repeat

    @property
    def pairs(self) -> int:
        """Pairs kept so far."""
        return sum(len(s) for s in self.sims)


Task = Callable[[Callable[[], None]], Found]


def announce(progress: Progress | None, name: str, total: int | None = None) -> None:
    """Tell a progress callback that a stage starts, if it has a ``stage(name, total)`` method.

    A plain ``(done, total)`` callable ignores stages (``pplink.cli.progress.StageProgress`` draws them).

    Examples:
        >>> announce(None, "loading"); announce(lambda done, total: None, "loading")
    """
    stage = getattr(progress, "stage", None)
    if stage is not None:
        stage(name, total)


def run_units(tasks: Sequence[Task], units: int, workers: int, progress: Progress | None, bins: int | None) -> Found:
    """Run tasks on ``workers`` threads and merge what they found.

    Each task is called with a ``tick`` that it calls once per unit of work it finishes; the
    ticks of all tasks add up to ``units``, and ``progress(done, units)`` follows them (from
    whichever thread ticks, under a lock).
    """
    total = Found.empty(bins)
    lock = threading.Lock()
    done = 0

    def tick() -> None:
        nonlocal done
        with lock:
            done += 1
            if progress:
                progress(done, units)

    if progress:
        progress(0, units)
    if workers == 1:
        for task in tasks:
            total.merge(task(tick))
        return total
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pplink-match") as pool:
        futures = [pool.submit(task, tick) for task in tasks]
        for future in as_completed(futures):
            total.merge(future.result())
    return total


def compare_bands(
    bands: range,
    words: Sequence[np.ndarray],
    pops: Sequence[np.ndarray],
    keys: Sequence[np.ndarray],
    sentinel: int,
    threshold: float,
    bins: int | None,
    tick: Callable[[], None] | None = None,
    sink: FloorSink | None = None,
    buffers: Scratch | None = None,
    repeats_below: float = 0.0,
) -> Found:
    """Score every candidate pair of some bands, keeping those that no earlier band found.

    Args:
        bands: the bands to compare (any order).
        words: per dataset, encodings as uint64 words (``as_words``).
        pops: per dataset, int64 popcounts of ``words`` (``row_popcounts``).
        keys: per dataset, every record's key in every band (``BandKeys.keys``).
        sentinel: the key of skipped records.
        threshold: keep pairs scoring at least this.
        bins: histogram bins, or ``None`` for no histogram.
        tick: called after each band.
        sink: takes each batch of kept pairs first and hands back those to keep here
            (:class:`~coordinator.linkage.floor_sink.FloorSink`; its rising floor is the kernel's
            threshold); ``None`` keeps them all.
        buffers: for the bands' key columns and sorted entries, used by one call at a time
            (:class:`Scratch`; a match's threads each reuse one); ``None``: fresh ones.
        repeats_below: without a histogram, pairs scoring below this are kept by every band that
            finds them, unchecked against earlier bands (:data:`REPEATS_BELOW`); ``Found.may_repeat``
            then says so, and the caller drops the repeats. With a histogram every pair is checked.

    Returns:
        The kept pairs, the histogram and the number of comparisons of these bands.
    """
    buffers = Scratch() if buffers is None else buffers
    found = Found.empty(bins)
    histogram = found.histogram if found.histogram is not None else np.zeros(0, dtype=np.int64)
    # Without a histogram, pairs below the threshold are neither counted nor kept: only those at
    # or above it need the earlier-band check.
    floor = min(threshold, DEDUP_FLOOR) if len(histogram) else threshold
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    if offsets[-1] >= 2**32:
        raise MatchError("blocked matching handles fewer than 2**32 records in all")
    # The kernel looks each pair's bin up by popcounts instead of dividing (``dice_bins``).
    bin_of, lowest_denominator = np.zeros((0, 0), dtype=np.uint8), 0
    if len(histogram) and offsets[-1]:
        present = [p for p in pops if len(p)]
        lowest_pop, highest_pop = min(int(p.min()) for p in present), max(int(p.max()) for p in present)
        bin_of, lowest_denominator = dice_bins(len(histogram), lowest_pop, highest_pop)
    words, keys = one_type(words), one_type(keys)
    out = _Output()
    scratch = 0
    order = sorted(bands)
    for group in range(0, len(order), _COLUMN_GROUP):
        chosen = order[group : group + _COLUMN_GROUP]
        # Consecutive bands share the key matrices' cache lines: copy their columns out together.
        columns = buffers.columns(keys, chosen[0], chosen[-1] - chosen[0] + 1)
        for band in chosen:
            entries = sorted_entries(columns[band - chosen[0]], sentinel, buffers.entries(columns.shape[1]))
            entry = 0
            while entry < len(entries):
                start = entry
                # A sink's risen floor is the threshold, and the earlier-band check starts there; the
                # round then counts no histogram (counting every comparison, and checking every pair
                # above 0.5, were most of its comparing: the sink's round reports none).
                kept_from = threshold if sink is None else max(threshold, sink.floor)
                risen = kept_from != threshold
                counted = histogram[:0] if risen else histogram
                unchecked = repeats_below if not len(counted) and repeats_below > kept_from else 0.0
                entry, kept, comparisons, largest = score_band_runs(
                    entries, entry, offsets, words, keys, band, sentinel, kept_from,
                    kept_from if risen else floor, counted, bin_of, lowest_denominator,
                    *out.arrays, scratch, unchecked,
                )  # fmt: skip
                found.may_repeat |= unchecked > 0.0 and band > 0 and kept > 0
                found.comparisons += comparisons
                found.largest_bucket = max(found.largest_bucket, largest)
                batch = tuple(a[:kept] for a in out.arrays)
                if sink is None:
                    found.add_mixed(*batch)
                elif kept:
                    sink.take(*batch)
                    if sink.refused:  # the comparison runs again (compare_datasets): stop here
                        return found
                if entry == start:
                    # The next bucket alone overflows the buffer or the kernel's scratch: grow them to it.
                    records, pairs = _run_size(entries, entry, offsets)
                    if pairs > len(out.arrays[0]):
                        out.grow(pairs)
                    scratch = max(scratch, records)
            if tick:
                tick()
    return found


class Scratch:
    """One thread's reusable buffers for :func:`compare_bands`: a group of bands' key columns, and sort space.

    Allocated by numpy once per thread and match, not per band inside the kernels: fresh buffers
    for every band (12.8 MB of columns per 8 bands, 6.4 MB of entries per band at 4 x 100k) cost
    more in first-touched pages than the copy and the sort that fill them.
    """

    def __init__(self) -> None:
        self._columns = np.zeros((0, 0), dtype=np.uint32)
        self._entries = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64))

    def columns(self, keys: tuple[np.ndarray, ...], first: int, count: int) -> np.ndarray:
        """Columns ``first .. first + count - 1`` of the key matrices, one row per band, in the buffer."""
        total = sum(matrix.shape[0] for matrix in keys)
        if self._columns.dtype != keys[0].dtype or self._columns.shape[0] < count or self._columns.shape[1] < total:
            self._columns = np.empty((max(count, _COLUMN_GROUP), total), dtype=keys[0].dtype)
        return gather_columns(keys, first, self._columns[:count, :total])

    def entries(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Two uint64 buffers of at least ``size`` for a band's sorted entries."""
        if len(self._entries[0]) < size:
            self._entries = (np.empty(size, dtype=np.uint64), np.empty(size, dtype=np.uint64))
        return self._entries


def one_type(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Read-only C-contiguous views of one dtype: the kernel indexes them as one tuple type.

    Arrays from different places (a caller's, Ray's object store) differ in writeability, and a
    tuple that mixes them cannot be indexed at run time in compiled code.
    """
    dtype = np.result_type(*arrays)
    out = []
    for array in arrays:
        view = np.ascontiguousarray(array, dtype=dtype).view()
        view.flags.writeable = False
        out.append(view)
    return tuple(out)


class _Output:
    """The kernel's buffer of kept pairs (dataset and row of each side, similarity), reused per band."""

    def __init__(self) -> None:
        self.arrays: tuple[np.ndarray, ...] = ()
        self.grow(_OUTPUT_PAIRS)

    def grow(self, size: int) -> None:
        size = max(size, _OUTPUT_PAIRS)
        # uint32 datasets and rows (checked below 2**32 records), as the pairs are kept.
        self.arrays = (*(np.empty(size, dtype=np.uint32) for _ in range(4)), np.empty(size, dtype=np.float64))


def _run_size(entries: np.ndarray, entry: int, offsets: np.ndarray) -> tuple[int, int]:
    """Records and cross-dataset pairs of the run of equal keys that starts at ``entry`` (``sorted_entries``)."""
    keys = entries[entry:] >> np.uint64(32)
    last = entry + int(np.searchsorted(keys, keys[0], side="right"))
    records = (entries[entry:last] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    sizes = np.bincount(np.searchsorted(offsets, records, side="right") - 1, minlength=len(offsets))
    return last - entry, int((sizes.sum() ** 2 - (sizes * sizes).sum()) // 2)


def _compare_all_pairs_chunk(
    chunk: list[dict], datasets: tuple[np.ndarray, ...], threshold: float, bins: int | None
) -> Found:
    """Score one anonlink chunk with anonlink's accelerated Dice."""
    from anonlink.similarities import dice_coefficient_accelerated
    from bitarray import bitarray

    def records(part: dict) -> list[bitarray]:
        first, last = part["range"]
        out = []
        for row in datasets[part["datasetIndex"]][first:last]:
            bits = bitarray(endian="big")
            bits.frombytes(row.tobytes())
            out.append(bits)
        return out

    found = Found.empty(bins)
    part_a, part_b = chunk
    floor = 0.0 if bins is not None else threshold
    sims, (rows_a, rows_b) = dice_coefficient_accelerated((records(part_a), records(part_b)), floor)
    sims = np.frombuffer(sims, dtype=np.float64)
    rows_a = np.frombuffer(rows_a, dtype=np.uint32).astype(np.int64) + part_a["range"][0]
    rows_b = np.frombuffer(rows_b, dtype=np.uint32).astype(np.int64) + part_b["range"][0]
    found.comparisons = (part_a["range"][1] - part_a["range"][0]) * (part_b["range"][1] - part_b["range"][0])
    found.count(sims)
    keep = sims >= threshold
    found.add(part_a["datasetIndex"], part_b["datasetIndex"], rows_a[keep], rows_b[keep], sims[keep])
    return found


def _tick(tick: Callable[[], None], found: Found) -> Found:
    tick()
    return found


@dataclass(frozen=True)
class Prepared:
    """Everything a band needs, computed once per match: words, popcounts and band keys.

    Attributes:
        words: per dataset, encodings as uint64 words.
        pops: per dataset, int64 popcounts.
        band_keys: every record's key in every band.
    """

    words: tuple[np.ndarray, ...]
    pops: tuple[np.ndarray, ...]
    band_keys: BandKeys


def prepare(
    datasets: tuple[np.ndarray, ...], blocking: BlockingConfig, workers: int, progress: Progress | None = None
) -> Prepared:
    """Compute band keys, words and popcounts (``progress`` follows the bands' bucket census).

    The keys' stats count the largest bucket only in bands that may hold a giant one: comparing
    the bands completes it (:func:`blocking_stats`).

    Raises:
        MatchError: the encodings are too short for the blocking.
    """
    try:
        # Comparing walks every bucket anyway: it counts the largest (``blocking_stats``), so the
        # census sorts only the bands that may hold a giant bucket.
        band_keys = compute_band_keys(datasets, blocking, workers=workers, progress=progress, exact_largest=False)
    except ValueError as err:
        raise MatchError(str(err)) from err
    words = tuple(line_aligned(as_words(d)) for d in datasets)
    return Prepared(words=words, pops=tuple(row_popcounts(w) for w in words), band_keys=band_keys)


def compare_datasets(
    datasets: tuple[np.ndarray, ...],
    threshold: float,
    blocking: BlockingConfig | None,
    workers: int,
    progress: Progress | None,
    bins: int | None,
    sink: FloorSink | None = None,
    repeats_below: float = 0.0,
) -> tuple[Found, BlockingStats | None, float, float]:
    """Find the pairs at or above ``threshold``; return them, blocking stats and timings.

    With blocking, a ``sink`` takes each batch of kept pairs first, and pairs below ``repeats_below``
    may be kept more than once (:func:`compare_bands`); all pairs ignore both.

    Returns:
        ``(found, blocking_stats, seconds_blocking, seconds_comparing)``; blocking stats are
        ``None`` and blocking takes 0 s for all pairs.
    """
    started = time.perf_counter()
    if blocking is None:
        from anonlink.concurrency import split_to_chunks

        announce(progress, "comparing all pairs")
        aim = _ALL_PAIRS_CHUNK if bins is None else _ALL_PAIRS_HISTOGRAM_CHUNK
        chunks = list(split_to_chunks(aim, dataset_sizes=[len(d) for d in datasets]))
        tasks = [lambda tick, c=c: _tick(tick, _compare_all_pairs_chunk(c, datasets, threshold, bins)) for c in chunks]
        return run_units(tasks, len(chunks), workers, progress, bins), None, 0.0, time.perf_counter() - started
    announce(progress, "blocking", blocking.bands)
    # Only a stage-aware callback hears about blocking; a plain one counts the compared bands.
    prepared = prepare(datasets, blocking, workers, progress if hasattr(progress, "stage") else None)
    keyed = time.perf_counter()
    announce(progress, "comparing", blocking.bands)
    band_keys = prepared.band_keys
    # Each thread reuses one set of buffers for all its bands (dropped with the threads).
    local = threading.local()

    def buffers() -> Scratch:
        if not hasattr(local, "buffers"):
            local.buffers = Scratch()
        return local.buffers

    def tasks(repeats: float) -> list[Task]:
        return [
            lambda tick, first=first: compare_bands(
                range(first, min(first + BAND_GROUP, band_keys.bands)),
                prepared.words, prepared.pops, band_keys.keys, band_keys.sentinel, threshold, bins, tick, sink,
                buffers(), repeats,
            )  # fmt: skip
            for first in range(0, band_keys.bands, BAND_GROUP)
        ]

    if sink is not None:
        sink.restart(repeats=repeats_below > threshold and not bins)
    found = run_units(tasks(repeats_below), band_keys.bands, workers, progress, bins)
    if sink is not None and sink.refused:
        # The round outgrows its sink's bound: its floor may rise, which needs distinct pairs' counts.
        # Each band group stopped at its first refused batch; they run again, every pair checked.
        sink.restart()
        announce(progress, "comparing (every pair checked)", blocking.bands)
        found = run_units(tasks(0.0), band_keys.bands, workers, progress, bins)
    return found, blocking_stats(band_keys, found), keyed - started, time.perf_counter() - keyed


def blocking_stats(band_keys: BandKeys, found: Found) -> BlockingStats:
    """What blocking did, its largest bucket completed from the comparison of every band (see :func:`prepare`)."""
    largest = max(band_keys.stats.largest_bucket_pairs, found.largest_bucket)
    return band_keys.stats.model_copy(update={"largest_bucket_pairs": largest})
