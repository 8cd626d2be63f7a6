"""Re-cluster only what a round touched, and carry entity pseudonyms over by overlap.

anonlink's greedy solver walks the candidate edges from most to least similar and decides each
from the two groups the edge joins. Groups only grow along edges, so its result on a graph is
the union of its results on each connected component (with the edges in the same order). A
round therefore re-solves just the components that hold a new row, or a row that lost an edge
to a withdrawn one; every other group is already what a full run would give.

Pseudonyms then follow the people: each new group takes the pseudonym of the old entity it
shares most rows with (largest overlaps first, each old pseudonym used once). A group that no
old entity is left for gets a fresh random pseudonym. An old entity whose rows end up in several
groups is counted as a *split*; a group holding rows of several old entities as a *merge*.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from numba import njit

from coordinator.linkage.candidate_order import candidate_order
from coordinator.linkage.greedy import greedy_roots
from coordinator.linkage.state_tokens import any_present

__all__ = ["ClusterChange", "components", "fresh_pseudonyms", "greedy_groups", "recluster"]


@dataclass(frozen=True)
class ClusterChange:
    """What re-clustering changed (counts only).

    Attributes:
        rows_resolved: rows in the components that were solved again.
        edges_resolved: edges in those components.
        new_entities: groups that got a fresh pseudonym.
        splits: old entities whose remaining rows now sit in two or more groups.
        merges: groups that hold rows of two or more old entities.
        moved_rows: rows that were linked before and now carry another pseudonym.
    """

    rows_resolved: int
    edges_resolved: int
    new_entities: int
    splits: int
    merges: int
    moved_rows: int


def fresh_pseudonyms(n: int, taken: np.ndarray) -> np.ndarray:
    """``n`` random 16-byte pseudonyms, distinct from each other and from ``taken``.

    >>> fresh = fresh_pseudonyms(3, np.zeros((1, 16), dtype=np.uint8))
    >>> fresh.shape, len({row.tobytes() for row in fresh})
    ((3, 16), 3)
    """
    # A collision has probability ~n^2 / 2^129; checked anyway (on the first 8 bytes, which is
    # stricter) because a shared id would merge people.
    # The few new prefixes go in a hash set and the taken ones are looked up in one pass (no sort of the table).
    known = np.ascontiguousarray(taken).view(np.uint64)[:, 0] if len(taken) else np.zeros(0, np.uint64)
    while True:
        out = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
        prefix = np.sort(out.view(np.uint64)[:, 0])
        clash = any_present(known, prefix)
        if not clash and len(np.unique(prefix)) == n:
            return out


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected component of each of ``n`` nodes given edges ``(a, b)``: its smallest node.

    A compiled union-find over every edge of the state (millions at 4 x 1M: numpy's rounds of
    pointer jumping took ~0.8 s there), each root hooked under the smaller one, so a component's
    root is its smallest node.

    >>> components(5, np.array([0, 3]), np.array([2, 4])).tolist()
    [0, 1, 0, 3, 3]
    """
    # The state's uint32 edge ends are read as they are: a copy of every edge per round costs more than the walk.
    a, b = (e if e.dtype in (np.uint32, np.int64) else e.astype(np.int64) for e in (a, b))
    return _union_find(n, a, b)


@njit(nogil=True, cache=True)
def _root(parent, node):  # noqa: ANN001, ANN202
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:  # path compression
        parent[node], node = root, parent[node]
    return root


@njit(nogil=True, cache=True)
def _union_find(n, a, b):  # noqa: ANN001, ANN202
    parent = np.arange(n, dtype=np.int64)
    for k in range(a.shape[0]):
        ra, rb = _root(parent, a[k]), _root(parent, b[k])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb
    for node in range(n):
        parent[node] = parent[parent[node]] if parent[node] < node else parent[node]
    return parent


