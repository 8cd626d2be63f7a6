"""The privacy ledger: a signed, hash-chained JSON Lines file of every DP release.

Each line is one :class:`LedgerEntry` in canonical JSON (sorted keys, no whitespace, UTF-8): what
was asked (:class:`ReleaseQuery`), the mechanism, sensitivity and noise scale, this release's
privacy loss and the running total, the released (noisy, suppressed) cells, the SHA-256 of the
previous line (64 zeros for the first) and the coordinator's Ed25519 signature over the entry's
canonical JSON without its ``signature`` field.

Appends go through :func:`open_ledger`, which takes an exclusive ``fcntl`` lock on
``<ledger>.lock`` for the whole read-check-append cycle (so two releases cannot both pass a
budget check against the same total), refuses a ledger whose chain or signatures do not hold, and
writes each entry with one ``O_APPEND`` write followed by ``fsync``. A torn last line (a crash mid
write) is reported, never repaired: the ledger is evidence, and a human decides what happened.

The ledger does not enforce the budget; the release engine does, before any noise is drawn, and
the auditor (:mod:`pplink.audit.verify`) re-checks everything from the file alone.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, StringConstraints, ValidationError, model_validator

from pplink.accounting import Mechanism, PrivacyLoss, QueryKind, compose, mechanism_for
from pplink.agreement import Accounting, AgreementConfig, canonical_json
from pplink.crypto import public_key_text, sign, verify
from pplink.errors import AgreementMismatchError, LedgerError, SignatureError
from pplink.models import PplinkModel

__all__ = [
    "GENESIS_HASH",
    "Cell",
    "EntryDraft",
    "LedgerEntry",
    "LedgerWriter",
    "ReleaseQuery",
    "decode_signature",
    "entry_line",
    "line_hash",
    "lock_path",
    "open_ledger",
    "parse_line",
    "read_ledger",
    "read_ledger_lines",
    "signing_payload",
]

#: ``prev_hash`` of the first entry.
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
        needs_attribute = {QueryKind.COUNT_BY, QueryKind.HISTOGRAM, QueryKind.CONFUSION}
        if self.kind in needs_attribute and self.attribute is None:
            raise ValueError(f"query {self.kind.value} needs an attribute")
        if self.kind is QueryKind.OVERLAP and self.attribute is not None:
            raise ValueError("query overlap takes no attribute")
        if self.by_combination and self.kind is not QueryKind.COUNT_BY:
            raise ValueError("by_combination applies to count-by only")
        if self.subject and self.kind not in {QueryKind.CONFUSION, QueryKind.RESIDUALS, QueryKind.SCORE_HISTOGRAM,
                                              QueryKind.FEDAVG, QueryKind.SUFFICIENT_STATISTICS}:
            raise ValueError("subject applies to confusion counts, scoring releases and fedavg rounds only")
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


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lock_path(path: Path) -> Path:
    """The lock file guarding appends to ``path``."""
    return path.with_name(path.name + ".lock")


# --- reading ----------------------------------------------------------------------------------


def read_ledger_lines(path: Path) -> list[bytes]:
    """The ledger's lines without newlines; a missing file is an empty ledger.

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
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise LedgerError(
            f"{path}: line {len(lines)} is torn (no trailing newline; a write was interrupted); "
            "the ledger is left as it is for a person to inspect"
        )
    return lines[:-1]


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


def read_ledger(path: Path, agreement: AgreementConfig | None = None) -> list[LedgerEntry]:
    """Read and check a ledger: every line parses, sequence numbers run 1..n, the hash chain holds.

    With ``agreement``, also every entry's agreement id and coordinator signature. This is the
    coordinator's own pre-append check; :func:`pplink.audit.verify.verify_ledger` is the auditor's full
    check, which reports every problem instead of stopping at the first.

    Raises:
        LedgerError: a torn, malformed, out-of-sequence, unchained or badly signed line.
        AgreementMismatchError: an entry made under another agreement.
    """
    path = Path(path)
    entries: list[LedgerEntry] = []
    prev = GENESIS_HASH
    coordinator_key = agreement.coordinator.public_key if agreement is not None else None
    for i, line in enumerate(read_ledger_lines(path)):
        lineno = i + 1
        obj, entry = parse_line(line, path, lineno)
        if entry.seq != lineno:
            raise LedgerError(f"{path}: line {lineno} has sequence number {entry.seq}")
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
        entries.append(entry)
        prev = line_hash(line)
    return entries


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


# --- appending --------------------------------------------------------------------------------


