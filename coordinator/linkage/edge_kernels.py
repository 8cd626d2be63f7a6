"""The incremental round's compare step, compiled: one scan per band of the state's keys, scoring as it goes.

A round adds few rows (1% is typical) to a large state, whose band keys are stored per band in
row order. Per band, the new rows' keys become a bitmap over the key space (256 KB at 21 bits:
it stays in the core's cache) with a rank per 64-bit word, so that a key's group of new rows is
found with one word read and a popcount. One compiled loop then walks the band's stored keys in
row order, a chunk at a time: it lists the chunk's rows whose key a new row holds and requests
their encodings at once (so the loads overlap), then scores each against its group in place,
with ``vpopcntq`` where the CPU has it. Nothing per candidate pair is sorted, gathered or
materialised by numpy, and the loop releases the GIL: bands run on every core.

The pairs scored are exactly those of the per-band numpy join it replaces
(:func:`coordinator.linkage.edges.find_edges`: a new row ``x`` and a row ``y`` of another agency
sharing a key that is not frozen out; a new-new pair once, as ``y > x``; a pair sharing keys in
several bands scored in each), and each score is anonlink's Dice arithmetic, so the edges and
the comparison count are equal (``tests/coordinator/test_edge_kernels.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from coordinator.linkage.kernels import VECTOR_POPCOUNT, popcount64, prefetch, row_popcounts

__all__ = ["scan_edges"]

#: State rows looked up before their hits are scored: their encodings are requested together.
_CHUNK = 512
#: Edges one band's first output holds (a band finding more resumes with twice as many).
_FIRST_CAPACITY = 1 << 14


@njit(nogil=True, cache=True)
def _build_tables(new_keys, sentinel):  # noqa: ANN001, ANN202
    """Per band, the new rows grouped by key: bitmap and ranks of the keys, groups in key order.

    Returns:
        ``(bitmaps, ranks, group_start, group_rows)``: bit ``k`` of ``bitmaps[b]`` is set when a
        new row holds key ``k`` in band ``b``; ``ranks[b, w]`` counts the groups before word ``w``
        (of all bands before ``b`` too), so a key's group is its rank; group ``g`` is new rows
        (indices into ``new_keys``' columns) ``group_rows[group_start[g]:group_start[g + 1]]``.
    """
    bands, m = new_keys.shape
    words = (sentinel >> 6) + 1
    bitmaps = np.zeros((bands, words), dtype=np.uint64)
    ranks = np.zeros((bands, words), dtype=np.int32)
    group_start = np.empty(bands * m + 1, dtype=np.int32)
    group_rows = np.empty(bands * m, dtype=np.int32)
    groups = 0
    at = 0
    for b in range(bands):
        order = np.argsort(new_keys[b])
        previous = -1
        for i in order:
            key = np.int64(new_keys[b, i])
            if key >= sentinel:
                break  # sorted: the frozen-out sentinel (the largest key) comes last
            if key != previous:
                bitmaps[b, key >> 6] |= np.uint64(1) << np.uint64(key & 63)
                group_start[groups] = at
                groups += 1
                previous = key
            group_rows[at] = i
            at += 1
    group_start[groups] = at
    total = np.int32(0)
    for b in range(bands):
        for w in range(words):
            ranks[b, w] = total
            total += np.int32(popcount64(bitmaps[b, w]))
    return bitmaps, ranks, group_start[: groups + 1], group_rows[:at]




@intrinsic
def _and_popcount_1024(typingctx, a, p, b, q):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """popcount(a[p] & b[q]) for rows of 16 uint64 words (1024 bits), as two 512-bit vectors.

    :func:`coordinator.linkage.kernels.and_popcount_1024` for rows of two arrays; used only where
    the CPU has AVX-512 VPOPCNTDQ (the count is exact either way).
    """
    signature = types.uint64(a, types.intp, b, types.intp)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202
        zero = context.get_constant(types.intp, 0)
        i64 = ir.IntType(64)
        vec = ir.VectorType(i64, 8)
        pointers = []
        for array_type, array, row in ((sig.args[0], args[0], args[1]), (sig.args[2], args[2], args[3])):
            data = context.make_array(array_type)(context, builder, array)
            pointer = cgutils.get_item_pointer(context, builder, array_type, data, [row, zero])
            pointers.append(builder.bitcast(pointer, vec.as_pointer()))
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), "llvm.ctpop.v8i64")
        total = None
        for half in range(2):
            idx = ir.Constant(i64, half)
            x = builder.load(builder.gep(pointers[0], [idx]), align=8)
            y = builder.load(builder.gep(pointers[1], [idx]), align=8)
            c = builder.call(ctpop, [builder.and_(x, y)])
            total = c if total is None else builder.add(total, c)
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [vec]),
                                                "llvm.vector.reduce.add.v8i64")
        return builder.call(reduce, [total])

    return signature, codegen




@njit(nogil=True, cache=True)
def _scan_band(row_keys, first, sentinel, bitmap, rank, group_start, group_rows, new_global, new_words, new_pops,  # noqa: ANN001, ANN202, E501
               new_party, tags, new_flag, words, threshold, vector, out_x, out_y, out_sim):
    """Score the rows from ``first`` on against the new rows sharing their key in one band, chunk by chunk.

    ``tags[y]`` is row ``y``'s party, plus ``new_flag`` when the row is new this round.

    Returns:
        ``(next_row, kept, scored)``: where to resume (``len(row_keys)`` when done: a chunk whose
        edges do not fit the output is left for the next call, with a larger output), edges
        written to ``out_*`` (new row index, other row, similarity), and pairs scored.
    """
    n = row_keys.shape[0]
    width = words.shape[1]
    # The outputs are never reassigned here: an array reassigned in a loop costs reference counting on every use.
    capacity = out_sim.shape[0]
    hit_rows = np.empty(_CHUNK, dtype=np.int64)
    hit_groups = np.empty(_CHUNK, dtype=np.int64)
    kept = 0
    scored = 0
    for start in range(first, n, _CHUNK):
        end = min(start + _CHUNK, n)
        # 1. The chunk's rows whose key some new row holds; their encodings are requested at once (the
        # loads overlap, where a plain loop would wait on each in turn).
        hits = 0
        for y in range(start, end):
            key = np.int64(row_keys[y])
            if key >= sentinel:
                continue
            word = bitmap[key >> 6]
            bit = np.uint64(key & 63)
            if (word >> bit) & np.uint64(1):
                hit_rows[hits] = y
                hit_groups[hits] = rank[key >> 6] + np.int64(popcount64(word & ((np.uint64(1) << bit) - np.uint64(1))))
                hits += 1
                prefetch(words, y, 0)
                prefetch(words, y, width - 1)
        # 2. Score each against its group of new rows.
        chunk_first, chunk_scored = kept, scored
        for h in range(hits):
            y = hit_rows[h]
            g = hit_groups[h]
            # One small tag per row (party, and whether it is new) and the popcount from the encoding
            # itself: per hit row, the scan reads no more than its key, its tag and its encoding.
            tag = tags[y]
            party_y = tag & (new_flag - 1)
            new_y = tag >= new_flag
            if vector:
                pop_y = np.int64(_and_popcount_1024(words, y, words, y))
            else:
                pop_y = np.int64(0)
                for w in range(width):
                    pop_y += np.int64(popcount64(words[y, w]))
            for i in range(group_start[g], group_start[g + 1]):
                xi = group_rows[i]
                if new_party[xi] == party_y or (new_y and y <= new_global[xi]):
                    continue
                scored += 1
                if vector:
                    shared = _and_popcount_1024(new_words, xi, words, y)
                else:
                    shared = np.uint64(0)
                    for w in range(width):
                        shared += popcount64(new_words[xi, w] & words[y, w])
                denominator = new_pops[xi] + pop_y
                # anonlink's arithmetic: (2 * popcount(a & b)) / (double)(|a| + |b|); two empty encodings score 0.
                sim = 0.0 if denominator == 0 else 2.0 * np.float64(shared) / np.float64(denominator)
                if sim >= threshold:
                    if kept == capacity:
                        return start, chunk_first, chunk_scored
                    out_x[kept] = xi
                    out_y[kept] = y
                    out_sim[kept] = sim
                    kept += 1
    return n, kept, scored


def scan_edges(
    keys: np.ndarray,
    party: np.ndarray,
    new_rows: np.ndarray,
    words: np.ndarray,
    threshold: float,
    sentinel: int,
    workers: int = 2,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """The edges that have a new row at one end: ``((x, y, sim), pairs scored)``.

    Args:
        keys: ``(bands, n)`` every live row's key per band (uint32; ``sentinel`` where frozen out).
        party: every live row's party index.
        new_rows: the new rows' numbers (distinct).
        words: every live row's encoding as uint64 words (C-contiguous).
        threshold: keep pairs scoring at least this.
        sentinel: the frozen-out key; every other key is below it.
        workers: threads, each scanning its share of the bands.

    Returns:
        ``x`` the new row, ``y`` the other (another agency's row; a new one only when ``y > x``)
        and their Dice similarity, for each pair at or above ``threshold`` in each band that finds
        it (the caller keeps each pair once); and how many scores were computed.
    """
    new_rows = np.asarray(new_rows, dtype=np.int64)
    new_keys = np.ascontiguousarray(keys[:, new_rows])
    new_words = words[new_rows]
    new_pops = row_popcounts(new_words)
    new_party = party[new_rows].astype(np.int64)
    # A byte per row where the parties allow (fewer than 128), so the scan streams 1 byte a row, not 3.
    small = not len(party) or int(party.max()) < 0x80
    new_flag = 0x80 if small else 0x8000
    tags = party.astype(np.uint8 if small else np.uint16)
    tags[new_rows] |= new_flag
    n = keys.shape[1]
    vector = VECTOR_POPCOUNT and words.shape[1] == 16

    def band(b: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], int]:
        bitmaps, ranks, group_start, group_rows = _build_tables(new_keys[b : b + 1], int(sentinel))
        xs, ys, sims, scored, first = [], [], [], 0, 0
        capacity = _FIRST_CAPACITY
        while first < n:
            out_x, out_y, out_sim = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity)
            first, kept, done = _scan_band(keys[b], first, int(sentinel), bitmaps[0], ranks[0], group_start,
                                           group_rows, new_rows, new_words, new_pops, new_party, tags, new_flag,
                                           words, float(threshold), vector, out_x, out_y, out_sim)
            xs.append(new_rows[out_x[:kept]])
            ys.append(out_y[:kept])
            sims.append(out_sim[:kept])
            scored += done
            capacity *= 2  # only a call cut short by a full output comes round again
        return xs, ys, sims, scored

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(band, range(keys.shape[0])))
    empty = [np.zeros(0, dtype=np.int64)]
    x, y = (np.concatenate([part for r in results for part in r[i]] or empty) for i in range(2))
    sim = np.concatenate([part for r in results for part in r[2]] or [np.zeros(0)])
    return (x, y, sim), sum(r[3] for r in results)
