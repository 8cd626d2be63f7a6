"""Tests for coordinator.linkage.pair_split: each agency pair's one-to-one solve from one pass over the candidates."""

from __future__ import annotations

import numpy as np

from coordinator.linkage.auto import same_cluster_rows
from coordinator.linkage.match import select_candidates, solve_candidates
from coordinator.linkage.pair_split import AgencyPairs, pair_links
from tests.coordinator.test_greedy import _random_candidates


def test_pair_links_are_the_selected_solves_links() -> None:
    """Invariant: for every agency pair, the links equal (rows and order) those of solving that pair's selected
    candidates over every record of the round, repeated pairs and tied similarities included."""
    rng = np.random.default_rng(11)
    for trial in range(24):
        sizes = [int(x) for x in rng.integers(1, 60, int(rng.integers(2, 5)))]
        candidates = _random_candidates(rng, sizes, int(rng.integers(1, 6 * sum(sizes))), ties=trial % 2 == 0,
                                        within=False, repeats=trial % 3 == 0)
        grouped = AgencyPairs(candidates, len(sizes))
        for a in range(len(sizes)):
            for b in range(a + 1, len(sizes)):
                labels, _, _ = solve_candidates(select_candidates(candidates, datasets=(a, b)), sizes)
                expected = same_cluster_rows(labels[a], labels[b])
                got = pair_links(grouped, a, b, sizes[a], sizes[b])
                assert [x.tolist() for x in got] == [x.tolist() for x in expected], (trial, a, b)
                if trial % 3:  # no pair repeats: the adjacency-free solve gives the same links
                    got = pair_links(grouped, a, b, sizes[a], sizes[b], distinct=True)
                    assert [x.tolist() for x in got] == [x.tolist() for x in expected], (trial, a, b)


def test_agency_pairs_keep_candidate_order() -> None:
    """Invariant: a pair's positions are exactly the candidates between those agencies, in increasing order."""
    rng = np.random.default_rng(5)
    candidates = _random_candidates(rng, [30, 40, 50], 400, ties=True, within=False, repeats=False)
    _, (d_a, d_b), _ = candidates
    grouped = AgencyPairs(candidates, 3)
    for a in range(3):
        for b in range(3):
            assert grouped.positions_of(a, b).tolist() == np.flatnonzero((d_a == a) & (d_b == b)).tolist()


def test_the_prefix_at_a_threshold_is_the_selection_at_it() -> None:
    """Invariant: on candidates in anonlink's order, the prefix select_candidates takes at a threshold equals
    the pairs a mask at that threshold keeps, column by column, for thresholds on, between, above and below the
    values."""

    rng = np.random.default_rng(12)
    for trial in range(12):
        sizes = [int(x) for x in rng.integers(1, 40, 3)]
        candidates = _random_candidates(rng, sizes, int(rng.integers(0, 300)), ties=trial % 2 == 0,
                                        within=False, repeats=False)
        sims = candidates[0]
        for threshold in (0.0, 1.5, *sims[:: max(1, len(sims) // 5)].tolist(), *rng.random(4).tolist()):
            keep = sims >= threshold
            expected = sims[keep], (candidates[1][0][keep], candidates[1][1][keep]), \
                (candidates[2][0][keep], candidates[2][1][keep])
            got = select_candidates(candidates, threshold=threshold)
            assert [x.tolist() for x in (got[0], *got[1], *got[2])] == \
                [x.tolist() for x in (expected[0], *expected[1], *expected[2])]


def test_counted_same_label_rows_are_the_sorted_ones() -> None:
    """Invariant: counting dense labels gives the rows (and their order) that sorting and searching them gives,
    with labels missing on either side, repeated ones and empty sides; sparse or negative labels are left to sorting."""
    from coordinator.linkage.pair_split import same_label_rows
    from coordinator.linkage.pair_split import sorted_label_rows as by_sorting

    rng = np.random.default_rng(13)
    for trial in range(40):
        top = int(rng.integers(1, 80))
        labels_a = rng.integers(0, top, int(rng.integers(0, 60)))
        labels_b = rng.integers(0, top, int(rng.integers(0, 60)))
        got = same_label_rows(labels_a, labels_b)
        assert got is not None
        assert [x.tolist() for x in got] == [x.tolist() for x in by_sorting(labels_a, labels_b)], trial
        # Both against the definition: every equal-label pair, by row_a then row_b.
        pairs = [(i, j) for i in range(len(labels_a)) for j in range(len(labels_b)) if labels_a[i] == labels_b[j]]
        assert list(zip(*[x.tolist() for x in got], strict=True)) == pairs, trial
        assert all(x.dtype == np.int64 for x in got)
    assert same_label_rows(np.array([0, 5]), np.array([-1, 0])) is None
    assert same_label_rows(np.array([0]), np.array([10**12])) is None
    assert [x.tolist() for x in same_cluster_rows(np.array([7, 10**12]), np.array([10**12, -3, 7]))] == [[0, 1], [2, 0]]
