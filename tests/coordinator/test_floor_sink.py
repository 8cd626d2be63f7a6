"""The bounded floor of an automatic round: the floor rises with the round's size, and only then."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage.auto import _solve_at, auto_match
from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.floor_sink import EDGES, FloorSink, lowest_fitting_floor
from coordinator.linkage.match import match_clks


def _pairs(seed: int, n: int) -> tuple[np.ndarray, ...]:
    """Random cross-dataset pairs, most scoring 0.55-0.7 (denser near 0.55), some above 0.7."""
    rng = np.random.default_rng(seed)
    d_a = rng.integers(0, 3, n)
    d_b = d_a + 1
    sims = np.round(np.where(rng.random(n) < 0.1, rng.uniform(0.7, 1.0, n), 0.55 + rng.exponential(0.03, n)), 4)
    sims = np.minimum(sims, 1.0)
    return d_a, d_b, rng.integers(0, 1000, n), rng.integers(0, 1000, n), sims


def _stream(sink: FloorSink, pairs: tuple[np.ndarray, ...], order: np.ndarray, batches: int) -> None:
    """Feed ``pairs`` in ``order`` and ``batches`` pieces, as the comparison does."""
    for part in np.array_split(order, batches):
        # The comparison scores nothing below the sink's floor: its threshold rises with it.
        part = part[pairs[4][part] >= sink.floor]
        assert not len(sink.take(*(a[part] for a in pairs))[4])  # the sink holds every pair


@pytest.mark.parametrize(("seed", "bound"), [(0, 2500), (1, 5000), (2, 2100)])
def test_raised_floor_is_the_lowest_fitting_edge_whatever_the_order(seed: int, bound: int) -> None:
    """Whatever order and batching the pairs arrive in, once the pairs below keep_all_from pass the
    bound the floor ends at the lowest bin edge whose pairs (any similarity) fit it, as counting all
    pairs first gives, and the sink hands out exactly the pairs at or above it."""
    pairs = _pairs(seed, 20_000)
    sims = pairs[4]
    counts = np.bincount(np.searchsorted(EDGES, sims, side="right") - 1, minlength=len(EDGES))
    expected = lowest_fitting_floor(counts, 0.55, 0.75, bound)
    assert 0.55 < expected < 0.75 and int((sims < 0.7).sum()) > bound
    below = EDGES[int(np.searchsorted(EDGES, expected)) - 1]  # the edge under it: too many pairs
    assert int((sims >= expected).sum()) <= bound < int((sims >= below).sum())
    for trial in range(3):
        order = np.random.default_rng(trial).permutation(len(sims))
        sink = FloorSink(0.55, 0.7, bound, 0.75)
        _stream(sink, pairs, order, 7 + 13 * trial)
        drained = list(sink.drain())
        assert sink.raised and sink.floor == expected
        kept = np.concatenate([batch[4] for batch in drained])
        assert sorted(kept.tolist()) == sorted(sims[sims >= expected].tolist())
        assert sink.most_held <= bound + bound // 4 + max(len(p) for p in np.array_split(order, 7 + 13 * trial))


def test_floor_stays_while_the_pairs_below_keep_all_from_fit_and_never_passes_highest() -> None:
    """While the pairs below keep_all_from fit the bound the floor never rises, whatever the pairs
    above it number, and every pair is drained in arrival order; a bound nothing fits stops the
    floor at ``highest``."""
    pairs = _pairs(3, 3000)
    sims = pairs[4]
    sink = FloorSink(0.55, 0.7, int((sims < 0.7).sum()), 0.75)
    _stream(sink, pairs, np.arange(len(sims)), 11)
    drained = np.concatenate([batch[4] for batch in sink.drain()])
    assert not sink.raised and sink.floor == 0.55 and int((sims >= 0.7).sum()) > 0
    assert drained.tolist() == sims.tolist()
    tight = FloorSink(0.55, 0.7, 10, 0.75)
    _stream(tight, pairs, np.arange(len(sims)), 11)
    drained = np.concatenate([batch[4] for batch in tight.drain()])
    assert tight.floor == 0.75 and sorted(drained.tolist()) == sorted(sims[sims >= 0.75].tolist())


def _agencies(seed: int, people: int, rows: int, bits: int = 1024, spread: float = 0.08) -> list[np.ndarray]:
    """Four agencies' records of people drawn around a few prototypes: many strangers score 0.55-0.7."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((people // 20, bits)) < 0.25
    base = prototypes[rng.integers(0, len(prototypes), people)] ^ (rng.random((people, bits)) < spread)
    return [np.packbits(base[rng.permutation(people)[:rows]] ^ (rng.random((rows, bits)) < p), axis=1)
            for p in (0.02, 0.05, 0.08, 0.1)]


def _same(a: tuple, b: tuple) -> bool:
    sims_a, (da_a, db_a), (ra_a, rb_a) = a
    sims_b, (da_b, db_b), (ra_b, rb_b) = b
    return all(np.array_equal(x, y) for x, y in zip((sims_a, da_a, db_a, ra_a, rb_a), (sims_b, da_b, db_b, ra_b, rb_b),
                                                      strict=True))


