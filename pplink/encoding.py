"""Bloom-filter encodings (CLKs) with clkhash, from already-normalised identifier values.

The clkhash linkage schema (v3) is generated from the agreement's identifier section, so every
agency builds the same schema. The HMAC key is the per-agreement key derived from the agencies'
shared secret (:func:`pplink.crypto.derive_linkage_key`); the schema's KDF salt and info are
public constants.

Encodings are returned as a packed ``uint8`` array of shape ``(n, filter_bits // 8)``, bit order
as ``bitarray.tobytes()`` gives (big-endian within each byte), the layout anonlink uses.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from clkhash.bloomfilter import blake_hash_token
from clkhash.key_derivation import generate_key_lists
from clkhash.schema import Schema, from_json_dict

from pplink.agreement import IdentifierSchema

__all__ = ["ClkEncoder", "clkhash_schema_dict", "encodings_to_anonlink_json"]

# Public, fixed KDF parameters: the secrecy lives in the key, not here.
_KDF_SALT = base64.b64encode(b"pplink clkhash kdf salt v1").decode("ascii")
_KDF_INFO = base64.b64encode(b"pplink clkhash kdf info v1").decode("ascii")


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

    Bit for bit what ``clkhash.clk.hash_chunk`` produces for the same schema and key (a test pins
    it), but assembled faster: every token goes through clkhash's own ``blake_hash_token``, while
    each field's partial filter is cached per value as a Python integer (identifier values repeat
    heavily), records are the OR of their fields' integers, and XOR folding is two integer ops.
    In an integer, filter index ``i`` is bit ``L - 1 - i``, so ``int.to_bytes(…, "big")`` gives
    ``bitarray.tobytes()`` order.

    Build one encoder per process and reuse it: the schema and HKDF key lists cost ~1 ms.

    Args:
        identifiers: the agreement's identifier section.
        key: the per-agreement key from :func:`pplink.crypto.derive_linkage_key`.
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
        self._field_filters = [self._field_filter(i) for i in range(len(self.schema.fields))]

    def _field_filter(self, index: int):  # type: ignore[no-untyped-def]
        field = self.schema.fields[index]
        props = field.hashing_properties
        assert props is not None and props.hash_type == "blakeHash", "pplink schemas hash every field with BLAKE2"
        comparator = props.comparator
        strategy = props.strategy
        encoding = props.encoding
        field_key = bytes(self._keys[index][0])  # clkhash's BLAKE2 path uses the first key only
        hash_bits = self._hash_bits
        top = hash_bits - 1

        @lru_cache(maxsize=1 << 16)
        def partial(value: str) -> int:
            tokens = list(comparator.tokenize(field.format_value(value)))
            bits = 0
            for token, k in zip(tokens, strategy.bits_per_token(len(tokens)), strict=True):
                for idx in blake_hash_token(token.encode(encoding), k, field_key, hash_bits):
                    bits |= 1 << (top - idx)
            return bits

        return partial

    def encode(self, rows: Sequence[Sequence[str]]) -> np.ndarray:
        """Encode normalised rows (one string per identifier field, ``""`` if missing).

        Returns:
            ``uint8`` array of shape ``(len(rows), filter_bits // 8)``.
        """
        out = bytearray(len(rows) * self.filter_bytes)
        width, folds, filters = self.filter_bytes, self._folds, self._field_filters
        half_bits = [self._hash_bits >> (f + 1) for f in range(folds)]
        offset = 0
        for row in rows:
            bits = 0
            for partial, value in zip(filters, row, strict=True):
                bits |= partial(value)
            for half in half_bits:
                bits = (bits >> half) ^ (bits & ((1 << half) - 1))
            out[offset : offset + width] = bits.to_bytes(width, "big")
            offset += width
        return np.frombuffer(bytes(out), dtype=np.uint8).reshape(len(rows), width)


def encodings_to_anonlink_json(clks: np.ndarray) -> dict[str, list[str]]:
    """The ``{"clks": [base64, …]}`` layout Data61's anonlink tools read."""
    return {"clks": [base64.b64encode(row.tobytes()).decode("ascii") for row in clks]}

