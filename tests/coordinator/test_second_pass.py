"""Tests for coordinator.linkage.second_pass: a denser blocking pass among the records the first left partnerless."""

from __future__ import annotations

import numpy as np

from coordinator.linkage.auto import auto_match
from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.capture import capture_by_score
from coordinator.linkage.match import match_clks
from coordinator.linkage.second_pass import (
    SECOND_PASS_BELOW,
    add_second_pass,
    choose_second_setting,
    partnerless,
    provisional_threshold,
    rematch_with_second_pass,
)
from coordinator.linkage.similarity import compute_dice

SPARSE = BlockingConfig(bits_per_band=14, bands=6)
DENSE = BlockingConfig(bits_per_band=8, bands=24)
FLOOR = 0.55


def _agencies(rows: int = 400, agencies: int = 3, flip: float = 0.12, seed: int = 0) -> list[np.ndarray]:
    """Each agency holds a random 70% of the same people, each copy with ``flip`` of its bits flipped."""
    rng = np.random.default_rng(seed)
    people = rng.random((rows, 1024)) < 0.3
    out = []
    for _ in range(agencies):
        held = people[np.sort(rng.choice(rows, int(rows * 0.7), replace=False))]
        out.append(np.packbits(held ^ (rng.random(held.shape) < flip), axis=1))
    return out


def _codes(candidates, sizes) -> np.ndarray:  # type: ignore[no-untyped-def]
    _, (d_a, d_b), (r_a, r_b) = candidates
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return (offsets[d_a.astype(np.int64)] + r_a) * offsets[-1] + offsets[d_b.astype(np.int64)] + r_b


def test_partnerless_rows_have_no_partner_in_the_other_agency() -> None:
    """Invariant: a row is partnerless for (a, b) exactly when no row of the other agency shares its cluster."""
    data = _agencies()
    labels = match_clks(data, FLOOR, blocking=SPARSE, workers=1).labels
    for (a, b), (rows_a, rows_b) in partnerless(labels).items():
        assert set(rows_a.tolist()) == {r for r, c in enumerate(labels[a].tolist()) if c not in set(labels[b].tolist())}
        assert set(rows_b.tolist()) == {r for r, c in enumerate(labels[b].tolist()) if c not in set(labels[a].tolist())}


def test_second_pass_adds_only_new_partnerless_pairs_at_their_dice_in_anonlink_order() -> None:
    """Invariant: the merged candidates hold every first-pass pair once plus new pairs between partnerless rows,
    each at or above the threshold with its exact Dice, sorted as anonlink's solver takes them."""
    data = _agencies()
    sizes = [len(d) for d in data]
    first = match_clks(data, FLOOR, blocking=SPARSE, workers=1, keep_candidates=True)
    merged, second = add_second_pass(data, first.labels, first.candidates, FLOOR, DENSE, workers=1)
    old, new = _codes(first.candidates, sizes), _codes(merged, sizes)
    assert len(np.unique(new)) == len(new) == len(old) + second.added and second.added > 0
    assert np.isin(old, new).all()
    sims, (d_a, d_b), (r_a, r_b) = merged
    assert (sims >= FLOOR).all() and (np.diff(sims) <= 0).all()
    added = ~np.isin(new, old)
    free = partnerless(first.labels)
    for s, a, b, ra, rb in zip(sims[added], d_a[added], d_b[added], r_a[added], r_b[added], strict=True):
        assert ra in free[(int(a), int(b))][0] and rb in free[(int(a), int(b))][1]
        assert s == compute_dice(data[a], data[b], np.array([ra]), np.array([rb]))[0]