def greedy_groups(party: np.ndarray, a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve the edges with anonlink's greedy rule (compiled, the same groups), in anonlink's candidate order.

    Args:
        party: party index of every row.
        a: lower-party end of each edge (global row number).
        b: other end.
        sim: similarity of each edge.

    Returns:
        ``(rows, group)``: every row in a group of two or more, and its group's smallest row.
    """
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Rows of one party keep their relative order in the global numbering, so (party, global row)
    # sorts exactly as (dataset, row) does in a full run.
    order = candidate_order(sim, party[a], party[b], a, b)
    root = greedy_roots(a[order], b[order], len(party), party)
    rows = np.flatnonzero(root >= 0)
    return rows, root[rows]


def recluster(
    party: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    seeds: np.ndarray,
    entity: np.ndarray,
    pseudonyms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, ClusterChange]:
    """Re-solve the components holding ``seeds`` and carry pseudonyms over.

    Args:
        party: party index of every live row.
        edges: ``(a, b, sim)`` every live edge at or above the threshold (ends as uint32 or int64).
        seeds: rows whose component must be solved again (new rows, rows that lost an edge).
        entity: each live row's entity index before the round, ``-1`` for new rows.
        pseudonyms: the pseudonym table ``entity`` indexes.

    Returns:
        ``(entity, pseudonyms, change)``: every row's entity index into the new table (unused
        old pseudonyms dropped), the table, and what changed.
    """
    n = len(party)
    a, b, sim = edges
    comp = components(n, a, b)
    marked = np.zeros(n, dtype=bool)
    marked[comp[seeds]] = True
    affected = marked[comp]
    inside = affected[a] if len(a) else np.zeros(0, dtype=bool)
    touched = np.flatnonzero(affected)
    # Solved over the touched rows alone, numbered in order (so ties break as over the global numbers): the
    # solver's per-node arrays then hold the ~1% of rows a round touches, not every row.
    local_rows, local_group = greedy_groups(party[touched], np.searchsorted(touched, a[inside]),
                                            np.searchsorted(touched, b[inside]), sim[inside])
    group_t = touched.copy()  # each touched row's group (its smallest row); singletons are their own group
    group_t[local_rows] = touched[local_group]
    old = entity[touched]
    had = old >= 0
    # Overlap of (old entity, new group) over the touched rows that had an entity.
    pairs = np.stack([old[had], group_t[had]], axis=1)
    combos, counts = np.unique(pairs, axis=0, return_counts=True) if len(pairs) else (np.zeros((0, 2), np.int64), [])
    order = sorted(range(len(combos)), key=lambda i: (-int(counts[i]), int(combos[i, 0]), int(combos[i, 1])))
    given: dict[int, int] = {}
    taken: set[int] = set()
    for i in order:
        e, g = int(combos[i, 0]), int(combos[i, 1])
        if g not in given and e not in taken:
            given[g] = e
            taken.add(e)
    groups = np.unique(group_t)
    fresh = [g for g in groups.tolist() if g not in given]
    table = np.concatenate([pseudonyms, fresh_pseudonyms(len(fresh), pseudonyms)])
    given.update((g, len(pseudonyms) + i) for i, g in enumerate(fresh))
    new_entity = entity.copy()
    new_entity[touched] = np.fromiter((given[g] for g in group_t.tolist()), dtype=np.int64, count=len(touched))
    splits = merges = 0
    if len(combos):
        splits = int((np.unique(combos[:, 0], return_counts=True)[1] > 1).sum())
        merges = int((np.unique(combos[:, 1], return_counts=True)[1] > 1).sum())
    moved = int((new_entity[touched][had] != old[had]).sum())
    used = np.bincount(new_entity, minlength=len(table)) > 0  # O(n), no sort: drop retired pseudonyms
    compact = (np.cumsum(used) - 1)[new_entity]
    change = ClusterChange(rows_resolved=len(touched), edges_resolved=int(inside.sum()), new_entities=len(fresh),
                           splits=splits, merges=merges, moved_rows=moved)
    return compact.astype(np.int64), table[used], change
