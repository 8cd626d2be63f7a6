"""The auditor's check of a privacy ledger, from the agreement and the ledger file alone.

:func:`verify_ledger_bytes` is pure: given the agreement and the ledger's bytes it returns an
:class:`AuditVerdict` listing every problem (:class:`Finding`), each naming the line and entry,
instead of stopping at the first. It

1. recomputes the hash chain (each ``prev_hash`` is the SHA-256 of the previous line's bytes;
   the first is 64 zeros) and checks sequence numbers run 1, 2, 3, ... (a deleted, inserted or
   reordered entry shows as a chain break and a sequence jump);
2. checks every signature against the agreement's coordinator key (an entry signed by any other
   key fails), and that every entry carries this agreement's id;
3. checks the mechanism fits the agreement's accounting (Laplace/pure, Gaussian/zCDP), and that
   the stated sensitivity is at least what the query kind implies for one person;
4. re-derives each entry's privacy loss from mechanism, sensitivity and scale with OpenDP
   (:func:`pplink.accounting.entry_loss`) and compares it with the claim (a claim below the
   re-derived loss is the serious case, reported as under-claimed);
5. composes the re-derived losses (:func:`pplink.accounting.compose`), compares each entry's
   claimed running total with the recomputed one, and the total with the agreement's budget;
6. checks no released cell is below ``min_cell_size`` (the rule is: suppressed, never shown).

The ledger's first line is its genesis (:mod:`pplink.ledger_genesis`): it is checked, and the
round's agencies it names are the ones every linkage query is derived over; with
``expected_genesis`` (from the round's signed manifest) it must be that round's.

What it cannot see alone: entries cut off the end of the file leave a valid, shorter chain, and a
second ledger started from the same genesis verifies on its own. Recipients keep each release's
receipt (:mod:`pplink.receipts`); given receipts from any parties, the auditor reports a fork or
rewrite (another entry at a receipt's number), a truncation (the ledger ends before it) and
receipts for another ledger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from pplink.accounting import (
    Mechanism,
    PrivacyLoss,
    compose,
    entry_loss,
    losses_agree,
    mechanism_for,
    remaining_epsilon,
    within_budget,
)
from pplink.agreement import Accounting, AgreementConfig, canonical_json
from pplink.audit.receipts import check_receipts
from pplink.audit.verdict import AuditRow, AuditVerdict, Finding, FindingKind, describe_query
from pplink.crypto import verify
from pplink.errors import AgreementMismatchError, LedgerError, SignatureError
from pplink.ledger import (
    LedgerEntry,
    decode_signature,
    first_prev_hash,
    line_hash,
    signing_payload,
    split_genesis,
)
from pplink.ledger_genesis import check_genesis
from pplink.queries import derive
from pplink.receipts import Receipt

__all__ = [
    "AuditRow",
    "AuditVerdict",
    "Finding",
    "FindingKind",
    "describe_query",
    "verify_ledger",
    "verify_ledger_bytes",
]


class _Auditor:
    """Walks the lines once, collecting rows and findings."""

    def __init__(self, agreement: AgreementConfig) -> None:
        self.agreement = agreement
        self.budget = agreement.budget
        self.findings: list[Finding] = []
        self.rows: list[AuditRow] = []
        self.losses: list[PrivacyLoss] = []
        self.overspent = False
        #: The linkage round's agencies, from a bound genesis (None: not bound to a round).
        self.round_parties: tuple[str, ...] | None = None
        self.round_id: str | None = None

    def add(self, line: int | None, seq: int | None, kind: FindingKind, problem: str) -> None:
        self.findings.append(Finding(line=line, seq=seq, kind=kind, problem=problem))

    def parse(self, lineno: int, raw: bytes) -> tuple[dict[str, object], LedgerEntry] | None:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.add(lineno, None, FindingKind.MALFORMED, f"line {lineno} is not JSON")
            return None
        if not isinstance(obj, dict):
            self.add(lineno, None, FindingKind.MALFORMED, f"line {lineno} is not a JSON object")
            return None
        seq = obj.get("seq") if isinstance(obj.get("seq"), int) else None
        if canonical_json(obj) != raw:
            self.add(lineno, seq, FindingKind.NOT_CANONICAL, f"line {lineno} is not in canonical JSON form (rewritten)")
        try:
            return obj, LedgerEntry.model_validate(obj)
        except ValidationError as err:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "(entry)" for e in err.errors(include_input=False)})
            self.add(lineno, seq, FindingKind.MALFORMED,
                     f"line {lineno} is not a valid ledger entry (fields: {', '.join(fields)})")
            return None

    def check_signature(self, lineno: int, obj: dict[str, object], entry: LedgerEntry) -> None:
        signature = decode_signature(entry.signature)
        try:
            verify(self.agreement.coordinator.public_key, signing_payload(obj), signature,
                   what=f"line {lineno} (entry {entry.seq})")
        except SignatureError as exc:
            self.add(lineno, entry.seq, FindingKind.SIGNATURE, str(exc))

    def derive_loss(self, lineno: int, entry: LedgerEntry) -> PrivacyLoss:
        """The loss the entry really has, in the agreement's accounting, flagging inconsistencies."""
        expected_mechanism = mechanism_for(self.budget.accounting)
        if entry.accounting is not self.budget.accounting or entry.mechanism is not expected_mechanism:
            self.add(lineno, entry.seq, FindingKind.MECHANISM,
                     f"entry {entry.seq}: {entry.mechanism.value} under {entry.accounting.value} accounting, but the "
                     f"agreement uses {self.budget.accounting.value} accounting ({expected_mechanism.value})")
        if entry.mechanism is Mechanism.GAUSSIAN and entry.loss.delta != self.budget.delta:
            self.add(lineno, entry.seq, FindingKind.MECHANISM,
                     f"entry {entry.seq}: epsilon converted at delta {entry.loss.delta:g}, "
                     f"not the agreement's {self.budget.delta:g}")
        # No label is trusted: agencies, key set and sensitivity come from the agreement, the
        # ledger's genesis (the round's agencies) and the query table.
        query = entry.query
        derivation = derive(self.agreement, query.kind, attribute=query.attribute, by_combination=query.by_combination,
                            parties=query.parties, subject=query.subject, cells=tuple(c.key for c in entry.cells),
                            round_parties=self.round_parties)
        for problem in derivation.problems:
            self.add(lineno, entry.seq, FindingKind.QUERY, f"entry {entry.seq} ({describe_query(query)}): {problem}")
        sensitivity = entry.sensitivity
        required = derivation.sensitivity.for_mechanism(entry.mechanism)
        if sensitivity < required:
            self.add(lineno, entry.seq, FindingKind.SENSITIVITY,
                     f"entry {entry.seq}: stated sensitivity {sensitivity} is below the {required} that "
                     f"{describe_query(query)} implies over the round's agencies")
            sensitivity = required  # compose what the release really cost
        delta = self.budget.delta if entry.mechanism is Mechanism.GAUSSIAN else 0.0
        try:
            derived = entry_loss(entry.mechanism, sensitivity, entry.scale, delta)
        except Exception as exc:  # noqa: BLE001 - OpenDP overflows on absurd scales; the finding says so
            self.add(lineno, entry.seq, FindingKind.UNDER_CLAIMED,
                     f"entry {entry.seq}: its loss cannot be computed from scale {entry.scale:.6g} "
                     f"({type(exc).__name__}); counted as unbounded")
            return PrivacyLoss(epsilon=math.inf, rho=math.inf if self.budget.accounting is Accounting.ZCDP else None,
                               delta=self.budget.delta if self.budget.accounting is Accounting.ZCDP else 0.0)
        self.compare_claim(lineno, entry, "epsilon", entry.loss.epsilon, derived.epsilon)
        if derived.rho is not None:
            self.compare_claim(lineno, entry, "rho", entry.loss.rho, derived.rho)
        # Put the derived loss in the agreement's terms so that it composes with the others.
        if self.budget.accounting is Accounting.ZCDP and derived.rho is None:
            # Pure epsilon-DP implies (epsilon^2 / 2)-zCDP (OpenDP's make_pureDP_to_zCDP).
            return PrivacyLoss(epsilon=derived.epsilon, rho=derived.epsilon**2 / 2.0, delta=self.budget.delta)
        if self.budget.accounting is Accounting.PURE and derived.rho is not None:
            return PrivacyLoss(epsilon=math.inf)  # a Gaussian release has no pure-DP bound
        return derived

    def compare_claim(self, lineno: int, entry: LedgerEntry, name: str, claimed: float | None, derived: float) -> None:
        if claimed is not None and losses_agree(claimed, derived):
            return
        if claimed is None or claimed < derived:
            self.add(lineno, entry.seq, FindingKind.UNDER_CLAIMED,
                     f"entry {entry.seq}: claims {name} {_fmt(claimed)} but {entry.mechanism.value} with sensitivity "
                     f"{entry.sensitivity} and scale {entry.scale:.6g} implies {_fmt(derived)}")
        else:
            self.add(lineno, entry.seq, FindingKind.LOSS_MISMATCH,
                     f"entry {entry.seq}: claims {name} {_fmt(claimed)}, more than the {_fmt(derived)} "
                     "its scale implies")

    def check_entry(self, lineno: int, entry: LedgerEntry, loss: PrivacyLoss) -> None:
        self.losses.append(loss)
        total = compose(self.losses, self.budget.accounting, self.budget.delta)
        claimed = entry.cumulative
        if not losses_agree(claimed.epsilon, total.epsilon) or (
            total.rho is not None and (claimed.rho is None or not losses_agree(claimed.rho, total.rho))
        ):
            self.add(lineno, entry.seq, FindingKind.CUMULATIVE,
                     f"entry {entry.seq}: claims a running total of epsilon {_fmt(claimed.epsilon)}"
                     f"{'' if total.rho is None else f' (rho {_fmt(claimed.rho)})'}, recomputed "
                     f"{_fmt(total.epsilon)}{'' if total.rho is None else f' (rho {_fmt(total.rho)})'}")
        if not within_budget(total.epsilon, self.budget.epsilon):
            self.add(lineno, entry.seq, FindingKind.OVERSPEND,
                     f"entry {entry.seq}: the total reaches epsilon {_fmt(total.epsilon)}, over the agreement's "
                     f"budget of {self.budget.epsilon:g}"
                     + (f" (delta {self.budget.delta:g})" if total.rho is not None else ""))
        min_cell = self.agreement.release.min_cell_size
        if entry.min_cell_size != min_cell:
            self.add(lineno, entry.seq, FindingKind.SMALL_CELL,
                     f"entry {entry.seq}: applied min_cell_size {entry.min_cell_size}, the agreement says {min_cell}")
        small = sum(1 for cell in entry.cells if cell.value is not None and cell.value < min_cell)
        if small:
            self.add(lineno, entry.seq, FindingKind.SMALL_CELL,
                     f"entry {entry.seq}: {small} released cell(s) below the minimum cell size {min_cell}")
        self.rows.append(AuditRow(
            line=lineno, seq=entry.seq, query=describe_query(entry.query), mechanism=entry.mechanism,
            claimed_epsilon=entry.loss.epsilon, derived_epsilon=loss.epsilon, claimed_rho=entry.loss.rho,
            derived_rho=loss.rho, cumulative_epsilon=total.epsilon, cumulative_rho=total.rho,
            remaining_epsilon=remaining_epsilon(total, self.budget),
        ))


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _read_genesis(auditor: _Auditor, lines: list[bytes], expected_genesis: str | None) -> tuple[str, int]:
    """Check the genesis line, if the ledger has one; returns ``(ledger id, index of the first entry line)``."""
    genesis_raw, _ = split_genesis(lines)
    ledger_id = first_prev_hash(genesis_raw)
    if genesis_raw is not None:
        try:
            genesis = check_genesis(auditor.agreement, genesis_raw, "line 1")
        except (LedgerError, AgreementMismatchError) as exc:
            auditor.add(1, None, FindingKind.GENESIS, str(exc))
        else:
            auditor.round_parties = genesis.parties if genesis.round_id is not None else None
            auditor.round_id = genesis.round_id
    if expected_genesis is not None and ledger_id != expected_genesis:
        auditor.add(1 if genesis_raw is not None else None, None, FindingKind.GENESIS,
                    ("the ledger has no genesis line" if genesis_raw is None else
                     f"the ledger's genesis {ledger_id[:12]} is not the round's")
                    + f": the round's signed manifest names ledger {expected_genesis[:12]} (another or a new ledger)")
    return ledger_id, 0 if genesis_raw is None else 1