@pytest.mark.parametrize("workers", [1, 2])
def test_raised_floor_round_is_the_exact_round_at_that_floor(workers: int) -> None:
    """A bounded comparison keeps exactly the pairs a plain round at its raised floor keeps (in
    anonlink's order), and they fit the bound; every solve at or above the floor (or, by comparing
    again, below it) is the fixed round's."""
    sets = _agencies(7, 500, 400)
    blocking = BlockingConfig()
    full = match_clks(sets, 0.55, blocking=blocking, workers=workers, keep_candidates=True)
    low = int((full.candidates[0] < 0.7).sum())
    bound = low // 4
    sink = FloorSink(0.55, 0.7, bound, 0.75)
    first = match_clks(sets, 0.55, blocking=blocking, workers=workers, keep_candidates=True, sink=sink)
    assert sink.raised and 0.55 < sink.floor < 0.75
    assert len(first.candidates[0]) <= bound
    plain = match_clks(sets, sink.floor, blocking=blocking, workers=workers, keep_candidates=True)
    assert _same(first.candidates, plain.candidates)
    for t in (0.6, sink.floor, 0.75):
        fresh = match_clks(sets, t, blocking=blocking, workers=1)
        solved = _solve_at(first, sets, t, sink, blocking, 1)
        assert [x.tolist() for x in solved.labels] == [x.tolist() for x in fresh.labels]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sink_handed_repeats_ends_where_one_handed_each_pair_once_does(workers: int) -> None:
    """Invariant: a comparison that hands its sink repeated pairs (no histogram: below REPEATS_BELOW)
    ends with the floor and the candidates of one that hands each pair once, whatever the bound: the
    floor rises (the comparison runs again, checked), or a bound that only the repeats pass raises
    nothing (again, checked), or nothing passes it (no second run)."""
    from coordinator.linkage.compare import REPEATS_BELOW, compare_datasets

    sets = _agencies(7, 500, 400)
    blocking = BlockingConfig()
    full = match_clks(sets, 0.55, blocking=blocking, workers=workers, keep_candidates=True)
    low = int((full.candidates[0] < 0.7).sum())
    found, *_ = compare_datasets(tuple(sets), 0.55, blocking, workers, None, None, repeats_below=REPEATS_BELOW)
    handed = sum(int((sims < 0.7).sum()) for sims in found.sims)
    assert handed > low  # the repeats pass a bound that the distinct pairs fit
    for bound in (low // 4, low, handed):
        checked = FloorSink(0.55, 0.7, bound, 0.75)
        once = match_clks(sets, 0.55, blocking=blocking, workers=workers, keep_candidates=True, sink=checked)
        repeated = FloorSink(0.55, 0.7, bound, 0.75)
        again = match_clks(sets, 0.55, blocking=blocking, workers=workers, keep_candidates=True, sink=repeated,
                           histogram_bins=None)
        assert repeated.floor == checked.floor and repeated.raised == (bound < low), bound
        assert again.candidates_distinct and _same(again.candidates, once.candidates), bound
        assert repeated.repeats == (bound >= handed), bound  # a restart compares every pair checked


def test_auto_round_under_the_bound_is_unchanged_and_a_bounded_one_calibrates_from_its_floor() -> None:
    """A round whose pairs below keep_all_from fit the bound is the unbounded round (same clusters,
    threshold, estimate and histogram); a bounded round's calibration starts at its raised floor, the
    threshold it chooses is at or above it, and its histogram is the exact one from that floor up."""
    sets = _agencies(7, 500, 400, spread=0.12)
    blocking = BlockingConfig()
    timings: list[dict[str, float]] = [{}, {}, {}]
    runs = [auto_match(sets, blocking=blocking, workers=1, bootstrap=0, prune_above=p, timings=t)
            for p, t in zip((None, 10**9, 1000), timings, strict=True)]
    (exact, exact_cal, _), (under, under_cal, _), (bounded, bounded_cal, _) = runs
    assert "floor_raised_to" not in timings[1]
    assert [x.tolist() for x in under.labels] == [x.tolist() for x in exact.labels]
    assert under_cal.threshold == exact_cal.threshold and under_cal.estimate == exact_cal.estimate
    assert under.histogram == exact.histogram
    floor = timings[2]["floor_raised_to"]
    assert timings[2]["floor_candidate_pairs"] < timings[0]["floor_candidate_pairs"]
    assert bounded_cal.floor == floor and bounded_cal.threshold >= floor
    # Counted from the raised floor up: the unbounded round's bins there, none below.
    assert bounded.histogram is not None and bounded.histogram.floor == floor
    first = int(np.ceil(floor * bounded.histogram.bins - 1e-9))
    assert bounded.histogram.counts[first:] == exact.histogram.counts[first:]
    assert not any(bounded.histogram.counts[:first])


def test_compiled_tally_bins_like_the_edge_search() -> None:
    """The compiled count of a batch puts every similarity at or above the floor in the bin the edge
    search (``_bins``) gives, exactly at and beside the edges too, and counts those below ``keep_all_from``."""
    from coordinator.linkage.floor_sink import _bins, _tally

    # Every edge, the doubles on either side of it, Dice values of 1024-bit encodings, and random values.
    dice = (2.0 * np.arange(0, 513)[:, None] / np.array([513.0, 700.0, 1024.0])).ravel()
    sims = np.concatenate([EDGES, np.nextafter(EDGES, 0.0), np.nextafter(EDGES, 2.0), dice,
                           np.random.default_rng(3).random(5000)])
    sims = sims[(sims >= 0) & (sims <= 1)]
    for floor in (0.0, 0.55, 0.7):
        counts = np.zeros(len(EDGES), dtype=np.int64)
        held, below = _tally(sims, floor, 0.7, EDGES, counts)
        above = sims[sims >= floor]
        assert held == len(above) and below == int(np.count_nonzero(above < 0.7))
        assert np.array_equal(counts, np.bincount(_bins(above), minlength=len(EDGES)))
