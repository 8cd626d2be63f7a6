"""The auditor's check of release receipts against a ledger: forks, rewrites and truncation.

A receipt (:class:`pplink.receipts.Receipt`) carries the signed entry its holder was shown. The
coordinator's signature makes it evidence, so a receipt whose entry is not on the ledger at its
number proves the coordinator signed two different entries there (a fork or a rewrite), and one
past the ledger's end proves the ledger was cut back. A receipt that does not verify proves
nothing and is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pplink.agreement import AgreementConfig
from pplink.crypto import verify
from pplink.errors import SignatureError
from pplink.ledger import GENESIS_HASH, decode_signature, entry_line, line_hash, signing_payload
from pplink.receipts import Receipt

__all__ = ["check_receipts"]


def _invalid(agreement: AgreementConfig, receipt: Receipt) -> str | None:
    entry = receipt.entry
    if entry.agreement_id != agreement.agreement_id:
        return "its entry was made under another agreement"
    if entry.seq != receipt.seq or line_hash(entry_line(entry)) != receipt.entry_hash:
        return "its number or hash does not match its entry"
    try:
        verify(agreement.coordinator.public_key, signing_payload(entry.model_dump(mode="json")),
               decode_signature(entry.signature), what="receipt")
    except SignatureError:
        return "its entry's signature does not verify against the coordinator's key"
    return None


def check_receipts(
    agreement: AgreementConfig,
    ledger_id: str,
    hashes_by_seq: Mapping[int, str],
    receipts: Sequence[Receipt],
) -> list[tuple[str, str]]:
    """Findings ``(kind, problem)`` for every receipt the ledger contradicts.

    Kinds are ``receipt`` (not valid evidence, or another ledger's), ``truncated`` and ``fork``:
    the values of :class:`pplink.audit.verify.FindingKind`.

    Args:
        agreement: gives the coordinator's key.
        ledger_id: the ledger's genesis hash.
        hashes_by_seq: each entry number on the ledger and its line's hash.
        receipts: receipts from any parties.
    """
    findings: list[tuple[str, str]] = []
    last = max(hashes_by_seq, default=0)
    # An empty file (not even a genesis line) is every receipt's ledger cut back to nothing.
    empty = not hashes_by_seq and ledger_id == GENESIS_HASH
    for receipt in receipts:
        what = f"receipt for entry {receipt.seq} ({receipt.entry_hash[:12]})"
        problem = _invalid(agreement, receipt)
        if problem is not None:
            findings.append(("receipt", f"{what} is not valid evidence: {problem}"))
            continue
        if receipt.ledger != ledger_id and not (empty and receipt.seq >= 1):
            findings.append(("receipt", f"{what} is for ledger {receipt.ledger[:12]}, not this one "
                             f"({ledger_id[:12]}): a second ledger for the agreement, or another round's receipts"))
            continue
        on_ledger = hashes_by_seq.get(receipt.seq)
        if on_ledger is None and receipt.seq > last:
            findings.append(("truncated", f"{what}: the ledger ends at entry {last}, so it was cut back "
                             "after this release was shown"))
        elif on_ledger != receipt.entry_hash:
            findings.append(("fork", f"{what}: the ledger holds a different entry {receipt.seq}; the "
                             "coordinator signed two entries with this number (the ledger was forked or rewritten)"))
    return findings
