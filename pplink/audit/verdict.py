"""The auditor's verdict: findings by kind, one row per entry, and the totals."""

from __future__ import annotations

from enum import StrEnum

from pydantic import computed_field

from pplink.accounting import Mechanism, PrivacyLoss
from pplink.agreement import Accounting
from pplink.ledger import ReleaseQuery
from pplink.models import PplinkModel

__all__ = ["AuditRow", "AuditVerdict", "Finding", "FindingKind", "describe_query"]


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
    #: The entry's kind, agencies, attribute or cells do not fit the agreement and the query table.
    QUERY = "query"
    #: The genesis line is missing, invalid, or not the one the round's manifest names.
    GENESIS = "genesis"
    #: A party's receipt shows another entry at that number: the ledger was forked or rewritten.
    FORK = "fork"
    #: A party's receipt is for an entry past the ledger's end: the ledger was cut back.
    TRUNCATED = "truncated"
    #: A receipt that is not valid evidence, or is for another ledger.
    RECEIPT = "receipt"


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
    #: SHA-256 of the genesis line (64 zeros for a ledger without one).
    ledger_id: str
    #: The linkage round the ledger is bound to (None: bound to none).
    round_id: str | None
    receipts_checked: int

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
