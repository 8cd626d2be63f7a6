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
from coordinator.linkage.kernels import record_dice
from coordinator.linkage.numpy_sums import pairwise_sum
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


@njit(cache=True, nogil=True, inline="always")
def _root(parent, c):  # noqa: ANN001, ANN202
    """``c``'s root in the joins' forest, halving the path as it goes."""
    while parent[c] != c:
        parent[c] = parent[parent[c]]
        c = parent[c]
    return c


@njit(cache=True, nogil=True, inline="always")
def _record_dice(words, pops, d_x, r_x, d_y, r_y):  # noqa: ANN001, ANN202
    """Dice of record ``r_x`` of dataset ``d_x`` and ``r_y`` of ``d_y``."""
    return record_dice(words[d_x], words[d_y], r_x, r_y, pops[d_x][r_x], pops[d_y][r_y])


@njit(cache=True, nogil=True)
def _join(words, pops, node_d, node_row, head, following, tail, mask, parent, first, second, threshold,  # noqa: ANN001, ANN202, PLR0913, PLR0912
          share, margin, duplicate_similarity):
    """Consider each candidate join ``(first[k], second[k])`` in order; join where the rules allow; count the joins.

    Each cluster's members are a list of nodes (``head``, ``following``, ``tail``; a node is a record
    ``(node_d, node_row)``), in the order the rules read them; a join appends the second list to
    the first. ``margin`` or ``duplicate_similarity`` below 0: no such rule.
    """
    joins = 0
    for k in range(len(first)):
        ra, rb = _root(parent, first[k]), _root(parent, second[k])
        if ra == rb:
            continue
        size_a, size_b = 0, 0
        x = head[ra]
        while x >= 0:
            size_a += 1
            x = following[x]
        x = head[rb]
        while x >= 0:
            size_b += 1
            x = following[x]
        # Every pair (x of ra, y of rb) in list order: same-agency pairs and cross pairs apart.
        same = np.empty(size_a * size_b)
        cross = np.empty(size_a * size_b)
        n_same, n_cross = 0, 0
        x = head[ra]
        while x >= 0:
            y = head[rb]
            while y >= 0:
                sim = _record_dice(words, pops, node_d[x], node_row[x], node_d[y], node_row[y])
                if node_d[x] == node_d[y]:
                    same[n_same] = sim
                    n_same += 1
                else:
                    cross[n_cross] = sim
                    n_cross += 1
                y = following[y]
            x = following[x]
        if mask[ra] & mask[rb]:
            if duplicate_similarity < 0:
                continue
            blocked = False
            for i in range(n_same):
                if same[i] < duplicate_similarity:
                    blocked = True
            if blocked:
                continue
        reaching = 0
        for i in range(n_cross):
            if cross[i] >= threshold:
                reaching += 1
        if n_cross == 0 or reaching < share * n_cross:
            continue
        if margin >= 0:
            # The pairs inside each cluster, in list order (numpy's mean of them, bit for bit).
            inside = np.empty((size_a * (size_a - 1) + size_b * (size_b - 1)) // 2)
            n_inside = 0
            for group in (ra, rb):
                x = head[group]
                while x >= 0:
                    y = following[x]
                    while y >= 0:
                        inside[n_inside] = _record_dice(words, pops, node_d[x], node_row[x], node_d[y], node_row[y])
                        n_inside += 1
                        y = following[y]
                    x = following[x]
            if n_inside and (pairwise_sum(cross, 0, n_cross) / n_cross
                             < pairwise_sum(inside, 0, n_inside) / n_inside - margin):
                continue
        parent[rb] = ra
        mask[ra] |= mask[rb]
        following[tail[ra]] = head[rb]
        tail[ra] = tail[rb]
        head[rb] = -1
        joins += 1
    return joins


@njit(cache=True, nogil=True)
def _member_lists(node_cluster: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster, the list of its nodes in node order: first node, each node's next (-1: none), last node."""
    head = np.full(n, -1, dtype=np.int64)
    tail = np.full(n, -1, dtype=np.int64)
    following = np.full(len(node_cluster), -1, dtype=np.int64)
    for node in range(len(node_cluster)):
        c = node_cluster[node]
        if head[c] < 0:
            head[c] = node
        else:
            following[tail[c]] = node
        tail[c] = node
    return head, following, tail


def _roots(parent: np.ndarray) -> np.ndarray:
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
    # Each involved cluster's members in (dataset, row) order, as lists of nodes.
    rows = [np.flatnonzero(involved[lab]) for lab in labels]
    node_d = np.concatenate([np.full(len(r), d, dtype=np.int64) for d, r in enumerate(rows)])
    node_row = np.concatenate(rows).astype(np.int64)
    node_cluster = np.concatenate([labels[d][r] for d, r in enumerate(rows)])
    head, following, tail = _member_lists(node_cluster, n)
    parent = np.arange(n, dtype=np.int64)
    words = tuple(np.ascontiguousarray(as_words(d)) for d in check_datasets(datasets))
    pops = tuple(popcounts(w) for w in words)
    # Most similar first, then by cluster numbers; a stable sort, as ``sorted`` on (-score, a, b) orders them.
    order = np.lexsort((second, first, -score))
    joins = _join(words, pops, node_d, node_row, head, following, tail, mask, parent, first[order].astype(np.int64),
                  second[order].astype(np.int64), float(threshold), float(share),
                  -1.0 if margin is None else float(margin),
                  -1.0 if duplicate_similarity is None else float(duplicate_similarity))
    roots = _roots(parent)
    merged = [roots[lab] for lab in labels]
    out, count = relabel(merged)
    return out, count, joins
