"""Candidate edges of new rows against the incremental state: frozen blocking, then Dice.

An incremental round compares only the new rows: with every live row (new ones included, each
pair once), and keeps the pairs at or above the threshold. For the result to equal a full run
over the same rows, whether a pair is compared must depend on the pair alone, never on which
other rows exist. So, unlike ``coordinator.blocking`` (which measures bit frequencies and splits
giant buckets on each run's data), the incremental blocking index is *frozen* when the state is
created: the band bit positions, and the set of ``(band, key)`` buckets too big to compare, are
stored in the state and reused every round. A pair is a candidate when the two rows share a key
in some band and that bucket is not frozen out; in ``all-pairs`` mode (small linkages) every
cross-agency pair is.

Keys are stored per band and row (4 bytes each), so a round only computes the new rows' keys.
A round adding few rows gathers their candidates from the stored keys band by band and scores
them block by block of rows, compiled (:mod:`coordinator.linkage.edge_kernels`); the first round,
where every row is new, joins the bands per pair of agencies and scores through
``coordinator.similarity.dice_rows``. Both are bit-identical to anonlink's Dice and score the
same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coordinator.linkage.blocking import (
    BlockingConfig,
    bit_frequencies,
    choose_band_bits,
)
from coordinator.linkage.bucket_join import iter_pair_chunks, join_bands, sort_band
from coordinator.linkage.similarity import CHUNK_PAIRS, as_words, dice_rows, popcounts
from pplink.errors import MatchError

__all__ = ["Edges", "apply_skip", "band_keys", "find_edges", "freeze_positions", "giant_buckets", "sentinel_for"]

#: Rows per block when computing band keys (an unpacked block is rows x bits float32).
_KEY_ROWS = 4_096
#: Pairs per all-pairs work unit.
_ALL_PAIRS_CHUNK = 1 << 22

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]


def band_keys(clks: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each row's key in each band: bit ``t`` of band ``b``'s key is the row's bit ``positions[b, t]``.

    The gather is one float32 matrix product per block of rows: a key is a sum of distinct powers
    of two below ``2**24``, which float32 holds exactly.

    Args:
        clks: ``(n, bytes)`` packed encodings (big-endian bits).
        positions: ``(bands, bits)`` bit positions, ``bits <= 24``.

    Returns:
        ``(bands, n)`` uint32 keys.

    Examples:
        >>> band_keys(np.array([[0b10100000]], dtype=np.uint8), np.array([[0, 2], [1, 2]])).tolist()
        [[3], [2]]
    """
    bands, bits = positions.shape
    nbits = clks.shape[1] * 8
    weights = np.zeros((nbits, bands), dtype=np.float32)
    for t in range(bits):
        weights[positions[:, t], np.arange(bands)] += np.float32(1 << t)
    out = np.empty((bands, clks.shape[0]), dtype=np.uint32)
    for start in range(0, clks.shape[0], _KEY_ROWS):
        block = np.unpackbits(clks[start : start + _KEY_ROWS], axis=1).astype(np.float32)
        out[:, start : start + len(block)] = (block @ weights).T.astype(np.uint32)
    return out


def freeze_positions(clks: np.ndarray, party: np.ndarray, config: BlockingConfig) -> np.ndarray:
    """Choose the frozen band bit positions from the first round's rows.

    Args:
        clks: every row's packed encoding.
        party: every row's party index.
        config: band count, bits per band and seed.

    Returns:
        ``(bands, bits)`` bit positions.

    Raises:
        MatchError: bands wider than 24 bits, or encodings too short for a band.
    """
    if config.bits_per_band > 24:
        raise MatchError("incremental blocking needs bits_per_band <= 24")
    datasets = [clks[party == p] for p in np.unique(party)]
    try:
        return choose_band_bits(bit_frequencies(datasets, seed=config.seed), config)[:, : config.bits_per_band]
    except ValueError as err:
        raise MatchError(str(err)) from err


