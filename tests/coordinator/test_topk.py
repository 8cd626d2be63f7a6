"""The bounded floor of an automatic round: the streamed top-k and the pruned round's final clusters."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage.auto import auto_match
from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.match import match_clks
from coordinator.linkage.topk import PairSink, top_k_pairs


def _pairs(seed: int, sizes: list[int], n: int) -> tuple[np.ndarray, ...]:
    """Random distinct cross-dataset pairs with coarse similarities (many ties) below 0.7."""
    rng = np.random.default_rng(seed)
    d_a = rng.integers(0, len(sizes) - 1, n)
    d_b = d_a + 1 + (rng.integers(0, 2**31, n) % (len(sizes) - 1 - d_a))
    rows_a = rng.integers(0, np.array(sizes)[d_a])
    rows_b = rng.integers(0, np.array(sizes)[d_b])
    key = np.unique(np.stack([d_a, d_b, rows_a, rows_b], axis=1), axis=0)
    sims = rng.integers(55, 70, len(key)) / 100
    return (*(key[:, j].astype(np.uint32) for j in range(4)), sims)


@pytest.mark.parametrize(("seed", "k"), [(0, 1), (1, 2), (2, 3)])
def test_streamed_top_k_keeps_exactly_each_records_best_k(seed: int, k: int) -> None:
    """Streamed in batches of any order, the sink keeps exactly the pairs among either record's best k
    per other agency (ties by the other record's number), each once: the sorting reference's set."""
    sizes = [40, 30, 50]
    d_a, d_b, r_a, r_b, sims = _pairs(seed, sizes, 3000)
    expected = top_k_pairs(sizes, d_a, d_b, r_a, r_b, sims, k)
    assert 0 < expected.sum() < len(sims)
    sink = PairSink(sizes, keep_all_from=0.7, k=k, engage_above=100)
    order = np.random.default_rng(seed).permutation(len(sims))
    for batch in np.array_split(order, 17):
        kept = sink.take(d_a[batch], d_b[batch], r_a[batch], r_b[batch], sims[batch])
        assert len(kept[4]) == 0  # every pair is below the bound
    assert sink.pruned
    (got_a, got_b, got_ra, got_rb, got_s), = sink.drain()
    got = sorted(zip(got_a.tolist(), got_b.tolist(), got_ra.tolist(), got_rb.tolist(), got_s.tolist(), strict=True))
    want = sorted(zip(*(x[expected].tolist() for x in (d_a, d_b, r_a, r_b, sims)), strict=True))
    assert got == want


def test_sink_keeps_every_pair_until_it_engages_and_all_above_the_bound() -> None:
    """Below the engagement count nothing is dropped; pairs at or above the bound are always handed back."""
    sizes = [40, 30, 50]
    d_a, d_b, r_a, r_b, sims = _pairs(3, sizes, 500)
    sims = sims.copy()
    sims[::5] = 0.9
    sink = PairSink(sizes, keep_all_from=0.7, k=1, engage_above=10_000)
    high = sink.take(d_a, d_b, r_a, r_b, sims)
    assert np.array_equal(high[4], sims[sims >= 0.7])
    held = sink.drain()
    assert not sink.pruned and sum(len(b[4]) for b in held) == int((sims < 0.7).sum())


def _agencies(seed: int, people: int, rows: int, bits: int = 1024, spread: float = 0.08) -> list[np.ndarray]:
    """Four agencies' records of people drawn around a few prototypes: many strangers score 0.55-0.7."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((people // 20, bits)) < 0.25
    base = prototypes[rng.integers(0, len(prototypes), people)] ^ (rng.random((people, bits)) < spread)
    return [np.packbits(base[rng.permutation(people)[:rows]] ^ (rng.random((rows, bits)) < p), axis=1)
            for p in (0.02, 0.05, 0.08, 0.1)]


def test_pruned_floor_solves_every_threshold_as_a_fixed_round() -> None:
    """With the floor pruned below the bound, the solve at t is a fixed round at t: above the bound
    by filtering the kept pairs (all kept there), below it by a second comparison pass."""
    from coordinator.linkage.auto import _solve_at

    sets = _agencies(7, 500, 400)
    blocking = BlockingConfig()
    sink = PairSink([len(s) for s in sets], keep_all_from=0.7, k=2, engage_above=0)
    first = match_clks(sets, 0.55, blocking=blocking, workers=1, keep_candidates=True, sink=sink)
    full = match_clks(sets, 0.55, blocking=blocking, workers=1)
    assert sink.pruned and first.stats.candidate_pairs < full.stats.candidate_pairs
    for t in (0.6, 0.7, 0.8):
        fresh = match_clks(sets, t, blocking=blocking, workers=1)
        solved = _solve_at(first, sets, t, sink, blocking, 1)
        assert [x.tolist() for x in solved.labels] == [x.tolist() for x in fresh.labels]
        assert solved.stats.candidate_pairs == fresh.stats.candidate_pairs


def test_pruned_round_matches_the_exact_round_on_clear_data() -> None:
    """On better-separated data the pruned floor loses no link a one-to-one solve would take: the
    round chooses the same threshold and hands out the same clusters as the unpruned round."""
    sets = _agencies(7, 500, 400, spread=0.12)
    blocking = BlockingConfig()
    timings: list[dict[str, float]] = [{}, {}]
    runs = [auto_match(sets, blocking=blocking, workers=1, bootstrap=0, prune_above=p, timings=t)
            for p, t in zip((0, None), timings, strict=True)]
    (pruned, pruned_calibration, _), (exact, exact_calibration, _) = runs
    assert timings[0]["floor_candidate_pairs"] < timings[1]["floor_candidate_pairs"]  # it did prune
    assert pruned_calibration.threshold == exact_calibration.threshold
    assert [x.tolist() for x in pruned.labels] == [x.tolist() for x in exact.labels]
