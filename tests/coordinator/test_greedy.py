"""The compiled greedy solver gives exactly anonlink's groups: random candidate sets and real encodings."""

from __future__ import annotations

import numpy as np
import pytest
from anonlink.solving import greedy_solve

from coordinator.linkage.candidate_batches import sorted_batches, sorted_distinct_batches
from coordinator.linkage.candidate_order import candidate_order, sorted_candidates
from coordinator.linkage.greedy import _state_words, greedy_roots, greedy_solve_groups
from coordinator.linkage.match import match_clks, solve_candidates


def _partition(groups: tuple) -> set[frozenset[tuple[int, int]]]:
    return {frozenset((int(d), int(r)) for d, r in g) for g in groups}


def _without_dataset_hint(candidates: tuple, sizes: list[int]) -> set[frozenset[tuple[int, int]]]:
    """The solver's partition when it is not told each record's dataset (no refusal without looking)."""
    _, (d_a, d_b), (r_a, r_b) = candidates
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    root = greedy_roots(offsets[d_a] + r_a, offsets[d_b] + r_b, int(offsets[-1]))
    dataset = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    groups: dict[int, set[tuple[int, int]]] = {}
    for node in np.flatnonzero(root >= 0).tolist():
        groups.setdefault(int(root[node]), set()).add((int(dataset[node]), int(node - offsets[dataset[node]])))
    return {frozenset(g) for g in groups.values()}


def _random_candidates(rng: np.random.Generator, sizes: list[int], pairs: int, *, ties: bool, within: bool,
                       repeats: bool) -> tuple:
    """Planted people (most of their cross pairs) plus random pairs, in anonlink's order (similarity descending)."""
    d = len(sizes)
    picked: list[np.ndarray] = []
    for _ in range(min(sizes)):  # a person's records in 2..d datasets; each cross pair kept with p 0.85
        where = np.sort(rng.choice(d, int(rng.integers(2, d + 1)), replace=False))
        rows = [int(rng.integers(0, sizes[k])) for k in where]
        picked.extend(np.array([where[i], rows[i], where[j], rows[j]])
                      for i in range(len(where)) for j in range(i + 1, len(where)) if rng.random() < 0.85)
    d_a = rng.integers(0, d, pairs)
    d_b = rng.integers(0, d, pairs)
    if not within:  # cross-dataset pairs only, lower dataset first (as pplink's rounds make them)
        d_b = np.where(d_a == d_b, (d_a + 1 + rng.integers(0, d - 1, pairs)) % d, d_b)
        d_a, d_b = np.minimum(d_a, d_b), np.maximum(d_a, d_b)
    r_a = rng.integers(0, np.asarray(sizes)[d_a])
    r_b = rng.integers(0, np.asarray(sizes)[d_b])
    codes = np.concatenate([np.array(picked).reshape(-1, 4), np.stack([d_a, r_a, d_b, r_b], axis=1)])
    # People's pairs score high, random pairs mostly low, with some overlap (and exact ties when asked).
    high = np.arange(len(codes)) < len(picked)
    sims = np.where(high, 0.7 + 0.3 * rng.random(len(codes)), 0.8 * rng.random(len(codes)))
    if ties:
        sims = np.round(sims * 5) / 5
    if not repeats:
        codes, first = np.unique(codes, axis=0, return_index=True)
        sims = sims[first]
    d_a, r_a, d_b, r_b = codes.T
    order = np.lexsort((r_b, r_a, d_b, d_a, -sims))
    cast = [x[order].astype(np.uint32) for x in (d_a, d_b, r_a, r_b)]
    return sims[order], (cast[0], cast[1]), (cast[2], cast[3])


def test_random_candidates_give_anonlinks_groups() -> None:
    """Ties, 2-5 datasets, multi-party merges and refused merges: the same partition as anonlink, every time."""
    multi_party = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        datasets = 2 + seed % 4
        sizes = [int(x) for x in rng.integers(5, 60, datasets)]
        pairs = int(rng.integers(10, 2 * sum(sizes)))
        candidates = _random_candidates(rng, sizes, pairs, ties=seed % 2 == 0, within=False, repeats=False)
        expected = _partition(greedy_solve(candidates))
        assert _partition(greedy_solve_groups(candidates, sizes)) == expected, seed
        assert _without_dataset_hint(candidates, sizes) == expected, seed
        multi_party += any(len(g) > 2 for g in expected)
    assert multi_party > 150  # groups of three or more records were formed (and checked) in most sets


