"""``pplink node encode --delta-from PREVIOUS``: send only what changed since the previous file.

The node encodes its whole current export as usual, then compares it, record id by record id,
with what it sent before:

* unchanged rows (same encoding and release attributes) keep their token and are not sent;
* changed rows are withdrawn (reason ``changed``) and sent again under a fresh token;
* new rows are sent under a fresh token;
* rows no longer in the export (an opt-out after linking, a deletion) are withdrawn;
* rows sent ``retention.linkage_days`` or more days before the delta's date are withdrawn
  (reason ``retention``) and not sent again; the coordinator applies the same rule to its
  state, so both sides agree on which rows expired.

What was sent before is the node-local *snapshot*: each live token with a digest of its row and
the day it was first sent. For a full ``.enc`` the snapshot is read from the file itself; every
delta writes its own next to it (``<delta>.snapshot``, owner-only), bound to the delta by digest.
The token file written with a delta (``<delta>.tokens``) lists every live row, so
``pplink node resolve`` works with the coordinator's next map as after a full round.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.encode import encode_records
from pplink.agreement import AgreementConfig, canonical_json
from pplink.atomic import atomic_write
from pplink.crypto import SecretBytes
from pplink.deltafile import WithdrawReason, day_of, delta_from_bytes, file_digest, is_delta, write_delta
from pplink.encfile import TOKEN_BYTES, encodings_from_bytes
from pplink.entity_files import read_tokens, write_tokens
from pplink.errors import EncodingFileError, RecordValidationError, UsageError

__all__ = ["DeltaSummary", "NodeSnapshot", "default_tokens_path", "encode_delta", "load_snapshot", "row_digests",
           "snapshot_path"]

_DIGEST_BYTES = 16


def snapshot_path(output: Path) -> Path:
    """Where the snapshot of an encodings or delta file lives: ``<file>.snapshot``."""
    output = Path(output)
    return output.with_name(output.name + ".snapshot")


def default_tokens_path(path: Path, is_delta: bool) -> Path:
    """A file's token map by default: ``x.enc`` -> ``x.tokens`` (as ``node encode``), a delta ``x`` -> ``x.tokens``.

    >>> default_tokens_path(Path("school.enc"), False).name, default_tokens_path(Path("school.d1"), True).name
    ('school.tokens', 'school.d1.tokens')
    """
    path = Path(path)
    return path.with_name(path.name + ".tokens") if is_delta else path.with_suffix(".tokens")


def row_digests(clks: np.ndarray, attributes: dict[str, list[str | None]]) -> np.ndarray:
    """A 16-byte digest per row of its encoding and release attributes: equal digests, unchanged row."""
    columns = sorted(attributes)
    out = np.empty((clks.shape[0], _DIGEST_BYTES), dtype=np.uint8)
    for i in range(clks.shape[0]):
        h = hashlib.sha256(clks[i].tobytes())
        h.update(canonical_json([attributes[c][i] for c in columns]))
        out[i] = np.frombuffer(h.digest()[:_DIGEST_BYTES], dtype=np.uint8)
    return out


@dataclass(frozen=True)
class NodeSnapshot:
    """What the node has sent and the coordinator holds, after one file of the chain.

    Attributes:
        file_digest: SHA-256 (hex) of the file this snapshot follows (the next delta's ``previous``).
        sequence: that file's place in the chain (a full file is 0).
        tokens: ``(n, 16)`` live tokens.
        digests: ``(n, 16)`` row digests (:func:`row_digests`).
        sent_day: ``(n,)`` day each token was first sent (:func:`day_of`).
        expired: record ids withdrawn for retention; they are not sent again.
    """

    file_digest: str
    sequence: int
    tokens: np.ndarray
    digests: np.ndarray
    sent_day: np.ndarray
    expired: tuple[str, ...] = ()


_SNAPSHOT_MAGIC = b"PPLSNAP\x01"


def save_snapshot(path: Path, snap: NodeSnapshot) -> None:
    """Write a snapshot, readable only by its owner (its expired list holds record ids).

    Layout: magic, 4-byte header length, JSON header, then the tokens, digests and days as raw arrays.
    """
    head = json.dumps({"file_digest": snap.file_digest, "sequence": snap.sequence, "expired": list(snap.expired),
                       "rows": len(snap.tokens)}).encode("utf-8")
    body = b"".join([_SNAPSHOT_MAGIC, struct.pack(">I", len(head)), head, snap.tokens.astype(np.uint8).tobytes(),
                     snap.digests.astype(np.uint8).tobytes(), snap.sent_day.astype("<i8").tobytes()])
    atomic_write(path, body, mode=0o600)


def load_snapshot(path: Path) -> NodeSnapshot:
    """Read a snapshot written by :func:`save_snapshot`.

    Raises:
        EncodingFileError: missing or malformed.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read the node snapshot ({exc.strerror})") from None
    try:
        if raw[:8] != _SNAPSHOT_MAGIC:
            raise ValueError("magic")
        (head_len,) = struct.unpack(">I", raw[8:12])
        meta = json.loads(raw[12 : 12 + head_len])
        n, pos = int(meta["rows"]), 12 + head_len
        if n < 0 or len(raw) != pos + n * (2 * TOKEN_BYTES + 8):
            raise ValueError("size")
        tokens = np.frombuffer(raw, dtype=np.uint8, count=n * TOKEN_BYTES, offset=pos).reshape(n, TOKEN_BYTES)
        digests = np.frombuffer(raw, dtype=np.uint8, count=n * _DIGEST_BYTES, offset=pos + n * TOKEN_BYTES)
        sent = np.frombuffer(raw, dtype="<i8", count=n, offset=pos + n * (TOKEN_BYTES + _DIGEST_BYTES))
        snap = NodeSnapshot(file_digest=str(meta["file_digest"]), sequence=int(meta["sequence"]), tokens=tokens,
                            digests=digests.reshape(n, _DIGEST_BYTES), sent_day=sent.astype(np.int64),
                            expired=tuple(str(e) for e in meta["expired"]))
    except (ValueError, KeyError, TypeError, struct.error):
        raise EncodingFileError(f"{path}: not a readable node snapshot") from None
    return snap


def previous_snapshot(previous: Path, agreement: AgreementConfig, party: str) -> NodeSnapshot:
    """The snapshot after ``previous`` (a full ``.enc`` or a delta this node wrote), verified.

    Raises:
        EncodingFileError, SignatureError, AgreementMismatchError: the file fails verification or
            is another agency's, or a delta's snapshot is missing or belongs to another file.
    """
    previous = Path(previous)
    try:
        data = previous.read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"{previous}: cannot read ({exc.strerror})") from None
    digest = file_digest(data)
    if is_delta(data):
        delta_from_bytes(data, agreement, source=str(previous), expected_party=party)
        snap = load_snapshot(snapshot_path(previous))
        if snap.file_digest != digest:
            raise EncodingFileError(f"{snapshot_path(previous)}: belongs to another file than {previous}")
        return snap
    enc = encodings_from_bytes(data, agreement, source=str(previous), expected_party=party)
    n = enc.header.n_records
    return NodeSnapshot(file_digest=digest, sequence=0, tokens=enc.tokens.copy(),
                        digests=row_digests(enc.clks, enc.attributes),
                        sent_day=np.full(n, day_of(enc.header.created), dtype=np.int64))


