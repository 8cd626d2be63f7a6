"""The privacy ledger: a signed, hash-chained JSON Lines file of every DP release.

Each line is one :class:`LedgerEntry` in canonical JSON (sorted keys, no whitespace, UTF-8): what
was asked (:class:`ReleaseQuery`), the mechanism, sensitivity and noise scale, this release's
privacy loss and the running total, the released (noisy, suppressed) cells, the SHA-256 of the
previous line (64 zeros for the first) and the coordinator's Ed25519 signature over the entry's
canonical JSON without its ``signature`` field.

The first line is the ledger's genesis (:mod:`pplink.ledger_genesis`): the agreement and the
linkage round the budget belongs to; the first entry chains to it. Appends go through
:func:`pplink.ledger_writer.open_ledger`, which locks the ledger file (by inode) for the whole
read-check-append cycle (so two releases cannot both pass a budget check against the same total),
refuses a ledger whose chain or signatures do not hold or that is not the round's, and writes each
entry with one ``O_APPEND`` write followed by ``fsync``. A torn last line (a crash mid write) is
reported, never repaired: the ledger is evidence, and a human decides what happened.

The ledger does not enforce the budget; the release engine does, before any noise is drawn, and
the auditor (:mod:`pplink.audit.verify`) re-checks everything from the file alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints, ValidationError, model_validator

from pplink.accounting import Mechanism, PrivacyLoss, QueryKind
from pplink.agreement import Accounting, AgreementConfig, canonical_json
from pplink.crypto import verify
from pplink.errors import AgreementMismatchError, LedgerError, SignatureError
from pplink.ledger_genesis import LedgerGenesis, check_genesis, is_genesis_object
from pplink.models import PplinkModel
from pplink.queries import check_options

__all__ = [
    "GENESIS_HASH",
    "LOCK_TIMEOUT_S",
    "Cell",
    "CheckedLedger",
    "EntryDraft",
    "LedgerEntry",
    "ReleaseQuery",
    "decode_signature",
    "entry_line",
    "first_prev_hash",
    "line_hash",
    "parse_line",
    "read_genesis",
    "read_ledger",
    "read_ledger_lines",
    "signing_payload",
    "split_genesis",
    "split_lines",
    "utc_now",
]

#: ``prev_hash`` of the first entry of a ledger written before genesis lines (and of nothing else).
GENESIS_HASH = "0" * 64

HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ColumnName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
#: UTC time with microseconds and a ``Z``, kept as text so that it round-trips byte for byte.
UtcTime = Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")]

#: How long :func:`open_ledger` waits for another appender to finish before giving up.
LOCK_TIMEOUT_S = 30.0


class ReleaseQuery(PplinkModel):
    """The canonical description of a release query, as stored on the ledger.

    Attributes:
        kind: which query.
        attribute: the release attribute counted by (required for count-by, histogram and
            confusion; optional for link-rate, where None means all people together).
        by_combination: count-by only: cross the attribute with the agency combination.
        parties: the agencies in the linkage, in state order (filled in by the engine; they
            define the public key set of agency combinations).
        subject: confusion and scoring releases: what the counts are of (e.g. "model v1, holdout");
            fedavg: the round, agencies, clipping norm, noise multiplier and Flower's RDP epsilon.
    """

    kind: QueryKind
    attribute: ColumnName | None = None
    by_combination: bool = False
    parties: tuple[str, ...] = ()
    subject: Annotated[str, Field(max_length=200)] = ""

    @model_validator(mode="after")
    def _options_fit_kind(self) -> ReleaseQuery:
        check_options(self.kind, self.attribute, self.by_combination, self.subject)
        return self


class Cell(PplinkModel):
    """One released cell: its public key and the noisy count, or None where it was suppressed.

    A suppressed cell's noisy count fell below the agreement's ``min_cell_size``; it is shown as
    ``< min_cell_size`` and its value is never written anywhere.
    """

    key: tuple[str, ...]
    value: int | None


class EntryDraft(PplinkModel):
    """What the release engine knows about a release before the ledger numbers, chains and signs it."""

    query: ReleaseQuery
    accounting: Accounting
    mechanism: Mechanism
    #: In the mechanism's metric: L1 for Laplace, L2 for the Gaussian.
    sensitivity: Annotated[int, Field(gt=0)]
    #: Laplace b, or Gaussian sigma.
    scale: Annotated[float, Field(gt=0.0)]
    loss: PrivacyLoss
    min_cell_size: Annotated[int, Field(ge=0)]
    cells: tuple[Cell, ...]
    #: The DP library and version whose measurement drew the noise.
    library: str


class LedgerEntry(EntryDraft):
    """One line of the ledger."""

    seq: Annotated[int, Field(ge=1)]
    time: UtcTime
    agreement_id: HexDigest
    #: The total over entries 1..seq (pure: sum of epsilons; zCDP: sum of rhos, converted).
    cumulative: PrivacyLoss
    prev_hash: HexDigest
    #: Base64 Ed25519 signature over :func:`signing_payload` of this entry.
    signature: Annotated[str, Field(min_length=1)]


# --- bytes, hashes, signatures ----------------------------------------------------------------


def entry_line(entry: LedgerEntry) -> bytes:
    """The entry's line on disk (canonical JSON, no newline)."""
    return canonical_json(entry.model_dump(mode="json"))


