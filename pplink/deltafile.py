r"""The signed delta file an agency sends between rounds: new, changed and withdrawn rows.

A delta says "since my previous file: withdraw these row tokens, add these rows". It is chained:
its header names the SHA-256 of the agency's previous file (the full ``.enc`` of the first
round, or the previous delta) and a sequence number one above the previous one's, so the
coordinator can refuse a delta applied out of order, twice, or on a fork of the agency's history.

Layout (all integers big-endian)::

    b"PPLDLT\x00\x01"                    8 bytes magic and format version
    header length, header                4 bytes, canonical JSON (DeltaHeader)
    withdrawn tokens                     m x 16 bytes
    withdrawal reasons                   m bytes (WithdrawReason codes)
    added length                         8 bytes
    added rows                           a complete signed .enc (pplink.encfile): new and changed rows
    signature                            64 bytes Ed25519 over a context and SHA-256 of the above

Readers verify the outer signature, then the inner file, before
trusting any field.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, ValidationError

from pplink.agreement import AgreementConfig, Role, canonical_json
from pplink.atomic import atomic_write
from pplink.crypto import sign, verify
from pplink.encfile import MAGIC as ENC_MAGIC
from pplink.encfile import TOKEN_BYTES, EncodingsFile, encodings_from_bytes, encodings_to_bytes
from pplink.errors import AgreementMismatchError, EncodingFileError, SignatureError
from pplink.models import PplinkModel

__all__ = [
    "DELTA_MAGIC",
    "DeltaFile",
    "DeltaHeader",
    "WithdrawReason",
    "day_of",
    "delta_from_bytes",
    "delta_to_bytes",
    "file_digest",
    "is_delta",
    "read_delta",
    "write_delta",
]

DELTA_MAGIC = b"PPLDLT\x00\x01"
_SIGN_CONTEXT = b"pplink delta v1\x00"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_MAX_HEADER = 1 << 20
_SIGNATURE_BYTES = 64


class WithdrawReason(IntEnum):
    """Why a row leaves the linkage (one byte per withdrawn token)."""

    #: The row is no longer in the agency's export: an opt-out after linking, or a deletion.
    WITHDRAWN = 1
    #: The row changed (identifiers or release attributes); its new version is among the added rows.
    CHANGED = 2
    #: The row is past the agreement's ``retention.linkage_days``.
    RETENTION = 3


class DeltaHeader(PplinkModel):
    """What a delta file says about itself; every field is checked on read."""

    format: Literal["pplink-delta"] = "pplink-delta"
    version: Literal[1] = 1
    agreement_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    party: str
    file_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    created: str
    #: 1 for the first delta after a full file, then one more each time.
    sequence: Annotated[int, Field(ge=1)]
    #: SHA-256 (hex) of the bytes of the agency's previous file in the chain.
    previous: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    n_withdrawn: Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class DeltaFile:
    """A verified delta in memory.

    Attributes:
        header: the checked header.
        withdrawn: ``(m, 16)`` uint8 tokens of rows to remove.
        reasons: ``(m,)`` uint8 :class:`WithdrawReason` codes.
        added: the new and changed rows, as a verified encodings file.
        digest: SHA-256 (hex) of the whole file: what the next delta names as ``previous``.
        path: where it was read from, if a file.
    """

    header: DeltaHeader
    withdrawn: np.ndarray
    reasons: np.ndarray
    added: EncodingsFile
    digest: str
    path: Path | None = None


def file_digest(data: bytes) -> str:
    """SHA-256 (hex) of a file's bytes: the link a delta's ``previous`` names.

    >>> file_digest(b"")[:16]
    'e3b0c44298fc1c14'
    """
    return hashlib.sha256(data).hexdigest()


def day_of(created: str) -> int:
    """The day number of an ISO timestamp's date: what retention counts in, at both ends.

    >>> day_of("2026-01-02T10:00:00+00:00") - day_of("2026-01-01T23:59:59+00:00")
    1
    """
    return date.fromisoformat(created[:10]).toordinal()


def is_delta(data: bytes) -> bool:
    """Whether ``data`` starts like a delta file (rather than a full ``.enc``)."""
    return data[: len(DELTA_MAGIC)] == DELTA_MAGIC


def delta_to_bytes(
    *,
    agreement: AgreementConfig,
    party: str,
    previous: str,
    sequence: int,
    withdrawn: np.ndarray,
    reasons: np.ndarray,
    tokens: np.ndarray,
    clks: np.ndarray,
    attributes: dict[str, list[str | None]],
    key: Ed25519PrivateKey,
    created: datetime | None = None,
) -> tuple[DeltaHeader, bytes]:
    """Sign a delta into the bytes of a file.

    Args:
        agreement: the validated agreement.
        party: the agency sending it.
        previous: SHA-256 (hex) of the agency's previous file in the chain.
        sequence: the previous file's sequence plus one (a full file counts as 0).
        withdrawn: ``(m, 16)`` uint8 tokens to withdraw.
        reasons: ``(m,)`` :class:`WithdrawReason` codes.
        tokens: ``(n, 16)`` uint8 tokens of the added rows.
        clks: ``(n, filter_bits / 8)`` packed encodings of the added rows.
        attributes: release attributes of the added rows.
        key: the agency's signing key.
        created: the time to stamp (default: now, UTC).

    Returns:
        ``(header, file bytes)``.

    Raises:
        EncodingFileError: the arrays disagree in shape or a reason code is unknown.
    """
    withdrawn = np.ascontiguousarray(withdrawn, dtype=np.uint8).reshape(-1, TOKEN_BYTES)
    reasons = np.ascontiguousarray(reasons, dtype=np.uint8)
    if len(reasons) != len(withdrawn) or not np.isin(reasons, [int(r) for r in WithdrawReason]).all():
        raise EncodingFileError(f"delta of {party}: withdrawn tokens and reasons disagree")
    _, added = encodings_to_bytes(agreement=agreement, party=party, tokens=tokens, clks=clks,
                                  attributes=attributes, key=key)
    header = DeltaHeader(
        agreement_id=agreement.agreement_id, party=party, file_id=os.urandom(16).hex(),
        created=(created or datetime.now(UTC)).isoformat(timespec="seconds"), sequence=sequence, previous=previous,
        n_withdrawn=len(withdrawn),
    )
    head = canonical_json(header.model_dump(mode="json"))
    parts = [DELTA_MAGIC, _U32.pack(len(head)), head, withdrawn.tobytes(), reasons.tobytes(),
             _U64.pack(len(added)), added]
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return header, b"".join([*parts, sign(key, _SIGN_CONTEXT + h.digest())])


def write_delta(path: Path, **kwargs: object) -> tuple[DeltaHeader, str]:
    """Sign and write a delta atomically; arguments as :func:`delta_to_bytes`.

    Returns:
        The header and the file's digest (the next delta's ``previous``).
    """
    header, data = delta_to_bytes(**kwargs)  # type: ignore[arg-type]
    atomic_write(Path(path), data)
    return header, file_digest(data)


def read_delta(path: Path, agreement: AgreementConfig, *, expected_party: str | None = None) -> DeltaFile:
    """Read and verify a delta file (see :func:`delta_from_bytes`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read ({exc.strerror})") from None
    delta = delta_from_bytes(raw, agreement, source=str(path), expected_party=expected_party)
    return DeltaFile(header=delta.header, withdrawn=delta.withdrawn, reasons=delta.reasons, added=delta.added,
                     digest=delta.digest, path=path)


def delta_from_bytes(
    data: bytes, agreement: AgreementConfig, *, source: str = "<delta>", expected_party: str | None = None
) -> DeltaFile:
    """Parse and verify a delta: structure, party, outer signature, agreement, then the added rows.

    Raises:
        EncodingFileError: truncated or malformed, or the added rows are from another party.
        SignatureError: a signature does not verify against the party's key in the agreement.
        AgreementMismatchError: made under another agreement.
    """
    view = memoryview(data)
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise EncodingFileError(f"{source}: truncated delta (ends inside the {what})")
        pos += n
        return view[pos - n : pos]

    if bytes(take(len(DELTA_MAGIC), "magic number")) != DELTA_MAGIC:
        raise EncodingFileError(f"{source}: not a pplink delta file (bad magic number)")
    head_len = int(_U32.unpack(take(4, "header length"))[0])
    if head_len > _MAX_HEADER:
        raise EncodingFileError(f"{source}: header length {head_len} is implausible")
    try:
        header = DeltaHeader.model_validate_json(bytes(take(head_len, "header")))
    except ValidationError as err:
        fields = ", ".join(".".join(map(str, e["loc"])) or "header" for e in err.errors(include_input=False))
        raise EncodingFileError(f"{source}: malformed delta header ({fields})") from None
    agencies = {p.id: p for p in agreement.parties if p.role is Role.AGENCY}
    party = agencies.get(header.party)
    if party is None:
        raise EncodingFileError(f"{source}: party {header.party!r} is not an agency in this agreement")
    if expected_party is not None and header.party != expected_party:
        raise EncodingFileError(f"{source}: delta is from {header.party!r}, expected {expected_party!r}")
    m = header.n_withdrawn
    withdrawn_raw = take(m * TOKEN_BYTES, "withdrawn tokens")
    reasons_raw = take(m, "withdrawal reasons")
    added_raw = take(int(_U64.unpack(take(8, "added length"))[0]), "added rows")
    body_end = pos
    signature = bytes(take(_SIGNATURE_BYTES, "signature"))
    if pos != len(view):
        raise EncodingFileError(f"{source}: {len(view) - pos} unexpected bytes after the signature")
    try:
        verify(party.public_key, _SIGN_CONTEXT + hashlib.sha256(view[:body_end]).digest(), signature, what=source)
    except SignatureError:
        raise SignatureError(f"{source}: signature does not verify against {header.party}'s key "
                             "in the agreement") from None
    if header.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError(
            f"{source}: made under agreement {header.agreement_id[:12]}…, not {agreement.agreement_id[:12]}…"
        )
    if bytes(added_raw[: len(ENC_MAGIC)]) != ENC_MAGIC:
        raise EncodingFileError(f"{source}: the added rows are not a pplink encodings block")
    added = encodings_from_bytes(bytes(added_raw), agreement, source=f"{source} (added rows)",
                                 expected_party=header.party)
    reasons = np.frombuffer(reasons_raw, dtype=np.uint8).copy()
    if not np.isin(reasons, [int(r) for r in WithdrawReason]).all():
        raise EncodingFileError(f"{source}: unknown withdrawal reason code")
    return DeltaFile(
        header=header,
        withdrawn=np.frombuffer(withdrawn_raw, dtype=np.uint8).reshape(m, TOKEN_BYTES).copy(),
        reasons=reasons,
        added=added,
        digest=file_digest(data),
        path=None,
    )