def test_repeated_pairs_and_pairs_within_a_dataset_are_counted_as_anonlink_counts_them() -> None:
    """A pair given twice counts twice toward a merge, and pairs inside one dataset are edges like any other."""
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        sizes = [int(x) for x in rng.integers(3, 15, 2 + seed % 3)]
        candidates = _random_candidates(rng, sizes, int(rng.integers(5, 4 * sum(sizes))), ties=True, within=True,
                                        repeats=True)
        expected = _partition(greedy_solve(candidates))
        assert _partition(greedy_solve_groups(candidates, sizes)) == expected, seed
        assert _without_dataset_hint(candidates, sizes) == expected, seed


def test_distinct_pairs_solved_without_adjacency_give_anonlinks_groups() -> None:
    """Invariant: told the pairs are distinct, the solver (its adjacency-free path) gives anonlink's groups and
    exactly the roots of its general path, on random sets with ties, 2-6 parties, either spelling of each pair."""
    solved_fast = 0
    for seed in range(300):
        rng = np.random.default_rng(2000 + seed)
        datasets = 2 + seed % 5
        sizes = [int(x) for x in rng.integers(5, 60, datasets)]
        candidates = _random_candidates(rng, sizes, int(rng.integers(10, 3 * sum(sizes))), ties=seed % 2 == 0,
                                        within=False, repeats=False)
        expected = _partition(greedy_solve(candidates))
        _, (d_a, d_b), (r_a, r_b) = candidates
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        u, v = offsets[d_a] + r_a, offsets[d_b] + r_b
        flip = rng.random(len(u)) < 0.3 * (seed % 2)  # some pairs spelt the other way round
        u, v = np.where(flip, v, u), np.where(flip, u, v)
        party = np.repeat(np.arange(datasets), sizes)
        general = greedy_roots(u, v, int(offsets[-1]), party)
        fast = greedy_roots(u, v, int(offsets[-1]), party, distinct=True)
        assert fast.tolist() == general.tolist(), seed
        labels, _, _ = solve_candidates(candidates, sizes, distinct=True)
        assert [x.tolist() for x in labels] == [x.tolist() for x in _label(greedy_solve(candidates), sizes)[0]]
        groups: dict[int, set[tuple[int, int]]] = {}
        for node in np.flatnonzero(fast >= 0).tolist():
            d = int(np.searchsorted(offsets, node, side="right") - 1)
            groups.setdefault(int(fast[node]), set()).add((d, node - int(offsets[d])))
        assert {frozenset(g) for g in groups.values()} == expected, seed
        solved_fast += any(len(g) > 2 for g in expected)
    assert solved_fast > 150


def test_distinct_solve_with_wide_node_words_gives_the_general_paths_groups() -> None:
    """Invariant: where group ids and parties overflow 4-byte node words (many parties, or many nodes), the
    adjacency-free solve's 8-byte words give the general path's roots, as the 4-byte words do below that."""
    assert _state_words(400_000, 4)[0].dtype == np.int32  # a 4 x 100k round: the narrow words
    assert _state_words(2**27, 4)[0].dtype == np.int64
    wide = 0
    for seed in range(40):
        rng = np.random.default_rng(5000 + seed)
        datasets = 25 + seed % 6  # 25-30 parties and 75+ nodes: 7 + 25 bits, 8-byte words
        sizes = [int(x) for x in rng.integers(3, 12, datasets)]
        candidates = _random_candidates(rng, sizes, int(rng.integers(10, 3 * sum(sizes))), ties=seed % 2 == 0,
                                        within=False, repeats=False)
        _, (d_a, d_b), (r_a, r_b) = candidates
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        u, v = offsets[d_a] + r_a, offsets[d_b] + r_b
        party = np.repeat(np.arange(datasets), sizes)
        wide += _state_words(int(offsets[-1]), datasets)[0].dtype == np.int64
        general = greedy_roots(u, v, int(offsets[-1]), party)
        assert greedy_roots(u, v, int(offsets[-1]), party, distinct=True).tolist() == general.tolist(), seed
        labels, _, _ = solve_candidates(candidates, sizes, distinct=True)
        assert [x.tolist() for x in labels] == [x.tolist() for x in _label(greedy_solve(candidates), sizes)[0]], seed
    assert wide == 40