def giant_buckets(keys: np.ndarray, party: np.ndarray, max_pairs: int) -> np.ndarray:
    """The ``(band, key)`` buckets of the first round that would give more than ``max_pairs`` cross-agency pairs.

    They are frozen out for good: a pair only in such buckets is never compared, in any round.

    Returns:
        ``(k, 2)`` uint64 ``(band, key)``.
    """
    skip = []
    parties = np.unique(party)
    for b in range(keys.shape[0]):
        uniq, inverse, total = np.unique(keys[b], return_inverse=True, return_counts=True)
        total = total.astype(np.int64)
        if not (total * total // 2 > max_pairs).any():  # an upper bound on cross-agency pairs
            continue
        squares = np.zeros(len(uniq), dtype=np.int64)
        for p in parties:
            squares += np.bincount(inverse[party == p], minlength=len(uniq)).astype(np.int64) ** 2
        skip.extend((b, int(k)) for k in uniq[(total * total - squares) // 2 > max_pairs])
    return np.array(skip, dtype=np.uint64).reshape(-1, 2)


def sentinel_for(positions: np.ndarray) -> int:
    """The key of a frozen-out bucket: one above every real key."""
    return 1 << positions.shape[1]


def apply_skip(keys: np.ndarray, skip: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Replace frozen-out bucket keys by the sentinel (in place); return ``keys``."""
    sentinel = sentinel_for(positions)
    for b in np.unique(skip[:, 0]).tolist():
        row = keys[b]
        row[np.isin(row, skip[skip[:, 0] == b, 1].astype(np.uint32))] = sentinel
    return keys


def _keep(party: np.ndarray, is_new: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairs (new row x, row y) to compare: other agency, and each new-new pair once (x < y)."""
    return (party[x] != party[y]) & (~is_new[y] | (y > x))


def _score(words: np.ndarray, pops: np.ndarray, x: np.ndarray, y: np.ndarray, threshold: float,
           out: list[Edges]) -> int:
    sims = dice_rows(words, words, pops, pops, x, y)
    hit = sims >= threshold
    out.append((x[hit], y[hit], sims[hit]))
    return len(sims)


def _band_edges(band: int, keys: np.ndarray, new_rows: np.ndarray, ctx: tuple) -> tuple[list[Edges], int]:
    """Score the pairs of one band that have a new row: each pair once, never within an agency.

    New rows of agency ``p`` meet every row of a later agency and the old rows of an earlier
    one, so a pair of two new rows is generated once, from its earlier agency's side.
    """
    party, is_new, words, pops, threshold, sentinel = ctx
    column = keys[band]
    table = np.zeros(sentinel + 1, dtype=bool)
    table[column[new_rows]] = True
    table[sentinel] = False
    hits = np.flatnonzero(table[column])  # rows sharing a key with some new row
    parties = int(party.max()) + 1 if len(party) else 0
    hit_party = party[hits]
    every = [hits[hit_party == q] for q in range(parties)]
    old = [rows[~is_new[rows]] for rows in every]
    grouped_every = [sort_band(column[rows], sentinel) for rows in every]
    grouped_old = [sort_band(column[rows], sentinel) for rows in old]
    new_party = party[new_rows]
    found: list[Edges] = []
    compared = 0
    for p in range(parties):
        mine = new_rows[new_party == p]
        if not len(mine):
            continue
        grouped = sort_band(column[mine], sentinel)
        for q in range(parties):
            if q == p:
                continue
            rows, other = (every[q], grouped_every[q]) if q > p else (old[q], grouped_old[q])
            for i, j in iter_pair_chunks(join_bands(grouped, other), CHUNK_PAIRS):
                compared += _score(words, pops, mine[i], rows[j], threshold, found)
    return found, compared


def _band_edges_few(band: int, keys: np.ndarray, new_rows: np.ndarray, ctx: tuple) -> tuple[list[Edges], int]:
    """As :func:`_band_edges`, for a round adding few rows: one join, one filter, one scoring.

    The numpy reference the compiled scan (:mod:`coordinator.linkage.edge_kernels`) replaced; kept
    for the tests that check the scan scores the same pairs.

    The new rows are joined with every row sharing their keys; pairs within an agency, and
    new-new pairs seen from their later side, are then dropped. Joining per pair of agencies
    would sort and score a dozen small pieces per band, and what the filter drops is little.
    """
    party, is_new, words, pops, threshold, sentinel = ctx
    column = keys[band]
    table = np.zeros(sentinel + 1, dtype=bool)
    table[column[new_rows]] = True
    table[sentinel] = False
    hits = np.flatnonzero(table[column])
    xs, ys = [], []
    for i, j in iter_pair_chunks(join_bands(sort_band(column[new_rows], sentinel), sort_band(column[hits], sentinel)),
                                 1 << 20):
        x, y = new_rows[i], hits[j]
        keep = _keep(party, is_new, x, y)
        xs.append(x[keep])
        ys.append(y[keep])
    if not xs:
        return [], 0
    x, y = np.concatenate(xs), np.concatenate(ys)
    found: list[Edges] = []
    compared = 0
    for first in range(0, len(x), CHUNK_PAIRS):
        part = slice(first, first + CHUNK_PAIRS)
        compared += _score(words, pops, x[part], y[part], threshold, found)
    return found, compared


def _all_pairs_edges(start: int, new_rows: np.ndarray, n: int, ctx: tuple) -> tuple[list[Edges], int]:
    party, is_new, words, pops, threshold, _ = ctx
    per = max(1, _ALL_PAIRS_CHUNK // max(n, 1))
    x = np.repeat(new_rows[start : start + per], n)
    y = np.tile(np.arange(n, dtype=np.int64), min(per, len(new_rows) - start))
    keep = _keep(party, is_new, x, y)
    found: list[Edges] = []
    return found, _score(words, pops, x[keep], y[keep], threshold, found)


def find_edges(
    clks: np.ndarray,
    party: np.ndarray,
    keys: np.ndarray | None,
    new_rows: np.ndarray,
    threshold: float,
    *,
    sentinel: int = 0,
    workers: int = 2,
) -> tuple[Edges, int]:
    """Every edge at or above ``threshold`` that has a new row at one end.

    Args:
        clks: ``(n, bytes)`` encodings of every live row.
        party: ``(n,)`` party index of every live row.
        keys: ``(bands, n)`` band keys (blocked mode), or ``None`` for all-pairs.
        new_rows: ascending global numbers of the new rows.
        threshold: the Dice threshold.
        sentinel: the frozen-out key (blocked mode).
        workers: threads.

    Returns:
        ``((a, b, sim), comparisons)``: edges with ``party[a] < party[b]``, each pair once,
        sorted by ``(a, b)``; and the number of Dice scores computed.
    """
    n = len(party)
    new_rows = np.asarray(new_rows, dtype=np.int64)
    is_new = np.zeros(n, dtype=bool)
    is_new[new_rows] = True
    words = np.ascontiguousarray(as_words(clks))
    scan = keys is not None and 8 * len(new_rows) < n
    # The compiled scan counts the bits of the rows it reads itself.
    ctx = (party, is_new, words, None if scan else popcounts(words), threshold, sentinel)
    if keys is None:
        per = max(1, _ALL_PAIRS_CHUNK // max(n, 1))
        tasks: Sequence = [lambda s=s: _all_pairs_edges(s, new_rows, n, ctx) for s in range(0, len(new_rows), per)]
    else:
        tasks = [lambda b=b: _band_edges(b, keys, new_rows, ctx) for b in range(keys.shape[0])]
    if scan:
        # Few new rows (an ordinary round): one compiled pass over the state; many (the first round): per band
        # and agency pair.
        from coordinator.linkage.edge_kernels import scan_edges

        found, compared = scan_edges(keys, party, new_rows, words, threshold, sentinel, workers)
        results = [([found], compared)]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda task: task(), tasks))
    parts = [edge for found, _ in results for edge in found]
    compared = sum(c for _, c in results)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty, np.zeros(0)), compared
    x, y, s = (np.concatenate([p[i] for p in parts]) for i in range(3))
    swap = party[x] > party[y]
    a, b = np.where(swap, y, x), np.where(swap, x, y)
    code, first = np.unique(a * n + b, return_index=True)  # a pair found in several bands counts once
    return (code // n, code % n, s[first]), compared
