"""Compiled Bloom-filter assembly for :class:`pplink.encoding.ClkEncoder`: token tables and bit setting.

clkhash builds every record's filter in Python: it tokenises each value, hashes each token with
keyed BLAKE2 and sets bits in a ``bitarray``. Tokens repeat heavily (a few thousand distinct
bigrams per field), so here each field keeps a table from token to its bit indices, and a
chunk of records is assembled column by column in two numba loops over the values' code
points: one maps every n-gram to its token id (an open-addressing hash table, new tokens get
new ids), the other sets the tokens' bits in a packed ``uint8`` matrix. Only tokens never seen
before reach Python, where clkhash's own ``blake_hash_token`` gives their bit indices, so the
filters are bit for bit clkhash's (tests pin it).

An n-gram of up to three code points (21 bits each) packs into one 64-bit key; a positional
n-gram's position and a salted field's salt (an id per distinct salt value) make a second key.
Token strings are rebuilt from the keys exactly as clkhash's ``NgramComparison.tokenize`` writes
them (space padding, ``"{position} {gram}"``), followed by pplink's salt suffix where salted.

Compiled code is cached on disk (numba ``cache=True``, as in ``coordinator/linkage/kernels.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from clkhash.bloomfilter import blake_hash_token
from numba import njit

__all__ = ["FieldTable"]

_BITS_PER_CODE_POINT = 21
_CODE_POINT_MASK = (1 << _BITS_PER_CODE_POINT) - 1
_SPACE = 32
#: A token's second key is its salt's id above this bit and its position (if positional) below.
_SALT_SHIFT = 32
_MIX_A = np.uint64(0x9E3779B97F4A7C15)
_MIX_B = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(cache=True, nogil=True)
def _slot(a: np.uint64, b: np.uint64, mask: np.uint64) -> int:
    h = (a * _MIX_A) ^ (b * _MIX_B)
    h ^= h >> np.uint64(29)
    return int(h & mask)


@njit(cache=True, nogil=True)
def _gram_ids(cps, lengths, offsets, n, positional, salts, slot_id, keys_a, keys_b, count, row, ids):  # noqa: ANN001, ANN202
    """Token ids of rows ``row..`` into ``ids``; stops early when the table could overflow.

    Returns:
        (the first row not done, the new token count); new tokens' keys are appended to
        ``keys_a``/``keys_b`` from the old count on.
    """
    capacity = keys_a.shape[0]
    mask = np.uint64(slot_id.shape[0] - 1)
    shift = np.uint64(_BITS_PER_CODE_POINT)
    for r in range(row, cps.shape[0]):
        length = lengths[r]
        start = offsets[r]
        grams = offsets[r + 1] - start
        if count + grams > capacity:
            return r, count
        for i in range(grams):
            a = np.uint64(0)
            for j in range(n):
                p = i + j - (n - 1)
                c = np.uint64(_SPACE) if p < 0 or p >= length else np.uint64(cps[r, p])
                a = (a << shift) | c
            b = np.uint64(salts[r]) << np.uint64(_SALT_SHIFT)
            if positional:
                b |= np.uint64(i + 1)
            s = _slot(a, b, mask)
            while True:
                t = slot_id[s]
                if t < 0:
                    slot_id[s] = count
                    keys_a[count] = a
                    keys_b[count] = b
                    ids[start + i] = count
                    count += 1
                    break
                if keys_a[t] == a and keys_b[t] == b:
                    ids[start + i] = t
                    break
                s = int((np.uint64(s) + np.uint64(1)) & mask)
    return cps.shape[0], count


@njit(cache=True, nogil=True)
def _rehash(keys_a, keys_b, count, slot_id):  # noqa: ANN001, ANN202
    mask = np.uint64(slot_id.shape[0] - 1)
    for t in range(count):
        s = _slot(keys_a[t], keys_b[t], mask)
        while slot_id[s] >= 0:
            s = int((np.uint64(s) + np.uint64(1)) & mask)
        slot_id[s] = t


@njit(cache=True, nogil=True)
def _set_bits(out, offsets, ids, bits):  # noqa: ANN001, ANN202
    """OR every token's bits into its record's row of ``out`` (filter index ``i``: byte ``i // 8``, MSB first)."""
    k = bits.shape[1]
    for r in range(out.shape[0]):
        for g in range(offsets[r], offsets[r + 1]):
            t = ids[g]
            for j in range(k):
                idx = bits[t, j]
                out[r, idx >> 3] |= np.uint8(0x80 >> (idx & 7))


class FieldTable:
    """One field's token table: n-gram keys to token ids, and each token's ``k`` bit indices.

    Args:
        n: the n-gram length (1 to 3).
        positional: clkhash's positional n-grams.
        k: bits per token (clkhash's ``bitsPerToken``).
        key: the field's BLAKE2 key.
        hash_bits: filter length before folding.
        encoding: the field's text encoding for hashing.
        salt_separator: for a salted field, what joins each token and its salt; ``None`` if unsalted.
    """

    def __init__(self, n: int, positional: bool, k: int, key: bytes, hash_bits: int, encoding: str,
                 salt_separator: str | None = None) -> None:
        if not 1 <= n <= 3:
            raise ValueError("n-grams of 1 to 3 code points only")
        self.n, self.positional, self.k = n, positional, k
        self._key, self._hash_bits, self._encoding = key, hash_bits, encoding
        self._separator = salt_separator
        self._salt_ids: dict[str, int] = {}
        self._suffixes: list[bytes] = []
        self._allocate(1 << 12)

    def _allocate(self, capacity: int) -> None:
        self.count = 0
        self._keys_a = np.zeros(capacity, dtype=np.uint64)
        self._keys_b = np.zeros(capacity, dtype=np.uint64)
        self._slots = np.full(2 * capacity, -1, dtype=np.int64)
        self._bits = np.zeros((capacity, self.k), dtype=np.int64)

    def reset(self) -> None:
        """Forget every token (bounded memory): costs later BLAKE2 calls, never changes a filter."""
        self.count = 0
        self._slots.fill(-1)
        self._salt_ids.clear()
        self._suffixes.clear()

    def _grow(self) -> None:
        capacity = 2 * len(self._keys_a)
        count = self.count
        keys_a, keys_b, bits = self._keys_a, self._keys_b, self._bits
        self._allocate(capacity)
        self.count = count
        self._keys_a[:count], self._keys_b[:count], self._bits[:count] = keys_a[:count], keys_b[:count], bits[:count]
        _rehash(self._keys_a, self._keys_b, count, self._slots)

    def _token(self, t: int) -> bytes:
        a = int(self._keys_a[t])
        gram = "".join(chr((a >> (_BITS_PER_CODE_POINT * (self.n - 1 - j))) & _CODE_POINT_MASK) for j in range(self.n))
        b = int(self._keys_b[t])
        position = b & ((1 << _SALT_SHIFT) - 1)
        token = f"{position} {gram}" if self.positional else gram
        suffix = self._suffixes[b >> _SALT_SHIFT] if self._separator is not None else b""
        return token.encode(self._encoding) + suffix

    def _salt_row_ids(self, salts: Sequence[str]) -> np.ndarray:
        ids = self._salt_ids
        # setdefault's default is evaluated first: a new salt gets the next id.
        row_ids = np.fromiter((ids.setdefault(s, len(ids)) for s in salts), dtype=np.int64, count=len(salts))
        assert self._separator is not None
        self._suffixes.extend((self._separator + s).encode(self._encoding) for s in list(ids)[len(self._suffixes):])
        return row_ids

    def add(self, values: Sequence[str], out: np.ndarray, salts: Sequence[str] = ()) -> None:
        """OR the filters of ``values`` (one per row of ``out``, ``""`` for none) into ``out``.

        ``salts`` holds each row's salt for a salted field (ignored otherwise).
        """
        m = len(values)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=m)
        width = int(lengths.max()) if m else 0
        if width == 0:
            return
        if width + self.n >= 1 << _SALT_SHIFT:
            raise ValueError("identifier value too long to encode")
        salt_ids = self._salt_row_ids(salts) if self._separator is not None else np.zeros(m, dtype=np.int64)
        # Fixed-width UTF-32: code point j of value r is cps[r, j] (zero beyond the value's length).
        cps = np.array(values, dtype=f"<U{width}").view(np.uint32).reshape(m, width)
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.where(lengths > 0, lengths + (self.n - 1), 0), out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int64)
        first_new = self.count
        row = 0
        while True:
            row, self.count = _gram_ids(cps, lengths, offsets, self.n, self.positional, salt_ids, self._slots,
                                        self._keys_a, self._keys_b, self.count, row, ids)
            if row == m:
                break
            self._grow()
        for t in range(first_new, self.count):
            self._bits[t] = blake_hash_token(self._token(t), self.k, self._key, self._hash_bits)
        _set_bits(out, offsets, ids, self._bits)


def _warm() -> None:
    """Run each kernel once on a tiny input, at import.

    numba's first call in a process loads the compiled code from its cache and its own
    registries (~1 s, most of it importing modules numba needs); paid at import, it is paid once
    per command, and the encode workers forked afterwards inherit it instead of paying it again.
    """
    out = np.zeros((2, 8), dtype=np.uint8)
    FieldTable(2, True, 2, b"warm", 64, "utf-8").add(["ab", ""], out)


_warm()