@dataclass(frozen=True)
class DeltaSummary:
    """What :func:`encode_delta` wrote, for the CLI to render."""

    party: str
    output: Path
    tokens: Path
    snapshot: Path
    sequence: int
    added: int
    changed: int
    withdrawn: int
    expired: int
    unchanged: int
    opted_out: int
    seconds: float


def encode_delta(
    agreement: AgreementConfig,
    party: str,
    secret: SecretBytes,
    key: Ed25519PrivateKey,
    records: Path,
    output: Path,
    previous: Path,
    *,
    previous_tokens: Path | None = None,
    tokens: Path | None = None,
    workers: int | None = None,
    on_rows: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> DeltaSummary:
    """Encode the current export and write a signed delta against ``previous``.

    Args:
        agreement: the validated agreement.
        party: this agency.
        secret: the agencies' linkage secret.
        key: this agency's signing key.
        records: the current export (CSV or Parquet), every row the agency holds now.
        output: the delta file to write.
        previous: the previous file of the chain (full ``.enc`` or delta) this node wrote.
        previous_tokens: its token file (default: :func:`default_tokens_path`).
        tokens: where the new token file goes (default: ``<output>.tokens``).
        workers: encoding processes (``None``: automatic).
        on_rows: progress callback.
        now: the delta's timestamp (default: now, UTC); retention counts days up to its date.

    Raises:
        RecordValidationError: a row of the export is invalid (nothing is written).
        EncodingFileError: the previous file, its token file or snapshot do not fit together.
        UsageError: the output would overwrite the previous file or the records.
    """
    started = time.perf_counter()
    records, output, previous = Path(records), Path(output), Path(previous)
    if output.resolve() in {records.resolve(), previous.resolve()}:
        raise UsageError(f"{output}: output would overwrite the records or the previous file")
    snap = previous_snapshot(previous, agreement, party)
    prev_tokens_path = Path(previous_tokens) if previous_tokens else default_tokens_path(previous, snap.sequence > 0)
    token_ids = read_tokens(prev_tokens_path)
    snap_hex = [t.tobytes().hex() for t in snap.tokens]
    if set(snap_hex) != token_ids.keys():
        raise EncodingFileError(f"{prev_tokens_path}: does not list exactly the rows of {previous}")
    encoded = encode_records(agreement, party, secret, records, workers=workers, on_rows=on_rows)
    if encoded.problems:
        rows = len({p.row for p in encoded.problems})
        raise RecordValidationError(f"{records}: {len(encoded.problems)} problem(s) in {rows} row(s); nothing was "
                                    "written (run a full `pplink node encode` to list them)")
    now = now or datetime.now(UTC)
    created_day = now.date().toordinal()
    digests = row_digests(encoded.clks, encoded.attributes)
    prev_of = {rid: i for i, rid in enumerate(token_ids[h] for h in snap_hex)}
    expired = set(snap.expired)
    keep_rows: list[int] = []  # indices into the snapshot that stay as they are
    send_rows: list[int] = []  # indices into the export to send under a fresh token
    withdrawn: list[tuple[int, WithdrawReason]] = []
    seen: set[int] = set()
    limit = agreement.retention.linkage_days
    for i, rid in enumerate(encoded.record_ids):
        if rid in expired:
            continue
        j = prev_of.get(rid)
        if j is None:
            send_rows.append(i)
            continue
        seen.add(j)
        if snap.sent_day[j] + limit <= created_day:
            withdrawn.append((j, WithdrawReason.RETENTION))
            expired.add(rid)
        elif bytes(snap.digests[j]) == bytes(digests[i]):
            keep_rows.append(j)
        else:
            withdrawn.append((j, WithdrawReason.CHANGED))
            send_rows.append(i)
    for j in range(len(snap_hex)):
        if j not in seen:
            reason = WithdrawReason.RETENTION if snap.sent_day[j] + limit <= created_day else WithdrawReason.WITHDRAWN
            withdrawn.append((j, reason))
    withdrawn.sort()
    n_send = len(send_rows)
    new_tokens = np.frombuffer(os.urandom(TOKEN_BYTES * n_send), dtype=np.uint8).reshape(n_send, TOKEN_BYTES)
    send = np.asarray(send_rows, dtype=np.int64)
    header, digest = write_delta(
        output, agreement=agreement, party=party, previous=snap.file_digest, sequence=snap.sequence + 1,
        withdrawn=snap.tokens[[j for j, _ in withdrawn]].reshape(-1, TOKEN_BYTES),
        reasons=np.array([int(r) for _, r in withdrawn], dtype=np.uint8),
        tokens=new_tokens, clks=encoded.clks[send],
        attributes={c: [v[i] for i in send_rows] for c, v in encoded.attributes.items()}, key=key,
        created=now,
    )
    keep = np.asarray(sorted(keep_rows), dtype=np.int64)
    live_tokens = np.concatenate([snap.tokens[keep], new_tokens])
    tokens_path = Path(tokens) if tokens else default_tokens_path(output, True)
    write_tokens(tokens_path, [t.tobytes().hex() for t in live_tokens],
                 [token_ids[snap_hex[j]] for j in keep.tolist()] + [encoded.record_ids[i] for i in send_rows])
    snap_out = snapshot_path(output)
    save_snapshot(snap_out, NodeSnapshot(
        file_digest=digest, sequence=header.sequence, tokens=live_tokens,
        digests=np.concatenate([snap.digests[keep], digests[send]]),
        sent_day=np.concatenate([snap.sent_day[keep], np.full(n_send, day_of(header.created), dtype=np.int64)]),
        expired=tuple(sorted(expired)),
    ))
    reasons = [r for _, r in withdrawn]
    return DeltaSummary(
        party=party, output=output, tokens=tokens_path, snapshot=snap_out, sequence=header.sequence,
        added=n_send - reasons.count(WithdrawReason.CHANGED), changed=reasons.count(WithdrawReason.CHANGED),
        withdrawn=reasons.count(WithdrawReason.WITHDRAWN), expired=reasons.count(WithdrawReason.RETENTION),
        unchanged=len(keep_rows), opted_out=encoded.opted_out, seconds=time.perf_counter() - started,
    )
