r"""The signed encodings file (``.enc``) an agency sends to the coordinator.

Layout (all integers big-endian)::

    b"PPLENC\x00\x01"                    8 bytes magic and format version
    header length                        4 bytes
    header                               canonical JSON (EncodingsHeader)
    row tokens                           n x 16 bytes, random, never the agency's own ids
    encodings                            n x filter_bits/8 bytes (packed CLKs)
    attributes length                    4 bytes
    attributes                           canonical JSON {column: [value or null, ...]}
    signature                            64 bytes Ed25519 over SHA-256 of everything above

The signature covers a digest rather than the raw bytes so a million-record file is hashed once
and never copied. Readers verify before trusting any field.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, ValidationError

from pplink.agreement import AgreementConfig, Role, canonical_json
from pplink.aligned import empty_line_aligned
from pplink.atomic import atomic_file
from pplink.crypto import sign, verify
from pplink.errors import AgreementMismatchError, EncodingFileError, SignatureError
from pplink.models import PplinkModel

__all__ = [
    "EncodingsFile",
    "EncodingsHeader",
    "TOKEN_BYTES",
    "encodings_from_bytes",
    "encodings_to_bytes",
    "read_encodings",
    "write_encodings",
]

MAGIC = b"PPLENC\x00\x01"
TOKEN_BYTES = 16
SIGNATURE_BYTES = 64
_SIGN_CONTEXT = b"pplink encodings v1\x00"
_U32 = struct.Struct(">I")
_MAX_HEADER = 1 << 20


class EncodingsHeader(PplinkModel):
    """What an encodings file says about itself; every field is checked on read."""

    format: Literal["pplink-encodings"] = "pplink-encodings"
    version: Literal[1] = 1
    agreement_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    schema_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    party: str
    #: Random per file: lets the coordinator refuse a replayed upload.
    file_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    created: str
    n_records: Annotated[int, Field(ge=0)]
    filter_bits: Annotated[int, Field(gt=0)]
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EncodingsFile:
    """A verified encodings file in memory."""

    header: EncodingsHeader
    tokens: np.ndarray  # (n, 16) uint8
    clks: np.ndarray  # (n, filter_bits // 8) uint8
    attributes: dict[str, list[str | None]]
    path: Path | None = None

    def token_hex(self) -> list[str]:
        """Row tokens as 32-character hex strings, in row order."""
        raw = self.tokens.tobytes()
        return [raw[i : i + TOKEN_BYTES].hex() for i in range(0, len(raw), TOKEN_BYTES)]


def _content(header: EncodingsHeader, tokens: np.ndarray, clks: np.ndarray,
             attributes: dict[str, list[str | None]]) -> list[bytes]:
    head = canonical_json(header.model_dump(mode="json"))
    attrs = canonical_json(attributes)
    return [MAGIC, _U32.pack(len(head)), head, tokens.tobytes(), clks.tobytes(), _U32.pack(len(attrs)), attrs]


def _digest(parts: list[bytes]) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return _SIGN_CONTEXT + h.digest()


def _signed_parts(
    *,
    agreement: AgreementConfig,
    party: str,
    tokens: np.ndarray,
    clks: np.ndarray,
    attributes: dict[str, list[str | None]],
    key: Ed25519PrivateKey,
    where: str,
) -> tuple[EncodingsHeader, list[bytes]]:
    """Build the header and every part of the file, the signature last."""
    n = clks.shape[0]
    if tokens.shape != (n, TOKEN_BYTES) or any(len(v) != n for v in attributes.values()):
        raise EncodingFileError(f"{where}: tokens, encodings and attributes disagree on the row count")
    header = EncodingsHeader(
        agreement_id=agreement.agreement_id,
        schema_hash=agreement.identifiers.schema_hash,
        party=party,
        file_id=os.urandom(16).hex(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        n_records=n,
        filter_bits=clks.shape[1] * 8,
        attributes=tuple(sorted(attributes)),
    )
    parts = _content(header, np.ascontiguousarray(tokens), np.ascontiguousarray(clks), attributes)
    return header, [*parts, sign(key, _digest(parts))]


def write_encodings(
    path: Path,
    *,
    agreement: AgreementConfig,
    party: str,
    tokens: np.ndarray,
    clks: np.ndarray,
    attributes: dict[str, list[str | None]],
    key: Ed25519PrivateKey,
) -> EncodingsHeader:
    """Sign and write an encodings file atomically (temp file, fsync, rename).

    Returns:
        The header written.
    """
    path = Path(path)
    header, parts = _signed_parts(agreement=agreement, party=party, tokens=tokens, clks=clks,
                                  attributes=attributes, key=key, where=str(path))
    with atomic_file(path) as fh:
        for part in parts:
            fh.write(part)
    return header


def encodings_to_bytes(
    *,
    agreement: AgreementConfig,
    party: str,
    tokens: np.ndarray,
    clks: np.ndarray,
    attributes: dict[str, list[str | None]],
    key: Ed25519PrivateKey,
) -> tuple[EncodingsHeader, bytes]:
    """Sign encodings into the bytes of an ``.enc`` file, in memory (for sending over Flower).

    The bytes are exactly what :func:`write_encodings` would write for the same header.

    Returns:
        ``(header, file bytes)``.
    """
    header, parts = _signed_parts(agreement=agreement, party=party, tokens=tokens, clks=clks,
                                  attributes=attributes, key=key, where=f"encodings of {party}")
    return header, b"".join(parts)


class _Cursor:
    def __init__(self, data: memoryview, path: Path | str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise EncodingFileError(f"{self.path}: truncated file (ends inside the {what})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])


def read_encodings(path: Path, agreement: AgreementConfig, *, expected_party: str | None = None) -> EncodingsFile:
    """Read and verify an encodings file against the agreement.

    Checks, in order: structure, that the party is an agency of this agreement, the signature
    against that party's key, the agreement id and schema hash, the filter length, and the
    attributes against the agreement's declared release attributes.

    Raises:
        EncodingFileError: truncated or malformed.
        SignatureError: the signature does not verify for the named party.
        AgreementMismatchError: made under another agreement or identifier schema.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read ({exc.strerror})") from None
    return _parse(raw, agreement, path, expected_party=expected_party, origin=path)