def test_distinct_is_not_trusted_where_it_does_not_apply() -> None:
    """Pairs within one party (or no parties) take the general path even when said to be distinct."""
    u, v = np.array([0, 2, 1]), np.array([1, 3, 2])
    for party in (None, np.array([0, 0, 1, 1])):
        assert greedy_roots(u, v, 4, party, distinct=True).tolist() == greedy_roots(u, v, 4, party).tolist()


def test_an_edge_to_a_group_of_two_leaves_the_record_waiting_until_every_pair_is_seen() -> None:
    """Node 2 meets group {0, 1} through 0 only (no merge), then through 1 (merge): anonlink's rule."""
    assert greedy_roots(np.array([0, 0]), np.array([1, 2]), 3).tolist() == [0, 0, -1]
    assert greedy_roots(np.array([0, 0, 1]), np.array([1, 2, 2]), 3).tolist() == [0, 0, 0]
    assert greedy_roots(np.zeros(0, np.int64), np.zeros(0, np.int64), 2).tolist() == [-1, -1]


def _label(groups, sizes: list[int]) -> tuple[tuple[np.ndarray, ...], int]:  # type: ignore[no-untyped-def]
    """Cluster index of every record from anonlink's groups, numbered by their first (dataset, row) member.

    The reference labelling: :func:`solve_candidates` numbers its clusters the same way.
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    root = np.arange(offsets[-1], dtype=np.int64)
    if groups:
        lengths = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        flat = np.array([pair for group in groups for pair in group], dtype=np.int64).reshape(-1, 2)
        members = offsets[flat[:, 0]] + flat[:, 1]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        root[members] = np.repeat(np.minimum.reduceat(members, starts), lengths)
    _, labels = np.unique(root, return_inverse=True)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    return tuple(labels[offsets[d] : offsets[d + 1]] for d in range(len(sizes))), n_clusters


def test_real_encodings_at_a_low_floor_give_anonlinks_clusters() -> None:
    """Four agencies' noisy copies at floor 0.5 (dense, every kind of merge): the rounds' labels equal anonlink's."""
    rng = np.random.default_rng(3)
    base = rng.random((500, 1024)) < 0.25
    sets = [np.packbits(base[rng.permutation(500)[:400]] ^ (rng.random((400, 1024)) < p), axis=1)
            for p in (0.02, 0.05, 0.08, 0.1)]
    first = match_clks(sets, 0.5, blocking=None, workers=1, keep_candidates=True)
    assert first.candidates is not None and len(first.candidates[0]) > 1000
    labels, n_clusters, linked = solve_candidates(first.candidates, [400] * 4)
    groups = greedy_solve(first.candidates)
    expected, expected_clusters = _label(groups, [400] * 4)
    assert [x.tolist() for x in labels] == [x.tolist() for x in expected]
    assert (n_clusters, linked) == (expected_clusters, sum(len(g) for g in groups))
    # The round's sort found its pairs distinct: its own solve took the adjacency-free path, to the same labels.
    assert first.candidates_distinct
    assert [x.tolist() for x in first.labels] == [x.tolist() for x in expected]
    blocked = match_clks(sets, 0.5, workers=2, keep_candidates=True)
    assert blocked.candidates_distinct and blocked.candidates is not None
    assert [x.tolist() for x in blocked.labels] == [x.tolist() for x in solve_candidates(blocked.candidates,
                                                                                         [400] * 4)[0]]


