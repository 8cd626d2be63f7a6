"""After the solve: an agency's own duplicates join their cluster; split clusters of one person join."""

from __future__ import annotations

import numpy as np

from coordinator.linkage.duplicates import attach_duplicates, relabel
from coordinator.linkage.merge import merge_split_clusters


def _bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random((n, 512)) < 0.3


def _flip(rng: np.random.Generator, bits: np.ndarray, p: float) -> np.ndarray:
    return bits ^ (rng.random(bits.shape) < p)


def test_relabel_numbers_clusters_by_first_member() -> None:
    """Labels become 0..n-1 in order of first (dataset, row) appearance; equal labels stay equal."""
    labels, n = relabel([np.array([7, 7, 3]), np.array([3, 9])])
    assert [x.tolist() for x in labels] == [[0, 0, 1], [1, 2]] and n == 3


def test_a_near_identical_singleton_joins_its_records_cluster_and_a_stranger_does_not() -> None:
    """Agency 0 holds person 0 twice (a near copy) and a stranger: only the copy is attached."""
    rng = np.random.default_rng(1)
    people = _bits(rng, 3)
    own = np.packbits(np.stack([people[0], _flip(rng, people[0], 0.01), people[1]]), axis=1)
    other = np.packbits(np.stack([_flip(rng, people[0], 0.02), people[2]]), axis=1)
    labels = [np.array([0, 1, 2]), np.array([0, 3])]  # the solve linked (0,0)-(1,0) only
    new, n, attached = attach_duplicates([own, other], labels, 0.8, blocking=None, workers=1)
    assert attached == 1
    assert new[0][0] == new[0][1] == new[1][0]
    assert len({new[0][2], new[1][1], new[0][0]}) == 3 and n == 3


def test_a_twin_is_not_attached_to_its_twins_cluster() -> None:
    """A record agreeing with the cluster's own-agency record only in part (a twin) stays alone."""
    rng = np.random.default_rng(2)
    person = _bits(rng, 1)[0]
    twin = person.copy()
    twin[:150] = _bits(rng, 1)[0][:150]  # a different given name: part of the bits differ
    own = np.packbits(np.stack([person, twin]), axis=1)
    other = np.packbits(np.stack([_flip(rng, person, 0.01)]), axis=1)
    new, _, attached = attach_duplicates([own, other], [np.array([0, 1]), np.array([0])], 0.6, blocking=None,
                                         workers=1)
    assert attached == 0 and new[0][0] != new[0][1]


def test_one_persons_split_cluster_joins_but_siblings_clusters_do_not() -> None:
    """Person P at four agencies split 2+2 joins (three of four cross pairs agree); two siblings'
    clusters, linked by one middling pairwise link, stay apart."""
    rng = np.random.default_rng(3)
    p = _bits(rng, 1)[0]
    sib_a = _bits(rng, 1)[0]
    sib_b = sib_a.copy()
    sib_b[:200] = _bits(rng, 1)[0][:200]
    records = [np.stack([_flip(rng, p, 0.01), sib_a]), np.stack([_flip(rng, p, 0.01), _flip(rng, sib_a, 0.01)]),
               np.stack([_flip(rng, p, 0.01), sib_b]), np.stack([_flip(rng, p, 0.01), _flip(rng, sib_b, 0.01)])]
    datasets = [np.packbits(r, axis=1) for r in records]
    labels = [np.array([0, 2]), np.array([0, 2]), np.array([1, 3]), np.array([1, 3])]
    links = {(0, 2): (np.array([0, 1]), np.array([0, 1]), np.array([0.95, 0.7])),
             (1, 3): (np.array([0]), np.array([0]), np.array([0.95]))}
    new, n, joins = merge_split_clusters(datasets, labels, links, 0.6)
    assert joins == 1 and n == 3
    assert len({lab[0] for lab in new}) == 1
    assert new[0][1] == new[1][1] != new[2][1] == new[3][1]


def test_clusters_sharing_an_agency_join_only_through_that_agencys_own_duplicates() -> None:
    """Person P held twice by agency 0, each copy linked elsewhere ({0a, 1} and {0b, 2}): the clusters
    join because 0a and 0b are near copies; two different people of agency 0 never share a cluster."""
    rng = np.random.default_rng(4)
    p, q = _bits(rng, 2)
    own = np.packbits(np.stack([_flip(rng, p, 0.005), _flip(rng, p, 0.005), q]), axis=1)
    one = np.packbits(np.stack([_flip(rng, p, 0.01), _flip(rng, q, 0.01)]), axis=1)
    two = np.packbits(np.stack([_flip(rng, p, 0.01), _flip(rng, q, 0.01)]), axis=1)
    labels = [np.array([0, 1, 2]), np.array([0, 2]), np.array([1, 3])]
    links = {(0, 2): (np.array([0]), np.array([0]), np.array([0.9])),
             (1, 2): (np.array([0, 1]), np.array([0, 1]), np.array([0.9, 0.9]))}
    new, _, joins = merge_split_clusters([own, one, two], labels, links, 0.7)
    assert joins == 2
    assert new[0][0] == new[0][1] == new[1][0] == new[2][0]
    assert new[0][2] == new[1][1] == new[2][1] != new[0][0]
    _, _, refused = merge_split_clusters([own, one, two], labels, links, 0.7, duplicate_similarity=None)
    assert refused == 1  # only q's clusters {0c, 1b} and {2b} join without the duplicate rule


