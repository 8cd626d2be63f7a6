"""A ledger's identity: its signed genesis line, the round it is bound to, and the pin that keeps it one file.

The first line of every ledger is a :class:`LedgerGenesis`: the agreement id, the linkage round
(its random ``round_id`` and its agencies, in state order) and the coordinator's signature. The
first entry's ``prev_hash`` is the genesis line's SHA-256, so every entry is chained to the round,
and that hash (the ledger id) is what a round's signed ``manifest.json`` names. A ledger bound to
no round (horizontal training, library callers) has ``round_id`` None and a random ``ledger_id``.

A :class:`LedgerBinding` is what a release must append to: that genesis, and optionally a *pin*
file in the round's folder that records which file (device and inode) the round's releases went
to and the last entry appended. With a pin, the engine refuses a new empty ledger, a second file
(a copy, another path) and a ledger cut back below the pinned entry; all appends for a round are
serialised by a lock on a file in the round's folder, so two paths to two files cannot both spend.

Locks are taken on open files (``fcntl.flock`` locks the inode), never on a name: a symlink or a
hard link to the ledger takes the same lock as the ledger's own name.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import Field, StringConstraints, ValidationError

from pplink.agreement import AgreementConfig, PartyId, canonical_json
from pplink.atomic import atomic_write
from pplink.crypto import sign, verify
from pplink.errors import AgreementMismatchError, LedgerError, SignatureError
from pplink.models import PplinkModel
from pplink.round_manifest import MANIFEST_FILE, read_round_manifest

__all__ = [
    "GENESIS_FORMAT",
    "MANIFEST_FILE",
    "manifest_ledger",
    "LedgerBinding",
    "LedgerGenesis",
    "LedgerPin",
    "file_identity",
    "genesis_line",
    "is_genesis_object",
    "lock_file",
    "new_round_id",
    "read_pin",
    "unlock_file",
    "write_pin",
]

GENESIS_FORMAT = "pplink-ledger-genesis"

Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class LedgerGenesis(PplinkModel):
    """The first line of a ledger: what the ledger's budget belongs to.

    Attributes:
        format: always ``pplink-ledger-genesis``.
        version: 1.
        agreement_id: the agreement.
        ledger_id: the round id for a round's ledger; random for an unbound ledger.
        round_id: the linkage round (from its manifest), or None for a ledger bound to no round.
        parties: the round's agencies in state order (empty when unbound): the auditor derives
            every linkage query's agencies and sensitivity from these, not from the entries.
        signature: base64 Ed25519 signature by the coordinator over the rest.
    """

    format: Literal["pplink-ledger-genesis"]
    version: Literal[1]
    agreement_id: HexDigest
    ledger_id: Hex32
    round_id: Hex32 | None
    parties: tuple[PartyId, ...]
    signature: Annotated[str, Field(min_length=1)]


def new_round_id() -> str:
    """A fresh random round id (32 hex digits)."""
    return secrets.token_hex(16)


def _payload(obj: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in obj.items() if k != "signature"})


def genesis_line(agreement: AgreementConfig, key: Ed25519PrivateKey, round_id: str | None,
                 parties: tuple[str, ...] = ()) -> bytes:
    """The genesis line (canonical JSON, no newline) of a round's ledger, or of an unbound one.

    Ed25519 signatures are deterministic, so a round's genesis is a function of the agreement, the
    round and the key: the match round can name its hash in the manifest before any ledger exists.
    """
    unsigned = {
        "format": GENESIS_FORMAT, "version": 1, "agreement_id": agreement.agreement_id,
        "ledger_id": round_id if round_id is not None else secrets.token_hex(16),
        "round_id": round_id, "parties": list(parties),
    }
    signature = base64.b64encode(sign(key, _payload(unsigned))).decode("ascii")
    return canonical_json({**unsigned, "signature": signature})


def is_genesis_object(obj: object) -> bool:
    """Whether a parsed ledger line is a genesis line (rather than an entry)."""
    return isinstance(obj, dict) and obj.get("format") == GENESIS_FORMAT


def check_genesis(agreement: AgreementConfig, line: bytes, what: str) -> LedgerGenesis:
    """Parse and verify a genesis line: canonical, well-formed, this agreement's, signed by its coordinator.

    Raises:
        LedgerError: naming the problem.
        AgreementMismatchError: the ledger was started under another agreement.
    """
    try:
        obj = json.loads(line)
        genesis = LedgerGenesis.model_validate(obj)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError):
        raise LedgerError(f"{what}: the genesis line is not a valid ledger genesis") from None
    if canonical_json(obj) != line:
        raise LedgerError(f"{what}: the genesis line is not in canonical form (it was rewritten)")
    if genesis.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError(f"{what}: the ledger was started under another agreement")
    if genesis.round_id is not None and genesis.ledger_id != genesis.round_id:
        raise LedgerError(f"{what}: a round's ledger must have the round id as its ledger id")
    strangers = sorted(set(genesis.parties) - set(agreement.agency_ids))
    if strangers:
        raise LedgerError(f"{what}: the genesis names agencies not in the agreement ({', '.join(strangers)})")
    try:
        raw = base64.b64decode(genesis.signature, validate=True)
    except ValueError:
        raw = b""
    try:
        verify(agreement.coordinator.public_key, _payload(obj), raw, what=f"{what}: genesis")
    except SignatureError as exc:
        raise LedgerError(str(exc)) from None
    return genesis


def manifest_ledger(agreement: AgreementConfig, linkage_dir: Path) -> dict[str, str]:
    """The ``ledger`` a round's signed manifest names (``round_id``, ``genesis``).

    Raises:
        RoundIntegrityError: no manifest, a bad signature, another agreement (see
            :func:`pplink.round_manifest.read_round_manifest`).
        LedgerError: the manifest names no ledger (a round made before ledgers were bound to
            rounds: run the match again).
    """
    path = Path(linkage_dir) / MANIFEST_FILE
    manifest = read_round_manifest(agreement, path)
    ledger = manifest.get("ledger")
    if not isinstance(ledger, dict) or not isinstance(ledger.get("genesis"), str) \
            or ledger.get("round_id") != manifest.get("round_id"):
        raise LedgerError(f"{path}: the manifest names no ledger for its round (a round made before ledgers were "
                          "bound to rounds); run the match again")
    return {"round_id": str(ledger["round_id"]), "genesis": ledger["genesis"]}


# --- binding and pin ----------------------------------------------------------------------------


class LedgerPin(PplinkModel):
    """Which file a round's releases went to, and the last entry appended there.

    Attributes:
        genesis: the ledger id (SHA-256 of its genesis line).
        path: the ledger's path when pinned (for messages only: identity is ``device``/``inode``).
        device: ``st_dev`` of the ledger file.
        inode: ``st_ino`` of the ledger file.
        seq: the last entry appended through this pin (0: none yet).
        head: SHA-256 of that entry's line (the genesis hash when ``seq`` is 0).
    """

    genesis: HexDigest
    path: str
    device: int
    inode: int
    seq: Annotated[int, Field(ge=0)]
    head: HexDigest


@dataclass(frozen=True)
class LedgerBinding:
    """The ledger a release must go to.

    Attributes:
        genesis: SHA-256 of the round's genesis line (what the manifest names).
        round_id: the round.
        parties: the round's agencies in state order.
        pin: the round's pin file (``<round>/coordinator/ledger.pin.json``), or None to check the
            genesis only.
    """

    genesis: str
    round_id: str
    parties: tuple[str, ...]
    pin: Path | None = None

    @property
    def lock(self) -> Path | None:
        """The lock file in the round's folder that serialises every append for the round."""
        return None if self.pin is None else self.pin.with_name("ledger.lock")


