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

What it cannot see: entries cut off the end of the file leave a valid, shorter chain. Recipients
keep each release's entry hash as a receipt; ``expected_hashes`` makes the auditor check that
those entries are still on the ledger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError, computed_field

from pplink.accounting import (
    Mechanism,
    PrivacyLoss,
    compose,
    entry_loss,
    losses_agree,
    mechanism_for,
    query_sensitivity,
    remaining_epsilon,
    within_budget,
)
from pplink.agreement import Accounting, AgreementConfig, canonical_json
from pplink.crypto import verify
from pplink.errors import LedgerError, SignatureError
from pplink.ledger import GENESIS_HASH, LedgerEntry, ReleaseQuery, decode_signature, line_hash, signing_payload
from pplink.models import PplinkModel

__all__ = [
    "AuditRow",
    "AuditVerdict",
    "Finding",
    "FindingKind",
    "describe_query",
    "verify_ledger",
    "verify_ledger_bytes",
]


class FindingKind(StrEnum):
    """What is wrong with an entry (or the ledger as a whole)."""

    TORN = "torn"
    MALFORMED = "malformed"
    NOT_CANONICAL = "not-canonical"
    SEQUENCE = "sequence"
    CHAIN = "chain"
    AGREEMENT = "agreement"
    SIGNATURE = "signature"
    MECHANISM = "mechanism"
    SENSITIVITY = "sensitivity"
    UNDER_CLAIMED = "under-claimed"
    LOSS_MISMATCH = "loss-mismatch"
    CUMULATIVE = "cumulative"
    OVERSPEND = "overspend"
    SMALL_CELL = "small-cell"
    MISSING_ENTRY = "missing-entry"


class Finding(PplinkModel):
    """One problem, naming where it is.

    Attributes:
        line: the ledger line (1-based), or None for a ledger-wide finding.
        seq: the entry's own sequence number, where the line parsed.
        kind: the category.
        problem: a sentence naming the problem (no record values: the ledger holds none).
    """

    line: int | None
    seq: int | None
    kind: FindingKind
    problem: str


class AuditRow(PplinkModel):
    """One entry as the auditor sees it: claimed and re-derived losses and the running total."""

    line: int
    seq: int
    query: str
    mechanism: Mechanism
    claimed_epsilon: float
    derived_epsilon: float
    claimed_rho: float | None
    derived_rho: float | None
    cumulative_epsilon: float
    cumulative_rho: float | None
    remaining_epsilon: float


class AuditVerdict(PplinkModel):
    """The auditor's verdict on a ledger: ``ok`` when there are no findings."""

    source: str
    agreement_id: str
    accounting: Accounting
    budget_epsilon: float
    delta: float
    lines: int
    rows: tuple[AuditRow, ...]
    findings: tuple[Finding, ...]
    spent: PrivacyLoss
    remaining_epsilon: float
    head_hash: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when the ledger verified with no findings."""
        return not self.findings


def describe_query(query: ReleaseQuery) -> str:
    """A short human description of a query.

    >>> describe_query(ReleaseQuery(kind="count-by", attribute="area", by_combination=True))
    'count-by area x combination'
    >>> describe_query(ReleaseQuery(kind="overlap"))
    'overlap'
    """
    parts = [query.kind.value]
    if query.attribute:
        parts.append(query.attribute)
    if query.by_combination:
        parts.append("x combination")
    if query.subject:
        parts.append(f"({query.subject})")
    return " ".join(parts)


class _Auditor:
    """Walks the lines once, collecting rows and findings."""

    def __init__(self, agreement: AgreementConfig) -> None:
        self.agreement = agreement
        self.budget = agreement.budget
        self.findings: list[Finding] = []
        self.rows: list[AuditRow] = []
        self.losses: list[PrivacyLoss] = []
        self.overspent = False

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
        sensitivity = entry.sensitivity
        try:
            required = query_sensitivity(entry.query.kind, len(entry.query.parties)).for_mechanism(entry.mechanism)
        except ValueError as exc:
            self.add(lineno, entry.seq, FindingKind.SENSITIVITY, f"entry {entry.seq}: {exc}")
            required = sensitivity
        if sensitivity < required:
            self.add(lineno, entry.seq, FindingKind.SENSITIVITY,
                     f"entry {entry.seq}: stated sensitivity {sensitivity} is below the {required} that "
                     f"{describe_query(entry.query)} over {len(entry.query.parties)} agencies implies")
            sensitivity = required  # compose what the release really cost
        delta = self.budget.delta if entry.mechanism is Mechanism.GAUSSIAN else 0.0
        derived = entry_loss(entry.mechanism, sensitivity, entry.scale, delta)
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


def verify_ledger_bytes(
    agreement: AgreementConfig,
    data: bytes,
    *,
    source: str = "<ledger>",
    expected_hashes: Sequence[str] = (),
) -> AuditVerdict:
    """Verify a ledger's bytes against the agreement; pure (no files, no clock).

    Args:
        agreement: gives the coordinator's key, the budget and the release rules.
        data: the whole ledger file.
        source: names the ledger in the verdict.
        expected_hashes: entry hashes (release receipts) that must be on the ledger.

    Returns:
        The verdict, with one row per parsed entry and every finding.
    """
    auditor = _Auditor(agreement)
    chunks = data.split(b"\n") if data else [b""]
    tail = chunks.pop()  # b"" when the file ends with a newline
    lines = chunks
    prev_hash = GENESIS_HASH
    expected_seq = 1
    hashes: list[str] = []
    for i, raw in enumerate(lines):
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
    spent = compose(auditor.losses, agreement.budget.accounting, agreement.budget.delta)
    return AuditVerdict(
        source=source, agreement_id=agreement.agreement_id, accounting=agreement.budget.accounting,
        budget_epsilon=agreement.budget.epsilon, delta=agreement.budget.delta, lines=len(lines) + (1 if tail else 0),
        rows=tuple(auditor.rows), findings=tuple(auditor.findings), spent=spent,
        remaining_epsilon=remaining_epsilon(spent, agreement.budget), head_hash=prev_hash,
    )


def verify_ledger(agreement: AgreementConfig, ledger_path: Path, *,
                  expected_hashes: Sequence[str] = ()) -> AuditVerdict:
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
    return verify_ledger_bytes(agreement, data, source=str(path), expected_hashes=expected_hashes)