def test_second_pass_recovers_links_the_sparse_pass_missed() -> None:
    """Invariant: with the second pass the round links more true pairs than the sparse pass alone, and the
    same inputs give the same clusters (deterministic)."""
    data = _agencies(seed=3)
    first = match_clks(data, FLOOR, blocking=SPARSE, workers=1, keep_candidates=True)
    budget = 10**9
    again, second = rematch_with_second_pass(data, first, SPARSE, budget, workers=1, check_threshold=False)
    repeat, _ = rematch_with_second_pass(data, first, SPARSE, budget, workers=2, check_threshold=False)
    assert second is not None and second.comparisons > 0
    assert again.stats.comparisons == first.stats.comparisons + second.comparisons
    assert again.stats.linked_records > first.stats.linked_records
    assert all((x == y).all() for x, y in zip(again.labels, repeat.labels, strict=True))


def test_setting_is_the_densest_that_fits_and_none_when_nothing_does() -> None:
    """Invariant: the chosen setting is denser than the first, its estimate fits and the next one's does not;
    with no budget there is no second pass."""
    data = _agencies()
    rows = partnerless(match_clks(data, FLOOR, blocking=SPARSE, workers=1).labels)
    ladder = ((14, 6), (12, 8), (10, 12), (8, 16), (6, 24))
    _, everything = choose_second_setting(data, rows, SPARSE, 10**12, ladder=ladder)
    estimates = list(everything.values())
    assert list(everything) == ["12x8", "10x12", "8x16", "6x24"] and estimates == sorted(estimates)
    config, _ = choose_second_setting(data, rows, SPARSE, (estimates[1] + estimates[2]) / 2, ladder=ladder)
    assert config is not None and (config.bits_per_band, config.bands) == (10, 12)
    assert choose_second_setting(data, rows, SPARSE, 0, ladder=ladder)[0] is None
    first = match_clks(data, FLOOR, blocking=SPARSE, workers=1, keep_candidates=True)
    same, none = rematch_with_second_pass(data, first, BlockingConfig(bits_per_band=15, bands=256), 10**12,
                                          check_threshold=False)
    assert none is None and same is first  # nothing on the ladder is denser than its densest


def test_capture_counts_what_the_second_pass_finds() -> None:
    """Invariant: the capture rates with the second pass are at least those of the first pass alone, and higher
    somewhere (it finds pairs the sparse setting misses)."""
    data = _agencies(seed=4)
    first = match_clks(data, FLOOR, blocking=SPARSE, workers=1, keep_candidates=True)
    _, second = add_second_pass(data, first.labels, first.candidates, FLOOR, DENSE, workers=1)
    alone = capture_by_score(data, FLOOR, SPARSE, workers=1)
    both = capture_by_score(data, FLOOR, SPARSE, workers=1, second=second)
    assert (both >= alone - 1e-12).all() and (both > alone).any()


def test_auto_match_without_a_budget_makes_no_second_pass() -> None:
    """Invariant: ``second_budget=None`` (fixed-threshold and all-pairs rounds) compares only the first pass."""
    data = _agencies(seed=5)
    plain, _, _ = auto_match(data, blocking=SPARSE, workers=1, bootstrap=0)
    alone = match_clks(data, FLOOR, blocking=SPARSE, workers=1)
    assert plain.stats.comparisons == alone.stats.comparisons
    with_pass, _, _ = auto_match(data, blocking=SPARSE, workers=1, bootstrap=0, second_budget=10**12)
    assert with_pass.stats.comparisons > plain.stats.comparisons


def test_no_second_pass_when_the_first_pass_threshold_is_high() -> None:
    """Invariant: a provisional threshold (fitted on the first pass, within the agreed bounds) at or above
    SECOND_PASS_BELOW means no second pass, whatever the budget; a low one means one."""
    data = _agencies(seed=3)
    first = match_clks(data, FLOOR, blocking=SPARSE, workers=1, keep_candidates=True)
    high = (SECOND_PASS_BELOW + 0.05, 1.0)
    assert provisional_threshold(data, first, SPARSE, high, workers=1) >= SECOND_PASS_BELOW
    assert rematch_with_second_pass(data, first, SPARSE, 10**12, workers=1, bounds=high) == (first, None)
    assert provisional_threshold(data, first, SPARSE, workers=1) < SECOND_PASS_BELOW
    assert rematch_with_second_pass(data, first, SPARSE, 10**12, workers=1)[1] is not None