def line_hash(line: bytes) -> str:
    """SHA-256 hex of a ledger line's canonical bytes (without its newline); the next entry's ``prev_hash``.

    >>> line_hash(b"{}")
    '44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
    """
    return hashlib.sha256(line).hexdigest()


def signing_payload(entry_json: dict[str, Any]) -> bytes:
    """The bytes the coordinator signs: the entry's canonical JSON without ``signature``.

    Computed on the JSON object, not the pydantic model, so that an auditor checks exactly what
    is in the file.

    >>> signing_payload({"seq": 1, "signature": "x", "a": 2})
    b'{"a":2,"seq":1}'
    """
    return canonical_json({k: v for k, v in entry_json.items() if k != "signature"})


def utc_now() -> str:
    """The current UTC time as the ledger writes it (microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- reading ----------------------------------------------------------------------------------


def read_ledger_lines(path: Path) -> list[bytes]:
    """The ledger's lines (its genesis line included) without newlines; a missing file is an empty ledger.

    Raises:
        LedgerError: the last line is torn (no trailing newline), naming the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read ledger ({exc.strerror})") from None
    return split_lines(data, path)


def split_lines(data: bytes, path: Path) -> list[bytes]:
    """A ledger file's bytes as lines without newlines.

    Raises:
        LedgerError: the last line is torn (no trailing newline).
    """
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise LedgerError(
            f"{path}: line {len(lines)} is torn (no trailing newline; a write was interrupted); "
            "the ledger is left as it is for a person to inspect"
        )
    return lines[:-1]


def split_genesis(lines: list[bytes]) -> tuple[bytes | None, list[bytes]]:
    """``(genesis line or None, entry lines)``: a ledger written before genesis lines existed has none.

    >>> split_genesis([b'{"format":"pplink-ledger-genesis"}', b"{}"])
    (b'{"format":"pplink-ledger-genesis"}', [b'{}'])
    >>> split_genesis([b'{"seq":1}'])
    (None, [b'{"seq":1}'])
    """
    if lines:
        try:
            first = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            first = None
        if is_genesis_object(first):
            return lines[0], lines[1:]
    return None, lines


def first_prev_hash(genesis: bytes | None) -> str:
    """The ``prev_hash`` of a ledger's first entry: its genesis line's hash (64 zeros without one)."""
    return GENESIS_HASH if genesis is None else line_hash(genesis)