def test_duplicates_found_from_the_rounds_own_pairs_are_those_found_by_matching_again() -> None:
    """All pairs compared: the singletons' matches solved from the round's floor pairs attach exactly what
    matching the singletons again attaches (with LSH the round's pairs replace a second blocking)."""
    from coordinator.linkage.match import match_clks

    rng = np.random.default_rng(4)
    people = _bits(rng, 120)
    # Three agencies; agency 0 holds 20 people twice (near copies), so the solve leaves copies alone.
    own = np.packbits(np.concatenate([_flip(rng, people[:80], 0.02), _flip(rng, people[:20], 0.01)]), axis=1)
    others = [np.packbits(_flip(rng, people[rng.permutation(120)[:90]], 0.04), axis=1) for _ in range(2)]
    datasets = [own, *others]
    first = match_clks(datasets, 0.55, blocking=None, workers=1, keep_candidates=True)
    solved = match_clks(datasets, 0.7, blocking=None, workers=1)
    again = attach_duplicates(datasets, solved.labels, 0.7, blocking=None, workers=1)
    reused = attach_duplicates(datasets, solved.labels, 0.7, blocking=None, workers=1, candidates=first.candidates)
    assert again[2] >= 5  # copies were attached: the comparison is not vacuous
    assert [x.tolist() for x in reused[0]] == [x.tolist() for x in again[0]] and reused[1:] == again[1:]


def test_duplicates_matched_side_by_side_are_those_matched_one_after_another() -> None:
    """Invariant: with LSH blocking, the singletons' matches run on threads (one per match) attach exactly what
    they attach run in turn on one thread, with agencies on both sides of later attachments."""
    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.match import match_clks

    rng = np.random.default_rng(6)
    people = _bits(rng, 160)
    # Every agency holds some people twice (near copies): attachments in one agency are read by the next.
    datasets = [np.packbits(np.concatenate([_flip(rng, people[rng.permutation(160)[:110]], 0.04),
                                            _flip(rng, people[k * 15 : k * 15 + 15], 0.01)]), axis=1)
                for k in range(4)]
    blocking = BlockingConfig(bits_per_band=10, bands=12)
    solved = match_clks(datasets, 0.7, blocking=blocking, workers=1)
    alone = attach_duplicates(datasets, solved.labels, 0.7, blocking=blocking, workers=1)
    threaded = attach_duplicates(datasets, solved.labels, 0.7, blocking=blocking, workers=3)
    assert alone[2] >= 10  # copies were attached: the comparison is not vacuous
    assert [x.tolist() for x in threaded[0]] == [x.tolist() for x in alone[0]] and threaded[1:] == alone[1:]


def test_merge_scorer_and_roots_match_their_definitions() -> None:
    """Invariant: the compiled scorer gives compute_dice's value for every pair (any datasets, any rows), and the
    joins' roots are those of walking each parent chain."""
    from coordinator.linkage.match import compute_dice
    from coordinator.linkage.merge import _record_dice, _roots
    from coordinator.linkage.similarity import as_words, popcounts

    rng = np.random.default_rng(4)
    datasets = [np.packbits(rng.random((n, 128)) < 0.3, axis=1) for n in (5, 9, 7)]
    datasets[1][2] = 0  # an empty encoding: Dice 0 against another empty one
    datasets[2][0] = 0
    pairs = [((int(a), int(rng.integers(0, len(datasets[a])))), (int(b), int(rng.integers(0, len(datasets[b])))))
             for a, b in rng.integers(0, 3, (200, 2))] + [((1, 2), (2, 0))]
    expected = [float(compute_dice(datasets[x[0]], datasets[y[0]], np.array([x[1]]), np.array([y[1]]))[0])
                for x, y in pairs]
    words = tuple(np.ascontiguousarray(as_words(d)) for d in datasets)
    pops = tuple(popcounts(w) for w in words)
    assert [_record_dice(words, pops, x[0], x[1], y[0], y[1]) for x, y in pairs] == expected
    for trial in range(20):
        parent = [int(rng.integers(0, c + 1)) if rng.random() < 0.7 else c for c in range(int(rng.integers(1, 300)))]

        def walk(c: int, parent: list[int] = parent) -> int:
            while parent[c] != c:
                c = parent[c]
            return c

        assert _roots(np.array(parent)).tolist() == [walk(c) for c in range(len(parent))], trial