def read_pin(path: Path) -> LedgerPin | None:
    """The pin, or None where none was written yet.

    Raises:
        LedgerError: the pin cannot be read or is not a valid pin (a person must look).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read the ledger pin ({exc.strerror})") from None
    try:
        return LedgerPin.model_validate_json(data)
    except ValidationError:
        raise LedgerError(f"{path}: not a valid ledger pin; a person must look before more releases") from None


def write_pin(path: Path, pin: LedgerPin) -> None:
    """Write the pin atomically (:func:`pplink.atomic.atomic_write`)."""
    atomic_write(Path(path), canonical_json(pin.model_dump(mode="json")) + b"\n")


# --- locks by file identity ---------------------------------------------------------------------


def file_identity(fd: int) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of an open file."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def lock_file(path: Path, timeout_s: float, *, what: str) -> int:
    """Open (creating) ``path`` and take an exclusive ``flock`` on its inode; returns the descriptor.

    The lock belongs to the file, not its name: a symlink or hard link to it takes the same lock.
    If the name is replaced while we wait (a rename over it), the lock is retaken on the new file.

    Raises:
        LedgerError: it cannot be opened or locked within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(f"{path}: cannot open {what} ({exc.strerror})") from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise LedgerError(f"{path}: cannot lock {what} ({exc.strerror})") from None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LedgerError(f"{path}: another process has held the {what} lock for over {timeout_s:g} s")
            time.sleep(0.01)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == file_identity(fd):
            return fd
        unlock_file(fd)  # the name now points at another file: lock that one instead


def unlock_file(fd: int) -> None:
    """Release a lock taken by :func:`lock_file` and close its descriptor."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