class LedgerWriter:
    """An open, locked, checked ledger; append with :meth:`append`.

    Obtain one from :func:`open_ledger`; it is valid only inside that ``with`` block.
    """

    def __init__(self, path: Path, agreement: AgreementConfig, entries: list[LedgerEntry], prev_hash: str) -> None:
        self.path = path
        self.agreement = agreement
        self._entries = entries
        self._prev_hash = prev_hash
        self._open = True

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Entries on the ledger so far, this block's appends included."""
        return tuple(self._entries)

    @property
    def spent(self) -> PrivacyLoss:
        """Total loss of the entries so far, recomputed from their own losses (not trusted totals)."""
        budget = self.agreement.budget
        return compose([e.loss for e in self._entries], budget.accounting, budget.delta)

    def append(self, draft: EntryDraft, key: Ed25519PrivateKey) -> LedgerEntry:
        """Number, chain, sign, write and fsync one entry; returns it once it is on disk.

        Raises:
            SignatureError: ``key`` is not the agreement's coordinator key.
            LedgerError: the draft's accounting or mechanism does not fit the agreement, or the write failed
                (the caller must not show the release).
        """
        if not self._open:
            raise LedgerError(f"{self.path}: ledger writer used outside its `with open_ledger(...)` block")
        if public_key_text(key) != self.agreement.coordinator.public_key:
            raise SignatureError("the signing key is not the agreement's coordinator key; entries would not verify")
        budget = self.agreement.budget
        if draft.accounting is not budget.accounting or draft.mechanism is not mechanism_for(budget.accounting) or (
            (draft.loss.rho is None) != (budget.accounting is Accounting.PURE)
        ):
            raise LedgerError(
                f"{self.path}: a {draft.mechanism.value} entry under {draft.accounting.value} accounting does not fit "
                f"the agreement's {budget.accounting.value} accounting"
            )
        unsigned = {
            **draft.model_dump(mode="json"),
            "seq": len(self._entries) + 1,
            "time": _utc_now(),
            "agreement_id": self.agreement.agreement_id,
            "cumulative": compose([*(e.loss for e in self._entries), draft.loss], budget.accounting,
                                  budget.delta).model_dump(mode="json"),
            "prev_hash": self._prev_hash,
        }
        signature = base64.b64encode(sign(key, signing_payload(unsigned))).decode("ascii")
        entry = LedgerEntry.model_validate({**unsigned, "signature": signature})
        line = entry_line(entry)
        _append_line(self.path, line)
        self._entries.append(entry)
        self._prev_hash = line_hash(line)
        return entry


def _append_line(path: Path, line: bytes) -> None:
    r"""One ``O_APPEND`` write of ``line + b"\n"``, then fsync (and the directory's on creation)."""
    created = not path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot open ledger for appending ({exc.strerror})") from None
    try:
        data = memoryview(line + b"\n")
        while data:
            written = os.write(fd, data)
            data = data[written:]
        os.fsync(fd)
    except OSError as exc:
        raise LedgerError(f"{path}: append failed ({exc.strerror}); the release was not shown") from None
    finally:
        os.close(fd)
    if created:
        # The new directory entry must survive a crash too, or the "recorded" release could vanish.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _acquire_lock(path: Path, timeout_s: float) -> int:
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"{lock}: cannot open ledger lock file ({exc.strerror})") from None
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise LedgerError(f"{lock}: cannot lock ledger ({exc.strerror})") from None
        if time.monotonic() >= deadline:
            os.close(fd)
            raise LedgerError(f"{path}: another process has held the ledger lock for over {timeout_s:g} s")
        time.sleep(0.01)


@contextmanager
def open_ledger(path: Path, agreement: AgreementConfig, *,
                lock_timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[LedgerWriter]:
    """Lock a ledger, check it, and yield a writer; the lock is held until the block ends.

    A missing ledger is created (with its parent folder) on the first append.

    Raises:
        LedgerError: the ledger is torn, malformed or does not verify (appending is refused), or
            the lock could not be taken within ``lock_timeout_s``.
        AgreementMismatchError: the ledger belongs to another agreement.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire_lock(path, lock_timeout_s)
    writer: LedgerWriter | None = None
    try:
        lines = read_ledger_lines(path)
        entries = read_ledger(path, agreement)
        prev = line_hash(lines[-1]) if lines else GENESIS_HASH
        writer = LedgerWriter(path, agreement, entries, prev)
        yield writer
    finally:
        if writer is not None:
            writer._open = False
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