def _reference_joins(datasets: list[np.ndarray], labels: list[np.ndarray], links: dict, threshold: float,
                     share: float, margin: float | None, duplicate_similarity: float | None) -> list[np.ndarray]:
    """The join rules written plainly (members as lists, numpy's scores and means): what merge_split_clusters does."""
    from coordinator.linkage.match import compute_dice

    def dice(x: tuple[int, int], y: tuple[int, int]) -> float:
        return float(compute_dice(datasets[x[0]], datasets[y[0]], np.array([x[1]]), np.array([y[1]]))[0])

    n = int(max(int(x.max()) for x in labels)) + 1
    mask = np.zeros(n, dtype=np.int64)
    for d, lab in enumerate(labels):
        np.bitwise_or.at(mask, lab, 1 << d)
    members: dict[int, list[tuple[int, int]]] = {}
    for d, lab in enumerate(labels):
        for row, c in enumerate(lab.tolist()):
            members.setdefault(c, []).append((d, row))
    edges = []
    for (d_a, d_b), (rows_a, rows_b, scores) in links.items():
        for r_a, r_b, score in zip(rows_a.tolist(), rows_b.tolist(), scores.tolist(), strict=True):
            c_a, c_b = int(labels[d_a][r_a]), int(labels[d_b][r_b])
            if score >= threshold and c_a != c_b and (duplicate_similarity is not None or not mask[c_a] & mask[c_b]):
                edges.append((-score, c_a, c_b))
    parent = list(range(n))

    def root(c: int) -> int:
        while parent[c] != c:
            c = parent[c]
        return c

    for _, a, b in sorted(edges):
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        pairs = [(x, y) for x in members[ra] for y in members[rb]]
        if mask[ra] & mask[rb]:
            same = [dice(x, y) for x, y in pairs if x[0] == y[0]]
            if duplicate_similarity is None or any(s < duplicate_similarity for s in same):
                continue
        cross = np.array([dice(x, y) for x, y in pairs if x[0] != y[0]])
        if not len(cross) or (cross >= threshold).sum() < share * len(cross):
            continue
        inside = np.array([dice(x, y) for group in (members[ra], members[rb])
                           for i, x in enumerate(group) for y in group[i + 1:]])
        if margin is not None and len(inside) and cross.mean() < inside.mean() - margin:
            continue
        parent[rb] = ra
        mask[ra] |= mask[rb]
        members[ra] = members[ra] + members.pop(rb)
    return relabel([np.array([root(int(c)) for c in lab]) for lab in labels])[0]


def test_the_compiled_joins_are_the_rules_written_plainly() -> None:
    """Invariant: merge_split_clusters' compiled loop joins exactly the clusters the rules, written plainly in Python,
    join (labels equal), for split people, siblings and duplicates at three agencies, under several rule settings."""
    from coordinator.linkage.match import compute_dice

    rng = np.random.default_rng(21)
    people = _bits(rng, 60)
    family = _flip(rng, people[:10], 0.12)  # siblings: like people 0-9, not them
    datasets, labels = [], []
    for d in range(3):
        rows = [_flip(rng, people[p], 0.03) for p in range(60)] + [_flip(rng, family[p], 0.03) for p in range(10)]
        if d == 0:
            rows += [_flip(rng, people[p], 0.02) for p in range(5)]  # agency 0's own duplicates
        datasets.append(np.packbits(np.stack(rows), axis=1))
        # A poor solve: each record its own cluster but for a few pairs put together.
        labels.append(np.arange(len(rows)) + 1000 * d)
    labels[1][:20] = labels[0][:20]
    links = {}
    for d_a in range(3):
        for d_b in range(d_a + 1, 3):
            rows_a = rng.permutation(len(datasets[d_a]))[:60]
            rows_b = np.where(rows_a < 70, rows_a, rng.integers(0, 70, len(rows_a)))
            rows_b = np.minimum(rows_b, len(datasets[d_b]) - 1)
            scores = compute_dice(datasets[d_a], datasets[d_b], rows_a, rows_b)
            links[(d_a, d_b)] = rows_a, rows_b, scores
    settings = [dict(share=0.5, margin=0.2, duplicate_similarity=0.9), dict(share=0.5, margin=None,
                duplicate_similarity=0.9), dict(share=0.9, margin=0.05, duplicate_similarity=None),
                dict(share=0.3, margin=0.3, duplicate_similarity=0.8)]
    joined_any = False
    for setting in settings:
        for threshold in (0.7, 0.8):
            got, _, joins = merge_split_clusters(datasets, labels, links, threshold, **setting)
            want = _reference_joins(datasets, labels, links, threshold, **setting)
            assert [x.tolist() for x in got] == [x.tolist() for x in want], (setting, threshold)
            joined_any |= joins > 0
    assert joined_any  # the comparison is not vacuous
