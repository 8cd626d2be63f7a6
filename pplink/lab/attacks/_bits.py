"""Bit-matrix helpers shared by the attacks: unpacking, Dice scores, neighbour lists.

Encodings are packed ``uint8`` arrays of shape ``(n, filter_bits // 8)`` with big-endian bit order
(``bitarray.tobytes()``), as :class:`pplink.encoding.ClkEncoder` writes them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice_to_rows", "leader_clusters", "neighbours", "unpack"]


def unpack(clks: np.ndarray) -> np.ndarray:
    """Packed encodings to a ``bool`` matrix ``(n, filter_bits)``; column ``i`` is filter index ``i``."""
    return np.unpackbits(np.ascontiguousarray(clks, dtype=np.uint8), axis=1).astype(bool)


def _words(clks: np.ndarray) -> np.ndarray:
    data = np.ascontiguousarray(clks, dtype=np.uint8)
    if data.shape[1] % 8:
        data = np.pad(data, ((0, 0), (0, 8 - data.shape[1] % 8)))
    return data.view(np.uint64)


def dice_to_rows(clks: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Dice scores of every encoding in ``clks`` against every one in ``others``: ``(n, m)`` float32.

    Meant for a few hundred ``others`` (anchors); all-pairs over large sets goes through
    :func:`neighbours`.
    """
    a, b = _words(clks), _words(others)
    ones_a = np.bitwise_count(a).sum(axis=1, dtype=np.int64)
    ones_b = np.bitwise_count(b).sum(axis=1, dtype=np.int64)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    step = max(1, 4_000_000 // max(1, b.shape[0] * a.shape[1]))
    for start in range(0, a.shape[0], step):
        block = a[start : start + step]
        common = np.bitwise_count(block[:, None, :] & b[None, :, :]).sum(axis=2, dtype=np.int64)
        total = ones_a[start : start + step, None] + ones_b[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = np.where(total > 0, 2.0 * common / np.maximum(total, 1), 0.0)
    return out


def neighbours(clks: np.ndarray, threshold: float, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of distinct rows of ``clks`` with Dice at least ``threshold`` (each pair both ways).

    Uses anonlink's native all-pairs Dice, which keeps only pairs at or above the threshold.

    Args:
        clks: packed encodings.
        threshold: minimum Dice score.
        k: at most this many neighbours per row (the highest scoring); ``None`` for all.

    Returns:
        ``(rows, cols, scores)``, sorted by row, then by decreasing score.
    """
    from anonlink.similarities import dice_coefficient_accelerated
    from bitarray import bitarray

    n = clks.shape[0]
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float64)
    filters = []
    for row in np.ascontiguousarray(clks, dtype=np.uint8):
        bits = bitarray(endian="big")
        bits.frombytes(row.tobytes())
        filters.append(bits)
    # One extra slot per row: the row always finds itself (Dice 1) and is dropped below.
    scores, (left, right) = dice_coefficient_accelerated([filters, filters], threshold, None if k is None else k + 1)
    rows = np.frombuffer(left, dtype=np.uint32).astype(np.int64)
    cols = np.frombuffer(right, dtype=np.uint32).astype(np.int64)
    sims = np.frombuffer(scores, dtype=np.float64).copy()
    keep = rows != cols
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    if k is not None:
        # anonlink caps pairs per row of the first dataset; make the lists symmetric then re-cap.
        rows, cols = np.concatenate([rows, cols]), np.concatenate([cols, rows])
        sims = np.concatenate([sims, sims])
        codes = rows * n + cols
        _, first = np.unique(codes, return_index=True)
        rows, cols, sims = rows[first], cols[first], sims[first]
    order = np.lexsort((-sims, rows))
    rows, cols, sims = rows[order], cols[order], sims[order]
    if k is not None:
        starts = np.searchsorted(rows, np.arange(n))
        rank = np.arange(rows.size) - starts[rows]
        keep = rank < k
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
    return rows, cols, sims


def leader_clusters(clks: np.ndarray, threshold: float, counts: np.ndarray | None = None) -> np.ndarray:
    """Group near-identical encodings into clusters, each around a leader.

    The encoding with the most records within ``threshold`` (Dice) leads a cluster of itself and
    its unclustered neighbours, then the next, and so on.

    Args:
        clks: packed encodings (typically distinct ones).
        threshold: Dice at or above which an encoding joins a leader.
        counts: how many records each encoding stands for (1 each when ``None``).

    Returns:
        The cluster index of every encoding, numbered in the order the leaders were taken.
    """
    n = clks.shape[0]
    counts = np.ones(n, dtype=np.int64) if counts is None else counts.astype(np.int64)
    rows, cols, _ = neighbours(clks, threshold)
    weight = counts.copy()
    np.add.at(weight, rows, counts[cols])
    return leader_clusters_from_pairs(n, rows, cols, weight)


def leader_clusters_from_pairs(n: int, rows: np.ndarray, cols: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Leader clustering over near-duplicate pairs (both directions, sorted by row).

    The heaviest unclustered item leads a cluster of itself and its unclustered neighbours; ties
    go by index, so the same input gives the same clusters.
    """
    starts = np.searchsorted(rows, np.arange(n + 1))
    cluster = np.full(n, -1, dtype=np.int64)
    next_id = 0
    for leader in np.lexsort((np.arange(n), -weight)).tolist():
        if cluster[leader] >= 0:
            continue
        members = cols[starts[leader] : starts[leader + 1]]
        cluster[members[cluster[members] < 0]] = next_id
        cluster[leader] = next_id
        next_id += 1
    return cluster