def encodings_from_bytes(
    data: bytes, agreement: AgreementConfig, *, source: str = "<encodings>", expected_party: str | None = None
) -> EncodingsFile:
    """Parse and verify the bytes of an ``.enc`` file received in memory.

    Makes exactly the checks of :func:`read_encodings`; error messages name ``source`` (for
    example ``"reply from node 42 (school)"``) where a file read names its path.

    Raises:
        EncodingFileError, SignatureError, AgreementMismatchError: as :func:`read_encodings`.
    """
    return _parse(bytes(data), agreement, source, expected_party=expected_party, origin=None)


def _parse(
    raw: bytes, agreement: AgreementConfig, path: Path | str, *, expected_party: str | None, origin: Path | None
) -> EncodingsFile:
    # ``path`` only names the source in messages; ``origin`` is stored on the result.
    cur = _Cursor(memoryview(raw), path)
    if bytes(cur.take(len(MAGIC), "magic number")) != MAGIC:
        raise EncodingFileError(f"{path}: not a pplink encodings file (bad magic number)")
    head_len = cur.u32("header length")
    if head_len > _MAX_HEADER:
        raise EncodingFileError(f"{path}: header length {head_len} is implausible")
    try:
        header = EncodingsHeader.model_validate_json(bytes(cur.take(head_len, "header")))
    except ValidationError as err:
        fields = ", ".join(".".join(map(str, e["loc"])) or "header" for e in err.errors(include_input=False))
        raise EncodingFileError(f"{path}: malformed header ({fields})") from None
    party = agreement.party(header.party) if header.party in {p.id for p in agreement.parties} else None
    if party is None or party.role is not Role.AGENCY:
        raise EncodingFileError(f"{path}: party {header.party!r} is not an agency in this agreement")
    if expected_party is not None and header.party != expected_party:
        raise EncodingFileError(f"{path}: file is from {header.party!r}, expected {expected_party!r}")
    n, width = header.n_records, header.filter_bits // 8
    if header.filter_bits % 8:
        raise EncodingFileError(f"{path}: filter length {header.filter_bits} is not a whole number of bytes")
    tokens_raw = cur.take(n * TOKEN_BYTES, "row tokens")
    clks_raw = cur.take(n * width, "encodings")
    attrs_raw = cur.take(cur.u32("attributes length"), "attributes")
    body_end = cur.pos
    signature = bytes(cur.take(SIGNATURE_BYTES, "signature"))
    if cur.pos != len(raw):
        raise EncodingFileError(f"{path}: {len(raw) - cur.pos} unexpected bytes after the signature")
    digest = hashlib.sha256(cur.data[:body_end]).digest()
    try:
        verify(party.public_key, _SIGN_CONTEXT + digest, signature, what=str(path))
    except SignatureError:
        raise SignatureError(f"{path}: signature does not verify against {header.party}'s key "
                             "in the agreement") from None
    if header.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError(
            f"{path}: made under agreement {header.agreement_id[:12]}…, not {agreement.agreement_id[:12]}…"
        )
    if header.schema_hash != agreement.identifiers.schema_hash:
        raise AgreementMismatchError(f"{path}: identifier schema hash differs from the agreement's")
    expected_bits = agreement.identifiers.filter_bits
    if header.filter_bits != expected_bits:
        raise EncodingFileError(f"{path}: filter length {header.filter_bits} bits, agreement says {expected_bits}")
    try:
        attributes = json.loads(bytes(attrs_raw))
    except ValueError:
        raise EncodingFileError(f"{path}: attributes block is not JSON") from None
    declared = {a.column for a in agreement.release.attributes}
    if (
        not isinstance(attributes, dict)
        or list(attributes) != list(header.attributes)
        or any(not isinstance(v, list) or len(v) != n for v in attributes.values())
    ):
        raise EncodingFileError(f"{path}: attributes block does not match the header")
    undeclared = sorted(set(attributes) - declared)
    if undeclared:
        raise EncodingFileError(f"{path}: carries attributes the agreement does not declare: {', '.join(undeclared)}")
    # Copies, not views of the file's bytes (freed on return): the encodings on a cache line, as the
    # matching kernels read them (pplink.aligned), so the match does not copy them again.
    tokens = np.frombuffer(tokens_raw, dtype=np.uint8).reshape(n, TOKEN_BYTES).copy()
    clks = empty_line_aligned((n, width), np.uint8)
    clks[...] = np.frombuffer(clks_raw, dtype=np.uint8).reshape(n, width)
    tokens.flags.writeable = clks.flags.writeable = False  # read-only, as the views were
    return EncodingsFile(header=header, tokens=tokens, clks=clks, attributes=attributes, path=origin)