def parse_line(line: bytes, path: Path, lineno: int) -> tuple[dict[str, Any], LedgerEntry]:
    """Parse one line into its JSON object and its entry.

    Raises:
        LedgerError: not JSON, not canonical, or not a valid entry (names file and line).
    """
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LedgerError(f"{path}: line {lineno} is not JSON") from None
    if not isinstance(obj, dict):
        raise LedgerError(f"{path}: line {lineno} is not a JSON object")
    if canonical_json(obj) != line:
        raise LedgerError(f"{path}: line {lineno} is not in canonical form (it was rewritten)")
    try:
        entry = LedgerEntry.model_validate(obj)
    except ValidationError as err:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "(entry)" for e in err.errors(include_input=False)})
        raise LedgerError(f"{path}: line {lineno} is not a valid ledger entry (fields: {', '.join(fields)})") from None
    return obj, entry


class CheckedLedger:
    """A ledger's lines, checked: its genesis (if any), entries, each entry line's hash and the head.

    Raises:
        LedgerError: the first problem (see :func:`read_ledger`).
        AgreementMismatchError: an entry made under another agreement.
    """

    def __init__(self, path: Path, lines: list[bytes], agreement: AgreementConfig | None) -> None:
        self.genesis_line, entry_lines = split_genesis(lines)
        self.genesis: LedgerGenesis | None = None
        if self.genesis_line is not None and agreement is not None:
            self.genesis = check_genesis(agreement, self.genesis_line, str(path))
        offset = 1 if self.genesis_line is not None else 0
        self.entries: list[LedgerEntry] = []
        self.hashes: list[str] = []
        prev = first_prev_hash(self.genesis_line)
        coordinator_key = agreement.coordinator.public_key if agreement is not None else None
        for i, line in enumerate(entry_lines):
            lineno = i + 1 + offset
            obj, entry = parse_line(line, path, lineno)
            if entry.seq != i + 1:
                raise LedgerError(f"{path}: line {lineno} has sequence number {entry.seq}, not {i + 1}")
            if entry.prev_hash != prev:
                raise LedgerError(f"{path}: line {lineno} does not chain to the line before it (hash mismatch)")
            if agreement is not None:
                if entry.agreement_id != agreement.agreement_id:
                    raise AgreementMismatchError(f"{path}: line {lineno} was made under another agreement")
                assert coordinator_key is not None
                try:
                    verify(coordinator_key, signing_payload(obj), decode_signature(entry.signature),
                           what=f"{path}: line {lineno}")
                except SignatureError as exc:
                    raise LedgerError(str(exc)) from None
            self.entries.append(entry)
            prev = line_hash(line)
            self.hashes.append(prev)
        self.head = prev


def read_ledger(path: Path, agreement: AgreementConfig | None = None) -> list[LedgerEntry]:
    """Read and check a ledger's entries: every line parses, sequence numbers run 1..n, the hash chain holds.

    The chain starts at the genesis line (the first entry's ``prev_hash`` is its hash). With
    ``agreement``, also the genesis, every entry's agreement id and coordinator signature. This is
    the coordinator's own pre-append check; :func:`pplink.audit.verify_ledger` is the auditor's
    full check, which reports every problem instead of stopping at the first.

    Raises:
        LedgerError: a torn, malformed, out-of-sequence, unchained or badly signed line.
        AgreementMismatchError: an entry made under another agreement.
    """
    path = Path(path)
    return CheckedLedger(path, read_ledger_lines(path), agreement).entries


def read_genesis(path: Path, agreement: AgreementConfig) -> LedgerGenesis | None:
    """The ledger's verified genesis, or None for an empty ledger or one written before genesis lines."""
    path = Path(path)
    return CheckedLedger(path, read_ledger_lines(path), agreement).genesis


def decode_signature(text: str) -> bytes:
    """An entry's signature bytes, or b"" unless ``text`` is their one canonical base64 form.

    Python's decoder ignores the padding bits of the last character, so without the round-trip
    check two different signature texts would verify as the same signature (and a flipped
    character would go unnoticed).

    >>> decode_signature("QQ=="), decode_signature("QR==")
    (b'A', b'')
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return b""
    return raw if base64.b64encode(raw).decode("ascii") == text else b""
