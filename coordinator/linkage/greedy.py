"""anonlink's greedy solver, compiled: the same groups from the same candidates, in a fraction of the time.

anonlink's ``greedy_solve`` walks the candidate pairs in the order given (most similar first)
and keeps every record in at most one group. A pair of two ungrouped records makes a group; a
pair of an ungrouped record and a group of one joins them; a pair of an ungrouped record and a
larger group makes the record a group of its own (it cannot join yet: it has one edge to the
group, not one to each member); a pair of two groups merges them when the edges seen so far
between them (this one included) are at least the product of their sizes, i.e. every cross
pair has been seen. At a low floor its C++ hash tables of group-to-group edge counts cost
minutes at 4 x 100k records (131 s of a 153 s round).

Here the count between two groups is not kept but recounted when needed: every edge seen is
one between the two groups its ends now belong to (groups only merge, and an edge inside a
group is never counted), so the count is the sum, over the cross pairs of members, of that
pair's edges at or before the current one. Each record's edges are kept sorted by the other
end, so each cross pair is a binary search; groups hold at most one record per agency when
every candidate joins two agencies, so a check is a handful of searches. Which group absorbs
the other changes no membership, so the result is anonlink's partition exactly, duplicate
candidates and pairs within one dataset included (``tests/coordinator/test_greedy.py``
compares the two on random candidate sets and on real encodings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

__all__ = ["distinct_dataset_roots", "greedy_roots", "greedy_solve_groups"]


@njit(cache=True, nogil=True)
def _adjacency(u: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's neighbours in edge order (CSR ``(indptr, nbr)``; self-pairs left out)."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(len(u)):
        if u[i] != v[i]:
            indptr[u[i] + 1] += 1
            indptr[v[i] + 1] += 1
    for x in range(n):
        indptr[x + 1] += indptr[x]
    fill = indptr[:-1].copy()
    nbr = np.empty(indptr[n], dtype=np.int32)  # nodes < 2**31 (checked by the caller)
    for i in range(len(u)):
        a, b = u[i], v[i]
        if a != b:
            nbr[fill[a]] = b
            fill[a] += 1
            nbr[fill[b]] = a
            fill[b] += 1
    return indptr, nbr


@njit(cache=True, nogil=True)
def _pair_edges(indptr: np.ndarray, nbr: np.ndarray, seen: np.ndarray, x: int, y: int, repeated: bool) -> int:
    """Edges seen so far between ``x`` and ``y``: the shorter of their seen prefixes is scanned."""
    if seen[y] < seen[x]:
        x, y = y, x
    count = 0
    for k in range(indptr[x], indptr[x] + seen[x]):
        if nbr[k] == y:
            count += 1
            if not repeated:
                break
    return count


@njit(cache=True, nogil=True)
def _solve(u: np.ndarray, v: np.ndarray, n: int, indptr: np.ndarray, nbr: np.ndarray, repeated: bool,
           bit: np.ndarray) -> np.ndarray:
    """Group of every node (its smallest member) after anonlink's greedy pass; ``-1``: in no group of two or more.

    ``bit`` is each node's dataset bit when every pair joins two datasets and none repeats (else 0):
    two groups holding one dataset can then never merge (that dataset's pair is never an edge).
    """
    # Node numbers, counts and sizes fit 32 bits (n < 2**31, checked by the caller): half the cache
    # footprint of int64 for the random reads each edge makes (a floor solve takes 13M edges).
    mask = np.zeros(n, dtype=np.int64)  # by group id: datasets present
    seen = np.zeros(n, dtype=np.int32)  # edges of each node taken so far: a prefix of its neighbours
    group = np.full(n, -1, dtype=np.int32)  # group id of each node, -1: none yet
    size = np.zeros(n, dtype=np.int32)  # by group id (a group's id is the node it started from)
    head = np.full(n, -1, dtype=np.int32)
    tail = np.full(n, -1, dtype=np.int32)
    nxt = np.full(n, -1, dtype=np.int32)
    for i in range(len(u)):
        a, b = u[i], v[i]
        if a == b:
            continue
        seen[a] += 1
        seen[b] += 1
        ga, gb = group[a], group[b]
        if ga < 0 and gb < 0:
            group[a] = a
            group[b] = a
            size[a] = 2
            mask[a] = bit[a] | bit[b]
            head[a] = a
            nxt[a] = b
            tail[a] = b
        elif ga < 0 or gb < 0:
            if ga < 0:
                g, new = gb, a
            else:
                g, new = ga, b
            if size[g] == 1:
                group[new] = g
                nxt[tail[g]] = new
                tail[g] = new
                size[g] = 2
                mask[g] |= bit[new]
            else:
                group[new] = new
                size[new] = 1
                mask[new] = bit[new]
                head[new] = new
                tail[new] = new
        elif ga != gb and (mask[ga] & mask[gb]) == 0:
            need = np.int64(size[ga]) * np.int64(size[gb])
            count = 0
            x = head[ga]
            while x >= 0 and count >= 0:
                y = head[gb]
                while y >= 0:
                    found = 1 if x == a and y == b and not repeated else _pair_edges(indptr, nbr, seen, x, y, repeated)
                    if found == 0 and not repeated:
                        count = -1  # a cross pair never seen (each pair is at most one edge): no merge
                        break
                    count += found
                    y = nxt[y]
                x = nxt[x]
            if count >= need:
                # Which group absorbs the other changes no membership: move the smaller one's members.
                keep, gone = (ga, gb) if size[ga] >= size[gb] else (gb, ga)
                y = head[gone]
                while y >= 0:
                    group[y] = keep
                    y = nxt[y]
                nxt[tail[keep]] = head[gone]
                tail[keep] = tail[gone]
                size[keep] += size[gone]
                size[gone] = 0
                mask[keep] |= mask[gone]
    return _roots(size, head, nxt)


@njit(cache=True, nogil=True)
def _grown(a: np.ndarray, need: int) -> np.ndarray:
    """``a``, or a copy at least twice as long when it holds fewer than ``need``."""
    if need <= len(a):
        return a
    out = np.empty(max(need, 2 * len(a)), dtype=a.dtype)
    out[: len(a)] = a
    return out


#: Fields of a node's record in :func:`_solve_distinct` (by group id: a group's id is the node it started from).
_HEAD, _TAIL, _NEXT, _FIRST, _SIZE, _KEPT = 0, 1, 2, 3, 4, 5


@njit(cache=True, nogil=True)
def _records(n: int) -> np.ndarray:
    """Every node's record: no members, no successor, no kept edge (``-1``), size and kept edges 0."""
    rec = np.empty((n, 8), dtype=np.int32)
    for x in range(n):
        rec[x, _HEAD] = rec[x, _TAIL] = rec[x, _NEXT] = rec[x, _FIRST] = -1
        rec[x, _SIZE] = rec[x, _KEPT] = rec[x, 6] = rec[x, 7] = 0
    return rec


def _state_words(n: int, parties: int) -> tuple[np.ndarray, int]:
    """Zeroed node words for :func:`_solve_distinct` and the shift of the parties' bits above the group id.

    4 bytes a node where the group id + 1 (at most ``n``) and the parties' bits fit 31 bits (a
    round's four agencies and 400k records take 23): half the cache footprint of the words every
    edge reads; else 8 bytes, the parties above bit 32.
    """
    shift = max(n.bit_length(), 1)
    if shift + parties <= 31:
        return np.zeros(n, dtype=np.int32), shift
    return np.zeros(n, dtype=np.int64), 32


@njit(cache=True, nogil=True)
def _solve_distinct(rows_a: np.ndarray, sets_a: np.ndarray, rows_b: np.ndarray, sets_b: np.ndarray,
                    offsets: np.ndarray, party: np.ndarray, n: int, state: np.ndarray,
                    shift: int) -> tuple[np.ndarray, bool]:
    """:func:`_solve`'s groups when no pair repeats and every pair joins two parties (below 31): ``(root, True)``.

    A pair's ends are nodes ``offsets[sets_a[i]] + rows_a[i]`` and ``offsets[sets_b[i]] + rows_b[i]``
    of parties ``sets_a[i]`` and ``sets_b[i]`` (a round's columns, read as they are: no node numbers
    are written), or, with ``sets_a`` empty, nodes ``rows_a[i]`` and ``rows_b[i]`` of parties
    ``party[...]``. A pair inside one party ends the solve: ``(empty, False)``.

    Then two groups sharing a party never merge (that party's pair is never an edge), a group holds
    at most one node per party, and few edges can ever be counted: an edge is counted only while its
    ends are in two groups that may still merge, and an edge whose ends were not, when it came (they
    were grouped together by it or before it, or in groups sharing a party), never will be: groups
    only grow. So no adjacency of every edge is built: only the others are kept, in a linked list per
    node (a few percent of a round's floor), and a node's group and that group's parties are one
    word, so the ~94% of a floor's edges that change nothing cost two reads.

    ``state`` (zeros, one per node; see :func:`_state_words`) receives each node's word: its group's
    parties ``<< shift`` above its group id + 1 (0: no group).
    """
    low = np.int64((1 << shift) - 1)
    up = np.int64(shift)
    # The rest of a node's (and its group's) state in one 32-byte record, not in six arrays: a pair
    # that changes something touches a record or two, not a cache line in each array (at a round's
    # floor the state is megabytes, and those misses were most of the solve).
    rec = _records(n)
    other = np.empty(1024, dtype=np.int32)  # by kept edge end: the other end
    older = np.empty(1024, dtype=np.int32)  # by kept edge end: the same node's previous one
    m = 0
    by_sets = len(sets_a) > 0
    one = np.int64(1)
    for i in range(len(rows_a)):
        if by_sets:
            pa, pb = np.int64(sets_a[i]), np.int64(sets_b[i])
            a, b = offsets[pa] + np.int64(rows_a[i]), offsets[pb] + np.int64(rows_b[i])
        else:
            a, b = np.int64(rows_a[i]), np.int64(rows_b[i])
            pa, pb = np.int64(party[a]), np.int64(party[b])
        if pa == pb:
            return np.zeros(0, dtype=np.int64), False
        sa, sb = np.int64(state[a]), np.int64(state[b])
        if sa != 0 and sb != 0 and (((sa & sb) >> up) != 0 or (sa & low) == (sb & low)):
            continue  # one group already, or two sharing a party: nothing changes, nothing to keep
        ga, gb = np.int32((sa & low) - 1), np.int32((sb & low) - 1)
        if ga < 0 and gb < 0:
            word = (((one << pa) | (one << pb)) << up) | (a + 1)
            state[a] = word
            state[b] = word
            rec[a, _SIZE] = 2
            rec[a, _HEAD] = a
            rec[a, _NEXT] = b
            rec[a, _TAIL] = b
            continue
        if ga < 0 or gb < 0:
            if ga < 0:
                g, new, bit = gb, a, one << pa
            else:
                g, new, bit = ga, b, one << pb
            if rec[g, _SIZE] == 1:
                word = (bit << up) | state[g]
                state[g] = word
                state[new] = word
                rec[rec[g, _TAIL], _NEXT] = new
                rec[g, _TAIL] = new
                rec[g, _SIZE] = 2
                continue
            state[new] = (bit << up) | (new + 1)
            rec[new, _SIZE] = 1
            rec[new, _HEAD] = new
            rec[new, _TAIL] = new
        else:
            # Every cross pair but this one must be a kept edge (each pair is at most one edge).
            every = True
            x = rec[ga, _HEAD]
            while x >= 0 and every:
                y = rec[gb, _HEAD]
                while y >= 0:
                    if x != a or y != b:
                        p, q = (x, y) if rec[x, _KEPT] <= rec[y, _KEPT] else (y, x)
                        k = rec[p, _FIRST]
                        while k >= 0 and other[k] != q:
                            k = older[k]
                        if k < 0:
                            every = False
                            break
                    y = rec[y, _NEXT]
                x = rec[x, _NEXT]
            if every:
                keep, gone = (ga, gb) if rec[ga, _SIZE] >= rec[gb, _SIZE] else (gb, ga)
                rec[rec[keep, _TAIL], _NEXT] = rec[gone, _HEAD]
                rec[keep, _TAIL] = rec[gone, _TAIL]
                rec[keep, _SIZE] += rec[gone, _SIZE]
                rec[gone, _SIZE] = 0
                word = ((sa | sb) & ~low) | (keep + 1)
                y = rec[keep, _HEAD]
                while y >= 0:
                    state[y] = word
                    y = rec[y, _NEXT]
                continue
        # The edge now joins two groups that may still merge: kept for their later checks.
        if m + 2 > len(other):
            other, older = _grown(other, m + 2), _grown(older, m + 2)
        other[m], older[m], rec[a, _FIRST] = b, rec[a, _FIRST], m
        other[m + 1], older[m + 1], rec[b, _FIRST] = a, rec[b, _FIRST], m + 1
        rec[a, _KEPT] += 1
        rec[b, _KEPT] += 1
        m += 2
    return _roots(rec[:, _SIZE], rec[:, _HEAD], rec[:, _NEXT]), True


@njit(cache=True, nogil=True)
def _roots(size: np.ndarray, head: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Each node's group's smallest member (``-1``: in no group of two or more), from the groups' member lists."""
    n = len(size)
    root = np.full(n, -1, dtype=np.int64)
    for g in range(n):
        if size[g] > 1:
            smallest = head[g]
            x = head[g]
            while x >= 0:
                smallest = min(smallest, x)
                x = nxt[x]
            x = head[g]
            while x >= 0:
                root[x] = smallest
                x = nxt[x]
    return root


@njit(cache=True, nogil=True)
def _has_repeats(indptr: np.ndarray, nbr: np.ndarray, n: int) -> bool:
    """Whether some pair of nodes is given twice (either way round)."""
    mark = np.full(n, -1, dtype=np.int64)
    for x in range(n):
        for k in range(indptr[x], indptr[x + 1]):
            if mark[nbr[k]] == x:
                return True
            mark[nbr[k]] = x
    return False


def greedy_roots(u: np.ndarray, v: np.ndarray, n: int, party: np.ndarray | None = None, *,
                 distinct: bool = False) -> np.ndarray:
    """The groups of anonlink's greedy solver over nodes ``0..n-1`` from edges ``(u[i], v[i])`` taken in order.

    Args:
        u: one end of each candidate pair (node numbers below ``n``), in the order to solve them.
        v: the other end.
        n: number of nodes.
        party: each node's dataset, if known: when every pair joins two datasets (as a round's
            candidates do) merges of groups sharing a dataset are refused without looking.
        distinct: the caller knows no pair of nodes is given twice (either way round), as
            :func:`~coordinator.linkage.candidate_batches.sorted_distinct_batches` finds out: with
            ``party`` (and no pair inside one party) the solve then keeps no adjacency of every
            edge (:func:`_solve_distinct`). Wrongly set, the groups may differ from anonlink's.

    Returns:
        Per node, the smallest node of its group, or ``-1`` when it is in no group of two or more.

    Examples:
        >>> greedy_roots(np.array([0, 2, 1]), np.array([1, 3, 2]), 4).tolist()
        [0, 0, 2, 2]
    """
    if n >= 2**31:
        raise ValueError(f"at most 2**31 - 1 records can be solved, got {n}")
    u = np.ascontiguousarray(u, dtype=np.int32)  # 4 bytes a pair: a round's floor holds millions
    v = np.ascontiguousarray(v, dtype=np.int32)
    if len(u) == 0:
        return np.full(n, -1, dtype=np.int64)
    if distinct and party is not None and len(party) and 0 <= np.min(party) and np.max(party) < 31:
        none = np.zeros(0, dtype=np.int64)
        party = np.asarray(party, dtype=np.int8)
        root, solved = _solve_distinct(u, none, v, none, none, party, n, *_state_words(n, int(np.max(party)) + 1))
        if solved:
            return root
    indptr, nbr = _adjacency(u, v, n)
    # A pair given twice counts twice, as anonlink counts it: then every cross pair's edges are counted.
    repeated = _has_repeats(indptr, nbr, n)
    bit = np.zeros(n, dtype=np.int64)
    if party is not None and not repeated and len(party) and 0 <= np.min(party) and np.max(party) < 63:
        party = np.asarray(party, dtype=np.int8)
        if not _any_within(u, v, party):
            bit = np.left_shift(1, party.astype(np.int64))
    return _solve(u, v, n, indptr, nbr, repeated, bit)


def distinct_dataset_roots(sizes: Sequence[int], d_a: np.ndarray, r_a: np.ndarray, d_b: np.ndarray,
                           r_b: np.ndarray) -> np.ndarray | None:
    """:func:`greedy_roots` of distinct pairs ``(d_a, r_a) - (d_b, r_b)`` between datasets of ``sizes`` records.

    Records are numbered dataset after dataset. The pairs must be known distinct (see ``distinct``
    of :func:`greedy_roots`); the columns are read as they are. ``None`` where the adjacency-free
    solve does not apply (a pair inside one dataset, 31 datasets or more, 2**31 records or more):
    then number the nodes and call :func:`greedy_roots`.

    >>> distinct_dataset_roots([2, 2], np.array([0, 0]), np.array([0, 1]), np.array([1, 1]), np.array([1, 0])).tolist()
    [0, 1, 1, 0]
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    if n >= 2**31 or len(sizes) >= 31:
        return None
    if len(d_a) == 0:
        return np.full(n, -1, dtype=np.int64)
    columns = [np.ascontiguousarray(x) for x in (r_a, d_a, r_b, d_b)]
    root, solved = _solve_distinct(*columns, offsets, np.zeros(0, dtype=np.int8), n, *_state_words(n, len(sizes)))
    return root if solved else None


@njit(cache=True, nogil=True)
def _any_within(u: np.ndarray, v: np.ndarray, party: np.ndarray) -> bool:
    """Whether some pair joins two nodes of one party."""
    for i in range(len(u)):
        if party[u[i]] == party[v[i]]:
            return True
    return False


def greedy_solve_groups(candidates: tuple, sizes: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Drop-in for ``anonlink.solving.greedy_solve`` on datasets of ``sizes`` records: its groups, as tuples.

    Groups come out in the order of their smallest ``(dataset, row)``, members sorted (anonlink's
    own order is that of its hash tables; the groups are the same).
    """
    _, (d_a, d_b), (r_a, r_b) = candidates
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    u = offsets[np.asarray(d_a, dtype=np.int64)] + np.asarray(r_a, dtype=np.int64)
    v = offsets[np.asarray(d_b, dtype=np.int64)] + np.asarray(r_b, dtype=np.int64)
    root = greedy_roots(u, v, int(offsets[-1]), np.repeat(np.arange(len(sizes)), sizes))
    members = np.flatnonzero(root >= 0)
    order = np.lexsort((members, root[members]))
    members = members[order]
    dataset = np.searchsorted(offsets, members, side="right") - 1
    groups: dict[int, list[tuple[int, int]]] = {}
    for node, d, r in zip(members.tolist(), dataset.tolist(), (members - offsets[dataset]).tolist(), strict=True):
        groups.setdefault(int(root[node]), []).append((d, r))
    return tuple(tuple(g) for g in groups.values())
