"""Dice similarity of packed encodings, equal bit for bit to anonlink's, and input checks.

anonlink's accelerated Dice has a per-call overhead that dominates on millions of small blocking
buckets; here scattered pairs are scored by a compiled gather-and-popcount loop
(``coordinator.linkage.kernels.pair_dice``) that divides in double precision exactly as
anonlink's kernel does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pplink.errors import MatchError

__all__ = ["CHUNK_PAIRS", "as_words", "check_datasets", "compute_dice", "dice_rows", "popcounts"]

#: Pairs a caller of :func:`dice_rows` scores per call: bounds the index arrays it builds.
CHUNK_PAIRS = 16_384


def check_datasets(datasets: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Refuse anything but 2+ uint8 matrices of one width; return them C-contiguous."""
    if len(datasets) < 2:
        raise MatchError(f"matching needs at least 2 datasets, got {len(datasets)}")
    width = None
    out = []
    for d, data in enumerate(datasets):
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            kind = (f"{data.dtype} array of {data.ndim} dimensions" if isinstance(data, np.ndarray)
                    else type(data).__name__)
            raise MatchError(f"dataset {d}: expected a 2-D uint8 array of packed encodings, got {kind}")
        if data.shape[1] == 0:
            raise MatchError(f"dataset {d}: encodings have zero bytes")
        if width is not None and data.shape[1] != width:
            raise MatchError(f"dataset {d}: encodings have {data.shape[1]} bytes, dataset 0 has {width}")
        if data.shape[0] >= 2**32:
            raise MatchError(f"dataset {d}: {data.shape[0]} records is more than the solver can index")
        width = data.shape[1]
        out.append(np.ascontiguousarray(data))
    return tuple(out)


def as_words(data: np.ndarray) -> np.ndarray:
    """View packed encodings as uint64 words, padding with zero bytes to a multiple of 8."""
    pad = -data.shape[1] % 8
    if pad:
        data = np.concatenate([data, np.zeros((data.shape[0], pad), dtype=np.uint8)], axis=1)
    return data.view(np.uint64)


def popcounts(words: np.ndarray) -> np.ndarray:
    """Count the set bits of each encoding.

    Args:
        words: encodings as uint64 words, shape ``(n, words)`` (see :func:`as_words`).

    Returns:
        float64 popcounts, one per row, ready to be the Dice denominator.

    Examples:
        >>> popcounts(as_words(np.array([[0b1011, 0xFF]], dtype=np.uint8))).tolist()
        [11.0]
    """
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64).astype(np.float64)


def dice_rows(
    words_a: np.ndarray,
    words_b: np.ndarray,
    pop_a: np.ndarray,
    pop_b: np.ndarray,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
) -> np.ndarray:
    """Dice similarity of the pairs ``(words_a[rows_a[k]], words_b[rows_b[k]])``.

    The low-level step of :func:`compute_dice` for callers that keep words and popcounts: inputs
    are already converted, and a pair of two empty encodings scores 0.

    Args:
        words_a: encodings of one side as uint64 words (see :func:`as_words`).
        words_b: encodings of the other side, same number of words per row.
        pop_a: :func:`popcounts` of ``words_a``.
        pop_b: :func:`popcounts` of ``words_b``.
        rows_a: int64 row indices into ``words_a``.
        rows_b: int64 row indices into ``words_b``, same length.

    Returns:
        float64 similarities, one per pair, computed as anonlink's kernel does.

    Raises:
        IndexError: a row index is out of range (checked: the compiled loop does not check).
    """
    from coordinator.linkage.kernels import pair_dice

    rows_a, rows_b = np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64)
    for rows, words in ((rows_a, words_a), (rows_b, words_b)):
        if len(rows) and (rows.min() < 0 or rows.max() >= len(words)):
            raise IndexError(f"row indices outside 0..{len(words) - 1}")
    if len(rows_a) != len(rows_b):
        raise IndexError(f"{len(rows_a)} rows against {len(rows_b)}")
    out = np.empty(len(rows_a))
    pair_dice(np.ascontiguousarray(words_a), np.ascontiguousarray(words_b), np.ascontiguousarray(pop_a),
              np.ascontiguousarray(pop_b), rows_a, rows_b, out)
    return out


def compute_dice(dataset_a: np.ndarray, dataset_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Dice similarity of the pairs ``(dataset_a[rows_a[k]], dataset_b[rows_b[k]])``.

    Equal, bit for bit, to anonlink's accelerated Dice; two empty encodings score 0.

    Args:
        dataset_a: packed encodings, ``uint8`` of shape ``(n_a, nbytes)``.
        dataset_b: packed encodings, ``uint8`` of shape ``(n_b, nbytes)``.
        rows_a: row indices into ``dataset_a``.
        rows_b: row indices into ``dataset_b``, same length.

    Returns:
        float64 similarities, one per pair.

    Raises:
        MatchError: the datasets are not packed encodings of one width, or a row index is out of
            range or the row arrays differ in length.

    Examples:
        >>> a = np.array([[0b11110000]], dtype=np.uint8); b = np.array([[0b11000000]], dtype=np.uint8)
        >>> compute_dice(a, b, np.array([0]), np.array([0])).tolist()
        [0.6666666666666666]
    """
    from coordinator.linkage.kernels import pair_dice, row_popcounts

    dataset_a, dataset_b = check_datasets([dataset_a, dataset_b])
    words_a, words_b = np.ascontiguousarray(as_words(dataset_a)), np.ascontiguousarray(as_words(dataset_b))
    rows_a, rows_b = np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64)
    if rows_a.shape != rows_b.shape or rows_a.ndim != 1:
        raise MatchError(f"rows_a and rows_b must be 1-D of one length, got {rows_a.shape} and {rows_b.shape}")
    for rows, data, side in ((rows_a, dataset_a, "rows_a"), (rows_b, dataset_b, "rows_b")):
        if len(rows) and not (0 <= rows.min() and rows.max() < len(data)):
            raise MatchError(f"{side} holds row indices outside 0..{len(data) - 1}")
    out = np.empty(len(rows_a))
    pair_dice(words_a, words_b, row_popcounts(words_a), row_popcounts(words_b), rows_a, rows_b, out)
    return out
