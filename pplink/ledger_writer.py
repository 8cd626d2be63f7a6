"""Appending to the privacy ledger: locked (by file identity), checked, bound to its round, fsynced.

:func:`open_ledger` locks the ledger file itself (``fcntl.flock`` on its inode, so every name for
it takes the same lock) and, for a pinned round, a lock file in the round's folder; it reads the
ledger through the locked descriptor, checks it (:class:`pplink.ledger.CheckedLedger`) and, with
a :class:`~pplink.ledger_genesis.LedgerBinding`, refuses any ledger but the round's. Its
:class:`LedgerWriter` numbers, chains, signs and appends entries (the genesis line with the first)
and moves the pin forward. The release engine (``coordinator.release.engine``) is its one caller
that spends budget.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pplink.accounting import PrivacyLoss, compose, mechanism_for
from pplink.agreement import Accounting, AgreementConfig
from pplink.crypto import public_key_text, sign
from pplink.errors import LedgerError, SignatureError
from pplink.ledger import (
    LOCK_TIMEOUT_S,
    CheckedLedger,
    EntryDraft,
    LedgerEntry,
    entry_line,
    first_prev_hash,
    line_hash,
    signing_payload,
    split_lines,
    utc_now,
)
from pplink.ledger_genesis import (
    LedgerBinding,
    LedgerPin,
    file_identity,
    genesis_line,
    lock_file,
    read_pin,
    unlock_file,
    write_pin,
)

__all__ = ["LedgerWriter", "open_ledger"]


# --- appending --------------------------------------------------------------------------------


class LedgerWriter:
    """An open, locked, checked ledger; append with :meth:`append`.

    Obtain one from :func:`open_ledger`; it is valid only inside that ``with`` block.
    """

    def __init__(self, path: Path, agreement: AgreementConfig, checked: CheckedLedger, binding: LedgerBinding | None,
                 identity: tuple[int, int]) -> None:
        self.path = path
        self.agreement = agreement
        self.binding = binding
        self._entries = checked.entries
        self._genesis_line = checked.genesis_line
        self._prev_hash = checked.head
        self._identity = identity
        self._open = True

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Entries on the ledger so far, this block's appends included."""
        return tuple(self._entries)

    @property
    def ledger_id(self) -> str:
        """The ledger id: its genesis line's hash (64 zeros for a ledger written before genesis lines)."""
        return first_prev_hash(self._genesis_line)

    @property
    def spent(self) -> PrivacyLoss:
        """Total loss of the entries so far, recomputed from their own losses (not trusted totals)."""
        budget = self.agreement.budget
        return compose([e.loss for e in self._entries], budget.accounting, budget.delta)

    def append(self, draft: EntryDraft, key: Ed25519PrivateKey) -> LedgerEntry:
        """Number, chain, sign, write and fsync one entry; returns it once it is on disk.

        On an empty ledger the genesis line (the binding's round, or an unbound one) is written in
        the same write, before the entry. With a pin, the pin then records this entry.

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
        prefix = b""
        prev_hash = self._prev_hash
        starting = self._genesis_line is None and not self._entries
        if starting:
            binding = self.binding
            genesis = genesis_line(self.agreement, key, binding.round_id if binding else None,
                                   binding.parties if binding else ())
            if binding is not None and line_hash(genesis) != binding.genesis:
                raise LedgerError(f"{self.path}: the genesis this key and round give is not the one the round's "
                                  "manifest names; nothing was written")
            prefix = genesis + b"\n"
            prev_hash = line_hash(genesis)
        unsigned = {
            **draft.model_dump(mode="json"),
            "seq": len(self._entries) + 1,
            "time": utc_now(),
            "agreement_id": self.agreement.agreement_id,
            "cumulative": compose([*(e.loss for e in self._entries), draft.loss], budget.accounting,
                                  budget.delta).model_dump(mode="json"),
            "prev_hash": prev_hash,
        }
        signature = base64.b64encode(sign(key, signing_payload(unsigned))).decode("ascii")
        entry = LedgerEntry.model_validate({**unsigned, "signature": signature})
        line = entry_line(entry)
        _append_line(self.path, prefix + line)
        if starting:
            self._genesis_line = prefix[:-1]
        self._entries.append(entry)
        self._prev_hash = line_hash(line)
        if self.binding is not None and self.binding.pin is not None:
            write_pin(self.binding.pin, LedgerPin(
                genesis=self.binding.genesis, path=str(self.path.absolute()), device=self._identity[0],
                inode=self._identity[1], seq=entry.seq, head=self._prev_hash))
        return entry


def _append_line(path: Path, line: bytes) -> None:
    r"""One ``O_APPEND`` write of ``line + b"\n"``, then fsync the file and its folder."""
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
    # The directory entry must survive a crash too, or the "recorded" release could vanish.
    dir_fd = os.open(Path(path).resolve().parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _check_binding(path: Path, binding: LedgerBinding, checked: CheckedLedger, identity: tuple[int, int]) -> None:
    """Refuse any ledger but the round's: another genesis, none, a second file, or one cut back."""
    named = f"the round's manifest names ledger {binding.genesis[:12]}"
    if checked.genesis_line is None and checked.entries:
        raise LedgerError(f"{path}: this ledger has no genesis line, so it is bound to no linkage round; {named}")
    if checked.genesis_line is not None and line_hash(checked.genesis_line) != binding.genesis:
        raise LedgerError(f"{path}: this ledger (genesis {line_hash(checked.genesis_line)[:12]}) belongs to another "
                          f"round or was started afresh; {named}")
    pin = read_pin(binding.pin) if binding.pin is not None else None
    if pin is None or pin.genesis != binding.genesis:
        return  # no release yet, or a pin left in the folder by an earlier round (replaced on append)
    if (pin.device, pin.inode) != identity:
        raise LedgerError(f"{path}: not the file this round's releases went to ({pin.path}); a new or second ledger "
                          "would spend the round's budget again. Pass that ledger (a symlink to it is fine)")
    known = [first_prev_hash(checked.genesis_line), *checked.hashes]
    if pin.seq >= len(known):
        raise LedgerError(f"{path}: the ledger ends at entry {len(checked.entries)}, but entry {pin.seq} was appended "
                          "to it: it was cut back; a person must look before more releases")
    if known[pin.seq] != pin.head:
        raise LedgerError(f"{path}: entry {pin.seq} is not the one appended (the ledger was rewritten); a person must "
                          "look before more releases")


