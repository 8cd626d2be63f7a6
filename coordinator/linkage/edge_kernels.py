"""The incremental round's compare step, compiled: the new rows' candidates gathered band by band, scored row by row.

A round adds few rows (1% is typical) to a large state, whose band keys are stored per band in
row order. Per band, the new rows' keys become a bitmap over the key space (256 KB at 21 bits)
with a rank per 64-bit word, so that a key's group of new rows is found with one word read and a
popcount. The state's rows are then taken a *pass* (65,536 rows) at a time:

1. **Gather** (per band, its tables in the core's cache): one compiled loop walks the pass's keys
   of the band and lists each candidate pair (new row, state row) it finds, already filtered
   (another agency; a new-new pair once). The pairs go to one buffer, in band order and, within
   a band, in row order, with where each block of 2,048 rows starts.
2. **Score** (per block of 2,048 rows, their 256 KB of encodings in the core's cache): every
   band's pairs of the block are scored, the new rows' encodings prefetched a few pairs ahead.

Scoring band by band instead (the scan this replaced) reads ~30% of the state's rows per band,
so every page of the 512 MB of encodings crosses the memory bus once per band: 96 times a round
at the default blocking; scoring row by row through every band at once keeps only 96 bands'
tables, too many to stay in cache. Here each encoding is read once per pass and each band's
tables stay in cache while it is gathered. Nothing is sorted per pair; the loops release the
GIL, and each of ``workers`` threads takes its share of the rows.

The pairs scored are exactly those of the per-band numpy join
(:func:`coordinator.linkage.edges._band_edges_few`: a new row ``x`` and a row ``y`` of another
agency sharing a key that is not frozen out; a new-new pair once, as ``y > x``; a pair sharing
keys in several bands scored in each), and each score is anonlink's Dice arithmetic, so the
edges and the comparison count are equal (``tests/coordinator/test_edge_kernels.py``).
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

#: State rows per pass (gathered through every band, then scored); at most 65,536 (rows are uint16 in a pass).
_PASS_ROWS = 1 << 16
#: State rows per scoring block: their encodings (256 KB at 1024 bits) stay in the core's cache while scored.
_BLOCK_ROWS = 1 << 11
#: Candidate pairs one thread's first gather buffer holds (a pass finding more is gathered again, in twice as many).
_FIRST_PAIRS = 1 << 22
#: Edges one thread's first output holds (a block finding more resumes with twice as many).
_FIRST_CAPACITY = 1 << 14
#: How many pairs ahead the scorer asks for a new row's encoding.
_AHEAD = 16


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
def _gather(keys, lo, hi, block, bitmaps, ranks, group_start, group_rows, group_party, group_global, tags, new_flag,  # noqa: ANN001, ANN202, E501
            pair_x, pair_y, starts):
    """List the candidate pairs of state rows ``lo:hi``, band by band, each band's in row order.

    ``tags[y]`` is row ``y``'s party, plus ``new_flag`` when the row is new this round;
    ``group_party[i]`` and ``group_global[i]`` are new row ``group_rows[i]``'s party and row number.
    ``starts[b, k]`` receives where band ``b``'s pairs of block ``k`` (rows ``lo + k * block`` on)
    begin in ``pair_x`` (new row index) and ``pair_y`` (row minus ``lo``).

    Returns:
        ``(blocks, pairs)``; ``blocks`` is ``-1`` when the pairs do not fit the buffers.
    """
    bands = keys.shape[0]
    blocks = (hi - lo + block - 1) // block
    capacity = pair_x.shape[0]
    hit_y = np.empty(block, dtype=np.int64)
    hit_g = np.empty(block, dtype=np.int64)
    hit_n = np.empty(block, dtype=np.int64)
    pos = 0
    for b in range(bands):
        row_keys = keys[b]
        bitmap = bitmaps[b]
        rank = ranks[b]
        for k in range(blocks):
            starts[b, k] = pos
            first = lo + k * block
            end = min(first + block, hi)
            # 1. The block's rows whose key some new row holds, without a branch per row (the frozen-out
            # sentinel's bit is never set: the bitmaps reach it).
            hits = 0
            for y in range(first, end):
                key = row_keys[y]
                hit_y[hits] = y
                hits += np.int64((bitmap[key >> 6] >> np.uint64(key & 63)) & np.uint64(1))
            # 2. Their groups (the key's rank among the band's keys), looked up together (independent loads overlap).
            total = 0
            for h in range(hits):
                key = np.int64(row_keys[hit_y[h]])
                word = bitmap[key >> 6]
                g = rank[key >> 6] + np.int64(popcount64(word & ((np.uint64(1) << np.uint64(key & 63)) - np.uint64(1))))
                hit_g[h] = group_start[g]
                hit_n[h] = group_start[g + 1] - group_start[g]
                total += hit_n[h]
            if pos + total > capacity:
                return -1, pos
            # 3. The pairs: another agency's row; a new-new pair once, from its earlier row. Each group
            # member's party and row number sit beside it (no load waits on another), and the rare new
            # row takes its own loop.
            for h in range(hits):
                y = hit_y[h]
                tag = tags[y]
                party_y = tag & (new_flag - 1)
                g0 = hit_g[h]
                if tag >= new_flag:
                    for i in range(g0, g0 + hit_n[h]):
                        pair_x[pos] = group_rows[i]
                        pair_y[pos] = y - lo
                        pos += np.int64((group_party[i] != party_y) & (y > group_global[i]))
                else:
                    for i in range(g0, g0 + hit_n[h]):
                        pair_x[pos] = group_rows[i]
                        pair_y[pos] = y - lo
                        pos += np.int64(group_party[i] != party_y)
        starts[b, blocks] = pos
    return blocks, pos


@njit(nogil=True, cache=True)
def _score_blocks(lo, hi, block, blocks, k0, pair_x, pair_y, starts, new_words, new_pops, words, threshold, vector,  # noqa: ANN001, ANN202, E501
                  out_x, out_y, out_sim, kept0):
    """Score the gathered pairs block by block, from block ``k0``; keep those at or above ``threshold``.

    Returns:
        ``(next_block, kept, scored)``: where to resume (``blocks`` when done: a block whose edges
        do not fit the output is left for the next call, with a larger output), the edges now in
        ``out_*`` (new row index, row, similarity; each pair once), and the pairs scored by this call.
    """
    bands = starts.shape[0]
    width = words.shape[1]
    # The outputs are never reassigned here: an array reassigned in a loop costs reference counting on every use.
    capacity = out_sim.shape[0]
    pops = np.empty(block, dtype=np.int64)
    kept = kept0
    scored = 0
    for k in range(k0, blocks):
        first = lo + k * block
        end = min(first + block, hi)
        for y in range(first, end):  # reads the block's encodings into the cache, once
            if vector:
                pops[y - first] = np.int64(_and_popcount_1024(words, y, words, y))
            else:
                count = np.int64(0)
                for w in range(width):
                    count += np.int64(popcount64(words[y, w]))
                pops[y - first] = count
        block_kept, block_scored = kept, scored
        for b in range(bands):
            stop = starts[b, k + 1]
            for e in range(starts[b, k], stop):
                if e + _AHEAD < stop:
                    ahead = pair_x[e + _AHEAD]
                    prefetch(new_words, ahead, 0)
                    prefetch(new_words, ahead, width - 1)
                xi = pair_x[e]
                y = lo + np.int64(pair_y[e])
                if vector:
                    shared = _and_popcount_1024(new_words, xi, words, y)
                else:
                    shared = np.uint64(0)
                    for w in range(width):
                        shared += popcount64(new_words[xi, w] & words[y, w])
                denominator = new_pops[xi] + pops[y - first]
                # anonlink's arithmetic: (2 * popcount(a & b)) / (double)(|a| + |b|); two empty encodings score 0.
                sim = 0.0 if denominator == 0 else 2.0 * np.float64(shared) / np.float64(denominator)
                if sim >= threshold:
                    if kept == capacity:
                        return k, block_kept, block_scored
                    out_x[kept] = xi
                    out_y[kept] = y
                    out_sim[kept] = sim
                    kept += 1
            scored += stop - starts[b, k]
        # A pair sharing keys in several bands is found in each, always in the same block (its row's): keep it once.
        if kept - block_kept > 1:
            code = out_x[block_kept:kept] * block + (out_y[block_kept:kept] - first)
            order = np.argsort(code)
            xs, ys, sims = out_x[block_kept:kept][order], out_y[block_kept:kept][order], out_sim[block_kept:kept][order]
            code = code[order]
            at = block_kept
            for i in range(len(order)):
                if i == 0 or code[i] != code[i - 1]:
                    out_x[at], out_y[at], out_sim[at] = xs[i], ys[i], sims[i]
                    at += 1
            kept = at
    return blocks, kept, scored


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
        workers: threads, each scanning its share of the rows.

    Returns:
        ``x`` the new row, ``y`` the other (another agency's row; a new one only when ``y > x``)
        and their Dice similarity, for each pair at or above ``threshold``, once (a pair sharing
        keys in several bands is scored in each); and how many scores were computed.
    """
    new_rows = np.asarray(new_rows, dtype=np.int64)
    new_keys = np.ascontiguousarray(keys[:, new_rows])
    new_words = words[new_rows]
    new_pops = row_popcounts(new_words)
    # A byte per row where the parties allow (fewer than 128), so the gather reads 1 byte a row, not 3.
    small = not len(party) or int(party.max()) < 0x80
    new_flag = 0x80 if small else 0x8000
    tags = party.astype(np.uint8 if small else np.uint16)
    tags[new_rows] |= new_flag
    new_party = tags[new_rows] & (new_flag - 1)
    n = keys.shape[1]
    vector = VECTOR_POPCOUNT and words.shape[1] == 16
    bitmaps, ranks, group_start, group_rows = _build_tables(new_keys, int(sentinel))
    group_party, group_global = new_party[group_rows], new_rows[group_rows]
    pass_rows, block = min(_PASS_ROWS, 1 << 16), _BLOCK_ROWS

    def share(rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        lo, hi = rows
        size = _FIRST_PAIRS
        pair_x, pair_y = np.empty(size, np.int32), np.empty(size, np.uint16)
        starts = np.empty((keys.shape[0], pass_rows // block + 2), np.int64)
        capacity = _FIRST_CAPACITY
        out_x, out_y, out_sim = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity)
        kept = scored = 0
        for first in range(lo, hi, pass_rows):
            end = min(first + pass_rows, hi)
            while True:
                blocks, pairs = _gather(keys, first, end, block, bitmaps, ranks, group_start, group_rows, group_party,
                                        group_global, tags, new_flag, pair_x, pair_y, starts)
                if blocks >= 0:
                    break
                size *= 2  # only a pass that found more pairs than the buffers hold comes round again
                pair_x, pair_y = np.empty(size, np.int32), np.empty(size, np.uint16)
            k = 0
            while k < blocks:
                k, kept, done = _score_blocks(first, end, block, blocks, k, pair_x, pair_y, starts, new_words,
                                              new_pops, words, float(threshold), vector, out_x, out_y, out_sim, kept)
                scored += done
                if k < blocks:  # the output is full: twice as large, keeping what it holds
                    capacity *= 2
                    out_x, out_y, out_sim = (np.concatenate([a[:kept], np.empty(capacity - kept, a.dtype)])
                                             for a in (out_x, out_y, out_sim))
        return new_rows[out_x[:kept]], out_y[:kept], out_sim[:kept], scored

    per = -(-n // max(workers, 1)) if n else 0
    shares = [(lo, min(n, lo + per)) for lo in range(0, n, per)] if per else []
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(pool.map(share, shares))
    empty = [np.zeros(0, dtype=np.int64)]
    x, y = (np.concatenate([r[i] for r in results] or empty) for i in range(2))
    sim = np.concatenate([r[2] for r in results] or [np.zeros(0)])
    return (x, y, sim), sum(r[3] for r in results)
