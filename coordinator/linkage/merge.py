"""Join clusters the multi-party solve left split although most of their records agree.

anonlink's greedy solver joins two groups only when every cross pair between them is a candidate:
one pair below the threshold (a surname change at one agency, a blank date at another) keeps one
person's four records in two clusters, and every pair across the split is missed. Each agency
pair's own one-to-one solve still links such records. This pass takes those pairwise links at or
above the threshold, most similar first, and joins the two clusters they fall in when the clusters
hold no common agency, at least :data:`MERGE_SHARE` of the cross pairs between them reach the
threshold, and the cross pairs agree about as well as the pairs inside (:data:`MERGE_MARGIN`).
Clusters that share an agency join only when that agency's records in them are its own duplicates
(Dice at least ``DUPLICATE_SIMILARITY``): one person held twice, each copy linked elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numba import njit

from coordinator.linkage.duplicates import DUPLICATE_SIMILARITY, relabel
from coordinator.linkage.kernels import pair_dice
from coordinator.linkage.similarity import as_words, check_datasets, popcounts

__all__ = ["MERGE_MARGIN", "MERGE_SHARE", "merge_split_clusters"]

#: Share of the cross pairs between two clusters that must reach the threshold for them to join.
MERGE_SHARE = 0.5
#: Two clusters join only if their cross pairs score, on average, within this of the pairs inside
#: them: one person's split records agree with each other about as well as with the rest, while
#: siblings' clusters hold close pairs inside and only middling ones across (shared surname,
#: postcode and close dates of birth put sibling pairs around 0.6-0.7). Measured on the UK-style
#: and household sets (benchmarks/quality.py): 0.1 kept too many splits, 0.3 joined siblings.
MERGE_MARGIN = 0.2


class _Scorer:
    """Dice of record pairs across the round's datasets, words and popcounts computed once.

    ``compute_dice`` counts the bits of both whole datasets on every call: once per pair here it
    cost 20-30 s at 4 x 100k records for a few thousand joins considered. A call's pairs are scored
    in one compiled loop (a call per pair from Python cost ~0.1 s of a 4 x 100k round's ~10k calls).
    """

    def __init__(self, datasets: Sequence[np.ndarray]) -> None:
        self.words = tuple(np.ascontiguousarray(as_words(d)) for d in check_datasets(datasets))
        self.pops = tuple(popcounts(w) for w in self.words)

    def __call__(self, pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> np.ndarray:
        # The rows are the datasets' own: in range.
        codes = np.array([(d_x, r_x, d_y, r_y) for (d_x, r_x), (d_y, r_y) in pairs], dtype=np.int64).reshape(-1, 4)
        out = np.empty(len(pairs), dtype=np.float64)
        _pairs_dice(self.words, self.pops, codes, out)
        return out


@njit(cache=True, nogil=True)
def _pairs_dice(words: tuple, pops: tuple, codes: np.ndarray, out: np.ndarray) -> None:
    """Dice of each pair ``(d_x, r_x, d_y, r_y)`` of ``codes``, into ``out`` (:func:`pair_dice`'s arithmetic)."""
    for k in range(len(codes)):
        d_x, d_y = codes[k, 0], codes[k, 2]
        pair_dice(words[d_x], words[d_y], pops[d_x], pops[d_y], codes[k, 1:2], codes[k, 3:4], out[k : k + 1])


def _roots(parent: list[int]) -> np.ndarray:
    """Every cluster's root in the joins' forest (``parent``: each cluster's parent, a root its own)."""
    roots = np.asarray(parent, dtype=np.int64)
    while True:  # pointer jumping: each round halves every path
        up = roots[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def merge_split_clusters(
    datasets: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    links: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    threshold: float,
    *,
    share: float = MERGE_SHARE,
    margin: float | None = MERGE_MARGIN,
    duplicate_similarity: float | None = DUPLICATE_SIMILARITY,
) -> tuple[tuple[np.ndarray, ...], int, int]:
    """Join split clusters that pairwise links connect.

    Args:
        datasets: packed encodings, one array per agency.
        labels: per agency, the cluster of each row.
        links: per agency pair ``(d_a, d_b)``, that pair's one-to-one links ``(rows_a, rows_b, scores)``.
        threshold: the round's threshold.
        share: share of cross pairs that must reach the threshold.
        margin: the cross pairs' mean Dice must be within this of the mean Dice inside the two
            clusters (``None``: no such check).
        duplicate_similarity: two clusters holding records of one agency join only if those
            records are this similar (the agency's own duplicates); ``None``: never.

    Returns:
        The new labels (renumbered), the number of clusters, and how many joins were made.
    """
    labels = [np.asarray(x, dtype=np.int64) for x in labels]
    n = int(max((x.max() for x in labels if len(x)), default=-1)) + 1
    mask = np.zeros(n, dtype=np.int64)
    members: dict[int, list[tuple[int, int]]] = {}
    for d, lab in enumerate(labels):
        np.bitwise_or.at(mask, lab, 1 << d)
    edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for (d_a, d_b), (rows_a, rows_b, scores) in links.items():
        keep = scores >= threshold
        c_a, c_b = labels[d_a][rows_a[keep]], labels[d_b][rows_b[keep]]
        apart = c_a != c_b
        if duplicate_similarity is None:
            apart &= (mask[c_a] & mask[c_b]) == 0
        edges.append((np.asarray(scores[keep][apart], dtype=np.float64), c_a[apart], c_b[apart]))
    score, first, second = (np.concatenate(column) for column in zip(*edges, strict=True)) if edges else ((),) * 3
    if not len(score):
        out, count = relabel(labels)
        return out, count, 0
    involved = np.zeros(n, dtype=np.bool_)
    involved[first] = True
    involved[second] = True
    for d, lab in enumerate(labels):
        for row in np.flatnonzero(involved[lab]).tolist():
            members.setdefault(int(lab[row]), []).append((d, row))
    parent = list(range(n))

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    _scores = _Scorer(datasets)
    joins = 0
    # Most similar first, then by cluster numbers; a stable sort, as ``sorted`` on (-score, a, b) orders them.
    order = np.lexsort((second, first, -score))
    for a, b in zip(first[order].tolist(), second[order].tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        pairs = [(x, y) for x in members[ra] for y in members[rb]]
        if mask[ra] & mask[rb]:
            same = _scores([(x, y) for x, y in pairs if x[0] == y[0]])
            if duplicate_similarity is None or (same < duplicate_similarity).any():
                continue
        cross = _scores([(x, y) for x, y in pairs if x[0] != y[0]])
        if not len(cross) or (cross >= threshold).sum() < share * len(cross):
            continue
        if margin is not None:
            inside = _scores([(x, y) for group in (members[ra], members[rb])
                              for i, x in enumerate(group) for y in group[i + 1 :]])
            if len(inside) and cross.mean() < inside.mean() - margin:
                continue
        parent[rb] = ra
        mask[ra] |= mask[rb]
        members[ra] = members[ra] + members.pop(rb)
        joins += 1
    roots = _roots(parent)
    merged = [roots[lab] for lab in labels]
    out, count = relabel(merged)
    return out, count, joins