@contextmanager
def open_ledger(path: Path, agreement: AgreementConfig, *, binding: LedgerBinding | None = None,
                lock_timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[LedgerWriter]:
    """Lock a ledger, check it, and yield a writer; the locks are held until the block ends.

    The ledger file itself is locked (its inode: every name for it takes the same lock); with a
    pinned ``binding``, first a lock file in the round's folder, so that appends for one round
    are serialised whichever file they name. A missing ledger is created (with its parent
    folder); its genesis line is written with the first entry.

    Args:
        path: the ledger file.
        agreement: the agreement.
        binding: the round the release belongs to: the ledger must have the round's genesis (or be
            empty) and, with a pin, be the pinned file holding the pinned entry.
        lock_timeout_s: how long to wait for another appender.

    Raises:
        LedgerError: the ledger is torn, malformed, does not verify, is not the round's ledger
            (appending is refused), or a lock could not be taken within ``lock_timeout_s``.
        AgreementMismatchError: the ledger belongs to another agreement.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    round_lock = binding.lock if binding is not None else None
    round_fd = lock_file(round_lock, lock_timeout_s, what="round's ledger") if round_lock is not None else None
    writer: LedgerWriter | None = None
    try:
        fd = lock_file(path, lock_timeout_s, what="ledger")
        try:
            checked = CheckedLedger(path, split_lines(_read_fd(fd), path), agreement)
            identity = file_identity(fd)
            if binding is not None:
                _check_binding(path, binding, checked, identity)
            writer = LedgerWriter(path, agreement, checked, binding, identity)
            yield writer
        finally:
            if writer is not None:
                writer._open = False
            unlock_file(fd)
    finally:
        if round_fd is not None:
            unlock_file(round_fd)