def verify_ledger_bytes(
    agreement: AgreementConfig,
    data: bytes,
    *,
    source: str = "<ledger>",
    expected_hashes: Sequence[str] = (),
    receipts: Sequence[Receipt] = (),
    expected_genesis: str | None = None,
) -> AuditVerdict:
    """Verify a ledger's bytes against the agreement; pure (no files, no clock).

    Args:
        agreement: gives the coordinator's key, the budget and the release rules.
        data: the whole ledger file.
        source: names the ledger in the verdict.
        expected_hashes: entry hashes that must be on the ledger.
        receipts: release receipts from any parties (:mod:`pplink.receipts`): each must be on the
            ledger at its number; another entry there is a fork or rewrite, a ledger too short is a
            truncation.
        expected_genesis: the ledger id the round's signed manifest names, if known.

    Returns:
        The verdict, with one row per parsed entry and every finding.
    """
    auditor = _Auditor(agreement)
    chunks = data.split(b"\n") if data else [b""]
    tail = chunks.pop()  # b"" when the file ends with a newline
    lines = chunks
    ledger_id, first = _read_genesis(auditor, lines, expected_genesis)
    prev_hash = ledger_id
    expected_seq = 1
    hashes: list[str] = []
    by_seq: dict[int, str] = {}
    for i in range(first, len(lines)):
        raw = lines[i]
        lineno = i + 1
        parsed = auditor.parse(lineno, raw)
        if parsed is not None:
            obj, entry = parsed
            if entry.seq != expected_seq:
                what = "missing" if entry.seq > expected_seq else "repeated or out of order"
                auditor.add(lineno, entry.seq, FindingKind.SEQUENCE,
                            f"line {lineno} holds entry {entry.seq} where entry {expected_seq} should be "
                            f"(entries {what})")
            if entry.prev_hash != prev_hash:
                auditor.add(lineno, entry.seq, FindingKind.CHAIN,
                            f"line {lineno} (entry {entry.seq}) does not chain to the line before it: its "
                            "prev_hash is not that line's SHA-256 (an entry was edited, removed, inserted or moved)")
            if entry.agreement_id != agreement.agreement_id:
                auditor.add(lineno, entry.seq, FindingKind.AGREEMENT,
                            f"entry {entry.seq} was made under agreement {entry.agreement_id[:12]}, "
                            f"not {agreement.agreement_id[:12]}")
            auditor.check_signature(lineno, obj, entry)
            auditor.check_entry(lineno, entry, auditor.derive_loss(lineno, entry))
            by_seq.setdefault(entry.seq, line_hash(raw))
            expected_seq = entry.seq + 1
        else:
            expected_seq += 1
        prev_hash = line_hash(raw)
        hashes.append(prev_hash)
    if tail:
        auditor.add(len(lines) + 1, None, FindingKind.TORN,
                    f"line {len(lines) + 1} is torn (no trailing newline: a write was interrupted)")
    known = set(hashes)
    for expected in expected_hashes:
        if expected not in known:
            auditor.add(None, None, FindingKind.MISSING_ENTRY,
                        f"the entry with hash {expected} is not on the ledger (removed, or from another ledger)")
    for kind, problem in check_receipts(agreement, ledger_id, by_seq, receipts):
        auditor.add(None, None, FindingKind(kind), problem)
    spent = compose(auditor.losses, agreement.budget.accounting, agreement.budget.delta)
    return AuditVerdict(
        source=source, agreement_id=agreement.agreement_id, accounting=agreement.budget.accounting,
        budget_epsilon=agreement.budget.epsilon, delta=agreement.budget.delta, lines=len(lines) + (1 if tail else 0),
        rows=tuple(auditor.rows), findings=tuple(auditor.findings), spent=spent,
        remaining_epsilon=remaining_epsilon(spent, agreement.budget), head_hash=prev_hash, ledger_id=ledger_id,
        round_id=auditor.round_id, receipts_checked=len(receipts),
    )


def verify_ledger(agreement: AgreementConfig, ledger_path: Path, *, expected_hashes: Sequence[str] = (),
                  receipts: Sequence[Receipt] = (), expected_genesis: str | None = None) -> AuditVerdict:
    """Read a ledger file and verify it (:func:`verify_ledger_bytes`).

    Raises:
        LedgerError: the file cannot be read (a missing file is an error here: an auditor asked
            to check a ledger that is not there should not be told "all fine").
    """
    path = Path(ledger_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read ledger ({exc.strerror})") from None
    return verify_ledger_bytes(agreement, data, source=str(path), expected_hashes=expected_hashes,
                               receipts=receipts, expected_genesis=expected_genesis)
