"""An agency's own duplicates: attach a record the one-to-one solve left alone to its twin record's cluster.

The greedy solver links at most one record per agency into a cluster, so when an agency holds a
person twice, the second record stays a singleton and every pair it forms with the person's other
records is missed (about 2% of true pairs at a 1% duplicate rate over four agencies). After the
solve, each singleton is matched one-to-one against every other agency at the round's threshold
(from the round's own candidate pairs, when the round gives them); when its partner's cluster
already holds a record of the singleton's own agency that is nearly identical to it (Dice at
least :data:`DUPLICATE_SIMILARITY`), the singleton joins that cluster.

The bar is high on purpose: twins share surname, date of birth and postcode and differ in the
given name, which keeps their Dice around 0.7-0.8 with the default fields; a duplicate with a typo
or two scores above 0.85. Downstream, an entity with two records at one agency is already allowed
(node scoring averages an entity's records).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.candidate_order import candidate_order
from coordinator.linkage.greedy import greedy_roots
from coordinator.linkage.match import Candidates, match_clks, select_candidates
from coordinator.linkage.similarity import compute_dice

__all__ = ["DUPLICATE_SIMILARITY", "attach_duplicates", "relabel"]

#: Dice at or above which two records of one agency count as one person's duplicates.
DUPLICATE_SIMILARITY = 0.85


def relabel(labels: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], int]:
    """Renumber clusters ``0..n-1`` in order of their first ``(dataset, row)`` member.

    >>> relabel([np.array([5, 2]), np.array([2, 9])])[0]
    (array([0, 1]), array([1, 2]))
    """
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in labels]) if labels else np.zeros(0, np.int64)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    renumbered = rank[inverse]
    out, start = [], 0
    for x in labels:
        out.append(renumbered[start : start + len(x)])
        start += len(x)
    return tuple(out), len(first)


def attach_duplicates(
    datasets: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    threshold: float,
    *,
    similarity: float = DUPLICATE_SIMILARITY,
    blocking: BlockingConfig | None = BlockingConfig(),
    workers: int = 2,
    candidates: Candidates | None = None,
) -> tuple[tuple[np.ndarray, ...], int, int]:
    """Attach singletons to the cluster of their own agency's near-identical record.

    Args:
        datasets: packed encodings, one array per agency.
        labels: per agency, the cluster of each row after the solve.
        threshold: the round's threshold (a singleton's link to the other agency must reach it).
        similarity: Dice a singleton must reach with its own agency's record in that cluster.
        blocking: blocking for the singletons' matches.
        workers: threads.
        candidates: the round's own scored pairs (at or above ``threshold``, or a lower floor):
            the singletons' one-to-one matches are then solved from the round's pairs between
            them and the other agency, rather than by matching the singletons again (``blocking``
            is then unused; :func:`~coordinator.linkage.auto.auto_match` always passes them). With
            all pairs compared the result is the same; under LSH a second blocking draws other band
            positions from the singletons' bit frequencies and offers slightly different pairs
            (at 4 x 100k: 16 duplicates attached against 17 from the round's pairs, for ~2.8 s of
            the round's time).

    Returns:
        The new labels (renumbered), the number of clusters, and how many records were attached.
    """
    labels = [np.asarray(x, dtype=np.int64).copy() for x in labels]
    flat = np.concatenate(labels)
    sizes = np.bincount(flat, minlength=int(flat.max()) + 1 if len(flat) else 0)
    attached = 0
    kept = select_candidates(candidates, threshold=threshold) if candidates is not None else None
    # Each agency's singles are fixed before any is attached (``sizes`` is not updated), so every
    # singles-against-agency match is known up front: they run side by side, each on one thread.
    singles_of = [np.flatnonzero(sizes[labels[d]] == 1) for d in range(len(datasets))]
    jobs = [(d, e) for d in range(len(datasets)) if len(singles_of[d])
            for e in range(len(datasets)) if e != d and len(datasets[e])]

    def partners(job: tuple[int, int]) -> np.ndarray:
        d, e = job
        own, other, singles = datasets[d], datasets[e], singles_of[d]
        if kept is not None:
            return _partners(kept, d, e, singles, len(own), len(other))
        found = match_clks([own[singles], other], threshold, blocking=blocking, workers=1, histogram_bins=None)
        left, right = found.labels
        partner = np.full(found.n_clusters, -1, dtype=np.int64)
        partner[right] = np.arange(len(right))
        return partner[left]

    if kept is None and workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            matched = dict(zip(jobs, pool.map(partners, jobs), strict=True))
    else:
        matched = {job: partners(job) for job in jobs}
    for d in range(len(datasets)):
        singles = singles_of[d]
        if not len(singles):
            continue
        own = datasets[d]
        # The row of agency d in each cluster of two or more records (one per cluster after the solve).
        member = np.full(len(sizes), -1, dtype=np.int64)
        grouped = np.flatnonzero(sizes[labels[d]] > 1)
        member[labels[d][grouped]] = grouped
        best_score = np.zeros(len(singles))
        best_cluster = np.full(len(singles), -1, dtype=np.int64)
        for e in range(len(datasets)):
            if (d, e) not in matched:
                continue
            rows_b = matched[(d, e)]
            linked = np.flatnonzero(rows_b >= 0)
            if not len(linked):
                continue
            clusters = labels[e][rows_b[linked]]
            rows_a = member[clusters]
            keep = rows_a >= 0
            linked, clusters, rows_a = linked[keep], clusters[keep], rows_a[keep]
            if not len(linked):
                continue
            scores = compute_dice(own, own, singles[linked], rows_a)
            better = (scores >= similarity) & (scores > best_score[linked])
            best_score[linked[better]] = scores[better]
            best_cluster[linked[better]] = clusters[better]
        chosen = np.flatnonzero(best_cluster >= 0)
        labels[d][singles[chosen]] = best_cluster[chosen]
        attached += len(chosen)
    out, n_clusters = relabel(labels)
    return out, n_clusters, attached


def _partners(candidates: Candidates, d: int, e: int, singles: np.ndarray, n_own: int, n_other: int) -> np.ndarray:
    """Each single's partner row in agency ``e`` in a one-to-one solve of its pairs there (``-1``: none).

    The pairs are ordered as ``match_clks([own[singles], other], ...)`` orders them (the singles
    are dataset 0, numbered in row order) and solved with the same greedy rule.
    """
    sims, (d_a, d_b), (r_a, r_b) = candidates
    index = np.full(n_own, -1, dtype=np.int64)
    index[singles] = np.arange(len(singles))
    forward = (d_a == d) & (d_b == e)
    backward = (d_a == e) & (d_b == d)
    row_own = np.concatenate([r_a[forward], r_b[backward]]).astype(np.int64)
    row_other = np.concatenate([r_b[forward], r_a[backward]]).astype(np.int64)
    sim = np.concatenate([sims[forward], sims[backward]])
    single = index[row_own]
    keep = single >= 0
    single, row_other, sim = single[keep], row_other[keep], sim[keep]
    zeros = np.zeros(len(sim), dtype=np.int64)
    order = candidate_order(sim, zeros, zeros + 1, single, row_other)
    k = len(singles)
    root = greedy_roots(single[order], k + row_other[order], k + n_other,
                        np.concatenate([np.zeros(k, np.int64), np.ones(n_other, np.int64)]))
    partner = np.full(k, -1, dtype=np.int64)
    paired = np.flatnonzero(root[k:] >= 0)  # a group is one single and one row of e: its root is the single
    partner[root[k + paired]] = paired
    return partner
