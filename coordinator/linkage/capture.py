"""How likely blocking is to find a pair, by its similarity: the calibration's correction for LSH blocking.

A round past ``ALL_PAIRS_LIMIT`` compares only the pairs LSH blocking puts in a shared bucket, and
blocking finds a pair the more often the more similar it is. The linked pairs' histogram is then
thinned most near the floor, where false links live: on the household set (blocked) the fit saw
a third of the false links and the estimated precision came out 0.02 too high. Here the thinning
is measured on the round's own encodings, with no truth: on a random sample of rows, the pairs at
or above the floor that all-pairs comparison finds, and the share of them blocking also finds, per
similarity bin. :func:`coordinator.linkage.mixture.fit_mixture` multiplies both components by it.

Whether a pair collides in a band does not depend on the other records (apart from the
giant-bucket guard), so a sample measures the full round's rates. The setting measured must be the
one the round compares with: the budget policy (:mod:`coordinator.linkage.blocking_budget`) picks
it per round, and :func:`coordinator.linkage.auto.auto_match` hands the same setting to both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.compare import Found
from coordinator.linkage.compare import compare_datasets as _compare
from coordinator.linkage.second_pass import SecondPass
from coordinator.linkage.similarity import check_datasets

__all__ = ["CAPTURE_SAMPLE_ROWS", "capture_by_score"]

#: Rows per agency the measurement compares all-pairs (4 agencies: 6 x 4M comparisons).
CAPTURE_SAMPLE_ROWS = 2000
#: Width of the bins the rates are measured in (0.025): enough pairs per bin on a sample.
_COARSE = 40


def _pairs(found: Found, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (one int64 code each) and their similarities."""
    if not found.sims:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    first = offsets[np.concatenate(found.dset_a)] + np.concatenate(found.rows_a)
    second = offsets[np.concatenate(found.dset_b)] + np.concatenate(found.rows_b)
    codes, at = np.unique(first * offsets[-1] + second, return_index=True)
    return codes, np.concatenate(found.sims)[at]


def _second_hits(datasets: Sequence[np.ndarray], floor: float, second: SecondPass, picks: Sequence[np.ndarray],
                 full_sizes: Sequence[int], workers: int) -> np.ndarray:
    """Codes (as :func:`_pairs` gives them) of the sampled pairs the round's second pass would find."""
    sizes = [len(d) for d in datasets]
    found, *_ = _compare(tuple(datasets), floor, second.config, workers, None, None)
    codes, _ = _pairs(found, sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    first, other = np.divmod(codes, offsets[-1])
    d_a, d_b = np.searchsorted(offsets, first, side="right") - 1, np.searchsorted(offsets, other, side="right") - 1
    keep = np.zeros(len(codes), dtype=bool)
    for (a, b), (rows_a, rows_b) in second.rows.items():
        free_a, free_b = np.zeros(full_sizes[a], dtype=bool), np.zeros(full_sizes[b], dtype=bool)
        free_a[rows_a], free_b[rows_b] = True, True
        sel = np.flatnonzero((d_a == a) & (d_b == b))
        keep[sel] = free_a[picks[a][first[sel] - offsets[a]]] & free_b[picks[b][other[sel] - offsets[b]]]
    return codes[keep]


def capture_by_score(
    datasets: Sequence[np.ndarray],
    floor: float,
    blocking: BlockingConfig,
    *,
    bins: int = 200,
    sample_rows: int = CAPTURE_SAMPLE_ROWS,
    seed: int = 0,
    workers: int = 2,
    second: SecondPass | None = None,
) -> np.ndarray:
    """Per similarity bin (``bins`` over [0, 1]), the share of pairs blocking finds; 1 where unmeasured.

    Rates are measured in 0.025-wide bins, made non-decreasing in similarity (blocking finds more
    similar pairs more often) and spread over the finer bins; a coarse bin with fewer than 30 pairs
    takes its higher neighbour's rate, and every rate is at least 0.02 (a rate of zero would make
    a bin impossible, not rare).

    Args:
        datasets: packed encodings, one array per agency.
        floor: the calibration's floor.
        blocking: the round's blocking settings.
        bins: bins of the histogram the rates are for.
        sample_rows: rows per agency compared all-pairs.
        seed: picks the sample.
        workers: threads.
        second: the round's second pass, if it made one: a sampled pair also counts as found when
            its setting finds it on the sample and both rows were partnerless for their agency
            pair in the round's first solve (as the round itself decided).

    Returns:
        ``bins`` rates (1 below the floor).
    """
    datasets = check_datasets(datasets)
    rng = np.random.default_rng(seed)
    picks = [np.arange(len(d)) if len(d) <= sample_rows else np.sort(rng.choice(len(d), sample_rows, replace=False))
             for d in datasets]
    full_sizes = [len(d) for d in datasets]
    datasets = tuple(d[p] for d, p in zip(datasets, picks, strict=True))
    sizes = [len(d) for d in datasets]
    reference, *_ = _compare(datasets, floor, None, workers, None, None)
    blocked, *_ = _compare(datasets, floor, blocking, workers, None, None)
    codes, sims = _pairs(reference, sizes)
    hits = _pairs(blocked, sizes)[0]
    if second is not None:
        hits = np.union1d(hits, _second_hits(datasets, floor, second, picks, full_sizes, workers))
    found = np.isin(codes, hits)
    coarse = np.minimum((sims * _COARSE).astype(np.int64), _COARSE - 1)
    total = np.bincount(coarse, minlength=_COARSE).astype(np.float64)
    hit = np.bincount(coarse, weights=found.astype(np.float64), minlength=_COARSE)
    rate = np.ones(_COARSE)
    for k in range(_COARSE - 1, -1, -1):  # from the top: sparse bins take the rate above them
        above = rate[k + 1] if k + 1 < _COARSE else 1.0
        rate[k] = hit[k] / total[k] if total[k] >= 30 else above
    rate = np.minimum.accumulate(rate[::-1])[::-1]  # non-decreasing in similarity
    fine = np.repeat(np.maximum(rate, 0.02), bins // _COARSE) if bins % _COARSE == 0 else \
        np.interp((np.arange(bins) + 0.5) / bins, (np.arange(_COARSE) + 0.5) / _COARSE, np.maximum(rate, 0.02))
    fine[: int(np.floor(floor * bins + 1e-9))] = 1.0
    return fine
