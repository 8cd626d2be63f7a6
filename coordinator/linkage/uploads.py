"""What an agency sends to an incremental round, and whether it follows the agency's chain.

A full ``.enc`` starts (or restarts) an agency's chain; each delta names the digest of the
agency's previous file and a sequence number one above it. The state records, per agency, the
last file applied (its digest and sequence) and every digest applied before, so that a replayed,
out-of-order or forked file is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.linkage.state_store import IncrementalState
from pplink.agreement import AgreementConfig
from pplink.deltafile import DeltaFile, delta_from_bytes, file_digest, is_delta
from pplink.encfile import EncodingsFile, encodings_from_bytes
from pplink.errors import DeltaChainError, EncodingFileError

__all__ = ["Upload", "check_chain", "read_upload"]


@dataclass(frozen=True)
class Upload:
    """One agency's file for a round: a full encodings file or a delta, verified, with its digest."""

    party: str
    digest: str
    created: str
    added: EncodingsFile
    delta: DeltaFile | None = None
    source: str = ""


def read_upload(path: Path, agreement: AgreementConfig) -> Upload:
    """Read and verify a full ``.enc`` or a delta.

    Raises:
        EncodingFileError, SignatureError, AgreementMismatchError: the file fails verification.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read ({exc.strerror})") from None
    if is_delta(data):
        delta = delta_from_bytes(data, agreement, source=str(path))
        return Upload(party=delta.header.party, digest=delta.digest, created=delta.header.created,
                      added=delta.added, delta=delta, source=str(path))
    enc = encodings_from_bytes(data, agreement, source=str(path))
    return Upload(party=enc.header.party, digest=file_digest(data), created=enc.header.created, added=enc,
                  source=str(path))


def check_chain(state: IncrementalState, up: Upload) -> None:
    """Refuse a file that does not follow the last one applied from its agency.

    Raises:
        DeltaChainError: replayed, out of order, forked, or a delta from an agency with no chain yet.
    """
    chain = state.chains.get(up.party)
    history = list(chain["history"]) if chain else []  # type: ignore[call-overload]
    if up.digest in history:
        raise DeltaChainError(f"{up.source}: this file from {up.party} was already applied (replayed)")
    if up.delta is None:
        return  # a full file starts (or restarts) the agency's chain
    if chain is None:
        raise DeltaChainError(f"{up.source}: a delta from {up.party}, which has no rows in the state yet; "
                              "its first file must be a full encodings file")
    previous, sequence = up.delta.header.previous, up.delta.header.sequence
    if previous == chain["head"] and sequence == int(chain["sequence"]) + 1:  # type: ignore[call-overload]
        return
    if previous in history:
        raise DeltaChainError(f"{up.source}: delta {sequence} from {up.party} follows an earlier file than the "
                              f"last one applied (sequence {chain['sequence']}); out of order")
    raise DeltaChainError(f"{up.source}: delta from {up.party} follows a file the coordinator never applied "
                          "(a fork of the agency's history)")
