"""Which ledger a release must spend: the one the linkage round's signed manifest names.

A match round (``coordinator.linkage.match_round``) mints a random round id, keeps it in the
linkage state and names the round's ledger in its signed ``manifest.json``: the SHA-256 of the
genesis line bound to the agreement, the round id and the round's agencies. Here the engine turns
that into a :class:`~pplink.ledger_genesis.LedgerBinding`: the ledger must start with exactly that
genesis, and (through the pin in the round's folder) be the one file the round's releases went to.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import LinkageState
from pplink.agreement import AgreementConfig
from pplink.errors import LedgerError
from pplink.ledger import line_hash
from pplink.ledger_genesis import MANIFEST_FILE, LedgerBinding, genesis_line, manifest_ledger, read_pin

__all__ = [
    "DEFAULT_LEDGER",
    "MANIFEST_FILE",
    "PIN_FILE",
    "binding_for_linkage",
    "binding_for_state",
    "ledger_for_round",
    "manifest_ledger",
]

#: In the round's folder: which ledger file the round's releases went to, and the last entry.
PIN_FILE = "coordinator/ledger.pin.json"
#: In the round's folder: where its ledger goes when no other file is named before its first release.
DEFAULT_LEDGER = "coordinator/ledger.jsonl"


def binding_for_state(agreement: AgreementConfig, key: Ed25519PrivateKey, state: LinkageState, *,
                      pin: Path | None = None) -> LedgerBinding | None:
    """The binding of a linkage state's round, or None for a state made by no match round (built in memory)."""
    round_id = state.meta.get("round_id")
    if not isinstance(round_id, str):
        return None
    genesis = line_hash(genesis_line(agreement, key, round_id, tuple(state.parties)))
    return LedgerBinding(genesis=genesis, round_id=round_id, parties=tuple(state.parties), pin=pin)


def binding_for_linkage(agreement: AgreementConfig, key: Ed25519PrivateKey, state: LinkageState,
                        linkage_dir: Path) -> LedgerBinding | None:
    """The binding for releases over a round's folder: the manifest's ledger, pinned in the folder.

    Returns None for an incremental round (``docs/incremental.md``): those do not name a ledger
    yet, so their releases are bound to the agreement only (a known gap, in
    ``docs/privacy-accounting.md``).

    Raises:
        LedgerError: the manifest names no ledger, or not the one the state and key give.
    """
    if state.meta.get("incremental") is True:
        return None
    named = manifest_ledger(agreement, linkage_dir)
    binding = binding_for_state(agreement, key, state, pin=Path(linkage_dir) / PIN_FILE)
    if binding is None or binding.genesis != named["genesis"]:
        raise LedgerError(f"{linkage_dir}: the linkage state and the signed manifest name different ledgers")
    return binding


def ledger_for_round(linkage_dir: Path, binding: LedgerBinding | None) -> Path:
    """The round's ledger file: the one its pin names, or ``DEFAULT_LEDGER`` in its folder before its first release."""
    pin = read_pin(binding.pin) if binding is not None and binding.pin is not None else None
    # No pin yet, or one an earlier round left in a re-used folder.
    if pin is None or binding is None or pin.genesis != binding.genesis:
        return Path(linkage_dir) / DEFAULT_LEDGER
    return Path(pin.path)
