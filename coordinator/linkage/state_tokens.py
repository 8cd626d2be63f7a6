"""Row tokens in an incremental round: which live rows a delta withdraws, and whether new tokens repeat.

A round looks up a few thousand tokens among millions of live ones. Sorting the live tokens each
round (as a first version did) grows with the state; here only the few wanted tokens are
sorted, and every live token's 8-byte prefix is looked up among them in one compiled pass over
a small hash set, so a round costs one read of the live tokens. Tokens are random, so prefixes
identify them but for a chance in 2^64; whole tokens are compared before anything is trusted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["any_present", "lookup", "lookup_all", "repeats"]


@njit(nogil=True, cache=True)
def _present(prefix, keys):  # noqa: ANN001, ANN202
    """Indices ``i`` (ascending) with ``prefix[i]`` among ``keys``: a hash set of ``keys``, open addressing."""
    bits = 4
    while (1 << bits) < 4 * keys.shape[0]:
        bits += 1
    size = 1 << bits
    table = np.zeros(size, dtype=np.uint64)
    used = np.zeros(size, dtype=np.bool_)
    shift = np.uint64(64 - bits)
    for key in keys:
        slot = np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while used[slot] and table[slot] != key:
            slot = (slot + 1) & (size - 1)
        table[slot], used[slot] = key, True
    out = np.empty(prefix.shape[0], dtype=np.int64)
    found = 0
    for i in range(prefix.shape[0]):
        key = prefix[i]
        slot = np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while used[slot]:
            if table[slot] == key:
                out[found] = i
                found += 1
                break
            slot = (slot + 1) & (size - 1)
    return out[:found]


def _prefix(tokens: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 16-byte token as one integer: a sort key for random tokens."""
    return np.ascontiguousarray(tokens).view(np.uint64)[:, 0]


def _repeats(tokens: np.ndarray) -> bool:
    """Whether any token appears twice (sorting 8-byte prefixes, then comparing whole tokens)."""
    order = np.argsort(_prefix(tokens), kind="stable")
    keys = _prefix(tokens)[order]
    same = np.flatnonzero(keys[1:] == keys[:-1])
    return bool((tokens[order[same]] == tokens[order[same + 1]]).all(axis=1).any()) if len(same) else False


def _matches(tokens: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with ``tokens[i] == wanted[j]``: only the few wanted tokens are sorted, the many searched."""
    order = np.argsort(_prefix(wanted), kind="stable")
    keys = _prefix(wanted)[order]
    if not len(keys) or not len(tokens):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    prefix = _prefix(tokens)
    i = _present(prefix, keys)
    # Wanted tokens sharing a prefix (never by chance) each pair with the rows holding it.
    lo, hi = np.searchsorted(keys, prefix[i]), np.searchsorted(keys, prefix[i], side="right")
    i = np.repeat(i, hi - lo)
    j = order[np.concatenate([np.arange(s, e) for s, e in zip(lo.tolist(), hi.tolist(), strict=True)] or [[]])
              .astype(np.int64)]
    same = (tokens[i] == wanted[j]).all(axis=1)
    return i[same], j[same]


def lookup(tokens: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of each wanted token in ``tokens`` (distinct), ``-1`` where absent."""
    out = np.full(len(wanted), -1, dtype=np.int64)
    i, j = _matches(tokens, wanted)
    out[j] = i
    return out


def repeats(tokens: np.ndarray) -> bool:
    """Whether any token appears twice."""
    return _repeats(tokens)


def lookup_all(tokens: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``tokens[i] == wanted[j]`` (tokens may repeat across parties), in one pass."""
    return _matches(tokens, wanted)


def any_present(values: np.ndarray, keys: np.ndarray) -> bool:
    """Whether any of the many ``values`` (uint64) is among the few ``keys``: one pass, no sort."""
    return bool(len(values) and len(keys) and len(_present(np.ascontiguousarray(values), keys)))