def _mixed_candidates(rng: np.random.Generator, trial: int, most: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Similarities and ``[d_a, d_b, r_a, r_b]`` of up to ``most`` pairs, the kind of values cycling with ``trial``.

    Few distinct values (ties), Dice-like fractions, arbitrary floats, or near-equal values beside far
    ones (they share a rank of the packed sort: long runs of tied ranks with different values);
    repeated pairs too.
    """
    n = int(rng.integers(1, most))
    near = np.where(rng.random(n) < 0.01, rng.random(n), 0.5 + 1e-12 * rng.integers(0, 30, n))
    sims = [rng.choice([0.6, 0.75, 1.0], n), 2 * rng.integers(0, 200, n) / rng.integers(400, 409, n),
            rng.random(n), near][trial % 4]
    return sims, [rng.integers(0, 3, n), rng.integers(0, 5, n), rng.integers(0, 50, n),
                  rng.integers(0, 1 + trial * 1000, n)]


def test_candidate_order_is_lexsorts_order() -> None:
    """Similarity descending, then (dataset_a, dataset_b, row_a, row_b): exactly np.lexsort's permutation."""
    rng = np.random.default_rng(7)
    for trial in range(30):
        sims, (d_a, d_b, r_a, r_b) = _mixed_candidates(rng, trial, 5000)
        expected = np.lexsort((r_b, r_a, d_b, d_a, -sims))
        assert candidate_order(sims, d_a, d_b, r_a, r_b).tolist() == expected.tolist()
    wide = np.array([2**40, 1]), np.array([2**40, 3])  # indices too wide to pack: np.lexsort itself
    assert candidate_order(np.array([0.5, 0.5]), np.zeros(2, int), np.ones(2, int), *wide).tolist() == [1, 0]


def test_sorted_candidates_are_the_columns_in_lexsorts_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: each sorted column is the column gathered through np.lexsort's permutation, dtype kept, whether
    similarity ranks tie across different values (arbitrary floats, values closer than the rank's step) or not,
    from joined columns or from batches, sorted on one thread or as two halves merged."""
    from coordinator.linkage import candidate_batches as module

    monkeypatch.setattr(module, "_PARALLEL_FROM", 64)  # the halves path on small inputs too
    rng = np.random.default_rng(8)
    for trial in range(40):
        sims, columns = _mixed_candidates(rng, trial, 4000)
        if trial % 2:
            columns = [c.astype(np.uint32) for c in columns]
        expected = np.lexsort((columns[3], columns[2], columns[1], columns[0], -sims))
        copies = [sims.copy(), *(c.copy() for c in columns)]
        cuts = np.sort(rng.integers(0, len(sims), trial % 5))  # batches, some of them empty
        batches = [list(np.split(c, cuts)) for c in (sims, *columns)]
        again = [list(np.split(c, cuts)) for c in (sims, *columns)]
        for got in (sorted_candidates(sims, *columns), sorted_candidates(*copies, overwrite=True),
                    sorted_batches(*batches), sorted_batches(*again, workers=2)):
            for value, column in zip(got, (sims, *columns), strict=True):
                assert value.dtype == column.dtype and value.tolist() == column[expected].tolist()
        assert not any(batches)  # the batches moved out


def test_sorted_batches_say_whether_pairs_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: distinct is True exactly when no pair repeats (checked on one thread and as two halves), and
    False when a pair repeats with its own or another similarity, or when some pair is spelt second dataset first."""
    from coordinator.linkage import candidate_batches as module

    monkeypatch.setattr(module, "_PARALLEL_FROM", 64)
    rng = np.random.default_rng(9)
    for trial in range(60):
        sizes = [int(x) for x in rng.integers(20, 300, 2 + trial % 4)]
        candidates = _random_candidates(rng, sizes, int(rng.integers(50, 4 * sum(sizes))), ties=trial % 2 == 0,
                                        within=False, repeats=False)
        sims, (d_a, d_b), (r_a, r_b) = candidates
        columns = [sims, d_a, d_b, r_a, r_b]
        change = trial % 3  # 0: as they are, 1: one pair again, 2: one pair the other way round
        if change == 1:
            k = int(rng.integers(0, len(sims)))
            again = sims[k] if trial % 2 else float(rng.random())
            columns = [np.append(c, again if j == 0 else c[k]) for j, c in enumerate(columns)]
        elif change == 2:
            k = int(rng.integers(0, len(sims)))
            columns[1], columns[2] = columns[1].copy(), columns[2].copy()
            columns[1][k], columns[2][k] = d_b[k], d_a[k]
            columns[3], columns[4] = columns[3].copy(), columns[4].copy()
            columns[3][k], columns[4][k] = r_b[k], r_a[k]
        order = rng.permutation(len(columns[0]))  # the batches come in any order
        columns = [c[order] for c in columns]
        cuts = np.sort(rng.integers(0, len(columns[0]), trial % 6))
        expected = sorted_batches(*[list(np.split(c, cuts)) for c in columns])
        for workers in (1, 2):
            got, distinct = sorted_distinct_batches(*[list(np.split(c, cuts)) for c in columns], workers=workers)
            assert distinct == (change == 0), (trial, workers)
            assert all(x.tolist() == y.tolist() for x, y in zip(got, expected, strict=True))


def test_sorted_batches_keep_each_similaritys_bits() -> None:
    """Invariant: 0.0 and -0.0 share a rank but not their bits: the similarities come back as given, in order."""
    sims = np.array([0.0, -0.0, 0.5, -0.0])
    columns = [np.zeros(4, np.uint32), np.ones(4, np.uint32), np.array([3, 1, 2, 0], np.uint32), np.zeros(4, np.uint32)]
    expected = np.lexsort((columns[3], columns[2], columns[1], columns[0], -sims))
    for workers in (1, 2):
        got, distinct = sorted_distinct_batches([sims.copy()], *([c.copy()] for c in columns), workers=workers)
        assert np.signbit(got[0]).tolist() == np.signbit(sims[expected]).tolist() and distinct
        assert got[3].tolist() == columns[2][expected].tolist()


def test_sorted_batches_drop_repeated_pairs_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: with drop_repeats, pairs given several times (each time with its one similarity, as
    a comparison that keeps repeats gives them) come back once, in the order of the distinct pairs'
    sort, and known distinct; a pair spelt second dataset first keeps every repeat, not known distinct.
    Similarities of every kind, near-equal ones included (ranks shared by different values)."""
    from coordinator.linkage import candidate_batches as module

    monkeypatch.setattr(module, "_PARALLEL_FROM", 64)
    rng = np.random.default_rng(12)
    for trial in range(40):
        sims, _ = _mixed_candidates(rng, trial, 3000)
        n = len(sims)
        d_a = rng.integers(0, 3, n)
        d_b = d_a + rng.integers(1, 3, n)
        r_a, r_b = rng.integers(0, 40, n), rng.integers(0, 40 + trial * 500, n)
        _, first = np.unique(np.stack([d_a, d_b, r_a, r_b]), axis=1, return_index=True)
        distinct_columns = [c[np.sort(first)] for c in (sims, d_a, d_b, r_a, r_b)]
        again = rng.integers(0, len(first), int(rng.integers(1, 3 * len(first) + 1)))  # repeats, some many times
        columns = [np.concatenate([c, c[again]]) for c in distinct_columns]
        if trial % 5 == 4:  # one repeat spelt the other way round
            k = len(first) + int(rng.integers(0, len(again)))
            columns[1], columns[2], columns[3], columns[4] = (c.copy() for c in columns[1:])
            columns[1][k], columns[2][k], columns[3][k], columns[4][k] = (
                columns[2][k], columns[1][k], columns[4][k], columns[3][k])
        order = rng.permutation(len(columns[0]))
        columns = [c[order] for c in columns]
        cuts = np.sort(rng.integers(0, len(columns[0]), trial % 6))
        if trial % 5 == 4:
            expected = sorted_batches(*[list(np.split(c, cuts)) for c in columns])
        else:
            expected = sorted_batches(*[[c.copy()] for c in distinct_columns])
        for workers in (1, 2):
            got, distinct = sorted_distinct_batches(*[list(np.split(c, cuts)) for c in columns], workers=workers,
                                                    drop_repeats=True)
            assert distinct == (trial % 5 != 4), (trial, workers)
            assert all(x.tolist() == y.tolist() for x, y in zip(got, expected, strict=True)), (trial, workers)
