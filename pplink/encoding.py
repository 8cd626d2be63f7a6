"""Bloom-filter encodings (CLKs) with clkhash, from already-normalised identifier values.

The clkhash linkage schema (v3) is generated from the agreement's identifier section, so every
agency builds the same schema. The HMAC key is the per-agreement key derived from the agencies'
shared secret (:func:`pplink.crypto.derive_linkage_key`); the schema's KDF salt and info are
public constants.

Encodings are returned as a packed ``uint8`` array of shape ``(n, filter_bits // 8)``, bit order
as ``bitarray.tobytes()`` gives (big-endian within each byte), the layout anonlink uses.

Two hardenings go beyond clkhash (see docs/hardening.md): salting (some fields' tokens hashed with
part of another field's value) and keyed bit flipping (BLIP). Without them the encodings are bit
for bit clkhash's; a test pins that.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from clkhash.bloomfilter import blake_hash_token
from clkhash.comparators import NgramComparison
from clkhash.field_formats import BitsPerTokenStrategy
from clkhash.key_derivation import generate_key_lists
from clkhash.schema import Schema, from_json_dict

from pplink.agreement import IdentifierSchema
from pplink.encoding_kernels import FieldTable
from pplink.errors import AgreementError

__all__ = ["ClkEncoder", "clkhash_schema_dict", "encodings_to_anonlink_json"]

# Public, fixed KDF parameters: the secrecy lives in the key, not here.
_KDF_SALT = base64.b64encode(b"pplink clkhash kdf salt v1").decode("ascii")
_KDF_INFO = base64.b64encode(b"pplink clkhash kdf info v1").decode("ascii")
# Domain separation for the flip key and the salt suffix (public constants).
_FLIP_PERSON = b"pplink-flip-v1"
_SALT_SEPARATOR = "\x1f"
#: Flip decisions use 16-bit uniforms: probabilities are rounded to multiples of 1/65536.
_FLIP_RESOLUTION = 1 << 16
#: Distinct (token, bits) filters kept per field before the cache starts afresh (~300 bytes each).
_TOKEN_CACHE_SIZE = 1 << 17
#: Records assembled per compiled batch: bounds the token ids and code points held at once.
_BATCH_ROWS = 8192


def clkhash_schema_dict(identifiers: IdentifierSchema) -> dict[str, Any]:
    """The clkhash linkage-schema-v3 dict for an agreement's identifier section.

    Every field is a plain UTF-8 string to clkhash: pplink validates and normalises values itself
    before hashing, so clkhash's own format checks are redundant.

    >>> from pplink.agreement import IdentifierField, IdentifierSchema
    >>> ids = IdentifierSchema(fields=(IdentifierField(column="surname", kind="name", bits_per_token=20),))
    >>> d = clkhash_schema_dict(ids)
    >>> d["version"], d["clkConfig"]["l"], d["features"][0]["hashing"]["strategy"]
    (3, 1024, {'bitsPerToken': 20})
    """
    features = []
    for field in identifiers.fields:
        comparison: dict[str, Any] = {"type": "ngram", "n": field.ngram}
        if field.positional:
            comparison["positional"] = True
        features.append(
            {
                "identifier": field.column,
                "format": {"type": "string", "encoding": "utf-8"},
                "hashing": {
                    "comparison": comparison,
                    "strategy": {"bitsPerToken": field.bits_per_token},
                    "hash": {"type": "blakeHash"},
                },
            }
        )
    clk_config: dict[str, Any] = {
        "l": identifiers.filter_bits,
        "kdf": {"type": "HKDF", "hash": "SHA256", "salt": _KDF_SALT, "info": _KDF_INFO, "keySize": 64},
    }
    # clkhash reads `xor_folds` although its schema documents `xorFolds` (which it then ignores).
    if identifiers.hardening.xor_folds:
        clk_config["xor_folds"] = identifiers.hardening.xor_folds
    return {"version": 3, "clkConfig": clk_config, "features": features}


class ClkEncoder:
    """Encodes normalised identifier tuples into packed CLKs with one derived key.

    Bit for bit what ``clkhash.clk.hash_chunk`` produces for the same schema and key (tests pin
    it), but assembled faster (:mod:`pplink.encoding_kernels`): each field keeps a table from
    n-gram (and salt) to its bit indices, records are assembled a batch at a time, column by
    column, in numba loops over the values' code points, and only tokens never seen before reach
    clkhash's own ``blake_hash_token``. XOR folding XORs the halves of the packed bytes. A schema
    the tables cannot hold (not built by :func:`clkhash_schema_dict`) takes the Python path: each
    token's bits and each field value's partial filter cached as Python integers, in which filter
    index ``i`` is bit ``L - 1 - i``, so ``int.to_bytes(…, "big")`` gives ``bitarray.tobytes()`` order.

    The agreement's hardening may add two steps clkhash does not have: a salted field hashes each
    token followed by a separator and the salt (part of another field's value), and bit flipping
    XORs the finished filter with a mask drawn from SHAKE-256 over a flip key (derived from
    ``key``) and the record's values. Without them the output is clkhash's.

    Build one encoder per process and reuse it: the schema and HKDF key lists cost ~1 ms.

    Args:
        identifiers: the agreement's identifier section.
        key: the per-agreement key from :func:`pplink.crypto.derive_linkage_key`.

    Raises:
        AgreementError: the hardening salts with or salts a column that is not an identifier field.
    """

    def __init__(self, identifiers: IdentifierSchema, key: bytes) -> None:
        self.schema: Schema = from_json_dict(clkhash_schema_dict(identifiers))
        self.filter_bytes = self.schema.l // 8
        self._folds = self.schema.xor_folds
        self._hash_bits = self.schema.l * 2**self._folds
        self._keys = generate_key_lists(
            key,
            len(self.schema.fields),
            key_size=self.schema.kdf_key_size,
            salt=self.schema.kdf_salt,
            info=self.schema.kdf_info,
            kdf=self.schema.kdf_type,
            hash_algo=self.schema.kdf_hash,
        )
        hardening = identifiers.hardening
        columns = [f.column for f in identifiers.fields]
        salted: set[int] = set()
        self._salt_source: int | None = None
        self._salt_prefix = 0
        if hardening.salt is not None:
            unknown = [c for c in (hardening.salt.source, *hardening.salt.fields) if c not in columns]
            if unknown:
                raise AgreementError(
                    f"identifiers.hardening.salt names {', '.join(unknown)}, which is not an identifier field"
                )
            self._salt_source = columns.index(hardening.salt.source)
            self._salt_prefix = hardening.salt.prefix
            salted = {columns.index(c) for c in hardening.salt.fields}
        self._salted = tuple(i in salted for i in range(len(columns)))
        self._field_filters = [self._field_filter(i, i in salted) for i in range(len(self.schema.fields))]
        self._tables = self._field_tables()
        self._flip_threshold = round(hardening.flip_probability * _FLIP_RESOLUTION)
        self._flip_key = hashlib.blake2b(b"flip", key=key, digest_size=32, person=_FLIP_PERSON).digest()

    def _field_tables(self) -> list[FieldTable] | None:
        """The compiled path's per-field token tables, or ``None`` where a field needs the Python path."""
        tables = []
        for index, field in enumerate(self.schema.fields):
            props = field.hashing_properties
            comparator = props.comparator if props is not None else None
            if (
                props is None
                or props.hash_type != "blakeHash"
                or not isinstance(comparator, NgramComparison)
                or not 1 <= comparator.n <= 3
                or not isinstance(props.strategy, BitsPerTokenStrategy)
                or props.missing_value is not None
            ):
                return None
            k = props.strategy.bits_per_token(1)[0]
            separator = _SALT_SEPARATOR if self._salted[index] else None
            tables.append(FieldTable(comparator.n, bool(comparator.positional), k, bytes(self._keys[index][0]),
                                     self._hash_bits, props.encoding, separator))
        return tables

    def _field_filter(self, index: int, salted: bool):  # type: ignore[no-untyped-def]
        field = self.schema.fields[index]
        props = field.hashing_properties
        assert props is not None and props.hash_type == "blakeHash", "pplink schemas hash every field with BLAKE2"
        comparator = props.comparator
        strategy = props.strategy
        encoding = props.encoding
        field_key = bytes(self._keys[index][0])  # clkhash's BLAKE2 path uses the first key only
        hash_bits = self._hash_bits
        top = hash_bits - 1

        # Two cache levels: tokens (bigrams) repeat far more than whole values do, so a value seen
        # for the first time usually costs a few dictionary hits rather than a BLAKE2 call and a
        # few dozen 2048-bit integer operations per token.
        token_bits: dict[tuple[bytes, int], int] = {}

        def token_filter(token: bytes, k: int) -> int:
            bits = 0
            for idx in blake_hash_token(token, k, field_key, hash_bits):
                bits |= 1 << (top - idx)
            if len(token_bits) >= _TOKEN_CACHE_SIZE:
                token_bits.clear()  # bounded memory on hostile or very diverse inputs
            token_bits[(token, k)] = bits
            return bits

        @lru_cache(maxsize=1 << 16)
        def partial(value: str, salt: str) -> int:
            tokens = list(comparator.tokenize(field.format_value(value)))
            suffix = (_SALT_SEPARATOR + salt).encode(encoding) if salted else b""
            bits = 0
            get = token_bits.get
            for token, k in zip(tokens, strategy.bits_per_token(len(tokens)), strict=True):
                raw = token.encode(encoding) + suffix
                cached = get((raw, k))
                bits |= cached if cached is not None else token_filter(raw, k)
            return bits

        return partial

    def _salt(self, row: Sequence[str]) -> str:
        if self._salt_source is None:
            return ""
        value = row[self._salt_source]
        return value[: self._salt_prefix] if self._salt_prefix else value

    def encode(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """Encode normalised rows (one string per identifier field, ``""`` if missing).

        Returns:
            ``uint8`` array of shape ``(len(rows), filter_bits // 8)``.
        """
        clks = self._assemble(rows) if self._tables is not None else self._assemble_python(rows)
        if self._flip_threshold and len(rows):
            clks = clks ^ self._flip_masks(rows)
        return clks

    def _assemble(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """Filters column by column in compiled loops (see :mod:`pplink.encoding_kernels`)."""
        assert self._tables is not None
        n_fields = len(self._tables)
        out = np.zeros((len(rows), self._hash_bits // 8), dtype=np.uint8)
        for start in range(0, len(rows), _BATCH_ROWS):
            batch = rows[start : start + _BATCH_ROWS]
            if set(map(len, batch)) - {n_fields}:
                raise ValueError(f"every row must hold {n_fields} identifier values")
            block = out[start : start + len(batch)]
            salts = [self._salt(row) for row in batch] if self._salt_source is not None else []
            for table, values in zip(self._tables, zip(*batch, strict=True), strict=True):
                if table.count > _TOKEN_CACHE_SIZE:
                    table.reset()
                table.add(values, block, salts)
        # XOR folding: folded filter index j is index j XOR index j + half, i.e. the two halves' bytes.
        for _ in range(self._folds):
            half = out.shape[1] // 2
            out = out[:, :half] ^ out[:, half:]
        return np.ascontiguousarray(out)

    def _assemble_python(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """Filters with Python integers: the path for schemas the compiled tables cannot hold."""
        out = bytearray(len(rows) * self.filter_bytes)
        width, folds, filters = self.filter_bytes, self._folds, self._field_filters
        half_bits = [self._hash_bits >> (f + 1) for f in range(folds)]
        offset = 0
        salted = self._salted
        for row in rows:
            bits = 0
            salt = self._salt(row)
            for partial, value, with_salt in zip(filters, row, salted, strict=True):
                # Unsalted fields always pass "": their per-value cache then never misses on the salt.
                bits |= partial(value, salt if with_salt else "")
            for half in half_bits:
                bits = (bits >> half) ^ (bits & ((1 << half) - 1))
            out[offset : offset + width] = bits.to_bytes(width, "big")
            offset += width
        return np.frombuffer(bytes(out), dtype=np.uint8).reshape(len(rows), width)

    def _flip_masks(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """One keyed pseudo-random mask per record: bit ``i`` is set with the flip probability.

        The mask depends only on the key and the record's values (length-prefixed, so distinct
        rows never share an input), never on the row's position or on a random source.
        """
        filter_bits = self.filter_bytes * 8
        stream = bytearray()
        for row in rows:
            shake = hashlib.shake_256(self._flip_key)
            for value in row:
                raw = value.encode("utf-8")
                shake.update(len(raw).to_bytes(4, "big") + raw)
            stream += shake.digest(2 * filter_bits)
        uniform = np.frombuffer(bytes(stream), dtype="<u2").reshape(len(rows), filter_bits)
        return np.packbits(uniform < self._flip_threshold, axis=1)


def encodings_to_anonlink_json(clks: np.ndarray) -> dict[str, list[str]]:
    """The ``{"clks": [base64, …]}`` layout Data61's anonlink tools read."""
    return {"clks": [base64.b64encode(row.tobytes()).decode("ascii") for row in clks]}

