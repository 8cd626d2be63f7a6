"""The release engine: differentially private aggregates, each on the signed ledger before anyone sees it.

:func:`charge` is the one path that spends privacy budget: count releases (:func:`release_query`
for the linkage structure, :func:`release_confusion_counts` and :func:`release_vector` for
scoring's evaluation), each vertical-scoring step and each horizontal FedAvg round. For a count
release:

1. compute the exact count vector over its public key set and its per-person sensitivity
   (:mod:`coordinator.release.queries`);
2. choose the noise scale from the requested epsilon (or rho) and ask OpenDP's privacy map what
   the release costs (:func:`pplink.accounting.scale_for`, :func:`~pplink.accounting.entry_loss`);
3. lock the ledger, check it, and refuse the release if the total would pass the budget, **before
   any noise is drawn** (:class:`~pplink.errors.BudgetExceededError`, also logged);
4. draw the noise with OpenDP (``make_laplace`` under pure accounting, ``make_gaussian`` under
   zCDP), suppress every noisy count below ``min_cell_size``;
5. append the entry, with the released values, and fsync it; only then return the result.

A crash between 4 and 5 loses a draw nobody saw; a crash after 5 leaves a recorded release that
was not shown, which is the safe way round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import STATE_FILE, LinkageState, load_linkage_state
from coordinator.release.binding import binding_for_linkage, binding_for_state, ledger_for_round
from coordinator.release.queries import (
    LinkRate,
    QueryVector,
    compute_query,
    confusion_vector,
    derive_link_rates,
)
from pplink.accounting import (
    OPENDP_LIBRARY,
    Mechanism,
    PrivacyLoss,
    QueryKind,
    check_budget,
    count_measurement,
    release_loss,
    remaining_epsilon,
    scale_for,
)
from pplink.agreement import AgreementConfig, load_agreement
from pplink.crypto import load_private_key, public_key_text
from pplink.errors import AgreementMismatchError, BudgetExceededError, ReleaseError, SignatureError
from pplink.ledger import Cell, EntryDraft, LedgerEntry, ReleaseQuery
from pplink.ledger_genesis import LedgerBinding
from pplink.ledger_writer import open_ledger
from pplink.models import PplinkModel
from pplink.queries import derive
from pplink.receipts import Receipt, receipt_for
from pplink.round_manifest import verify_round_member

__all__ = [
    "Charge",
    "Release",
    "charge",
    "release_confusion_counts",
    "release_from_files",
    "release_query",
    "release_vector",
    "spent_so_far",
    "suppress",
]

log = logging.getLogger(__name__)


class Charge(PplinkModel):
    """A recorded charge: the entry on the ledger, its hash, the recipients' receipt, and the budget left."""

    entry: LedgerEntry
    entry_hash: str
    receipt: Receipt
    remaining_epsilon: float


class Release(PplinkModel):
    """A recorded release: its ledger entry (which holds the released cells) and the budget left.

    Attributes:
        entry: the ledger entry, already fsynced.
        entry_hash: SHA-256 of the entry's line, a receipt recipients can check against the ledger.
        receipt: what every recipient keeps (:mod:`pplink.receipts`).
        budget_epsilon: the agreement's total epsilon.
        remaining_epsilon: what is left after this release.
    """

    entry: LedgerEntry
    entry_hash: str
    receipt: Receipt
    budget_epsilon: float
    remaining_epsilon: float

    @property
    def cells(self) -> tuple[Cell, ...]:
        """The released cells: noisy counts, None where suppressed."""
        return self.entry.cells

    @property
    def query(self) -> ReleaseQuery:
        """The query as recorded."""
        return self.entry.query

    def display(self, cell: Cell) -> str:
        """A cell as shown to people: its noisy count, or ``< min_cell_size`` when suppressed."""
        return f"< {self.entry.min_cell_size}" if cell.value is None else str(cell.value)

    def link_rates(self) -> list[LinkRate]:
        """For a link-rate release, the rates derived from its noisy counts (post-processing)."""
        if self.query.kind is not QueryKind.LINK_RATE:
            return []
        return derive_link_rates(self.cells, self.query.parties, self.entry.min_cell_size)


def suppress(noisy: Sequence[int], min_cell_size: int) -> list[int | None]:
    """Apply the minimum cell rule to noisy counts: below ``min_cell_size`` becomes None.

    The rule is applied after noise (post-processing), so it costs no privacy; the noisy value of
    a suppressed cell is never released.

    >>> suppress([3, 10, 42, -1], 10)
    [None, 10, 42, None]
    """
    return [int(v) if v >= min_cell_size else None for v in noisy]


def _sample(mechanism: Mechanism, scale: float, counts: np.ndarray) -> list[int]:
    """Draw the noise: the only place a release touches a random number generator."""
    measurement = count_measurement(mechanism, scale)
    return [int(v) for v in measurement([int(c) for c in counts])]


def _check_key(agreement: AgreementConfig, key: Ed25519PrivateKey) -> None:
    if public_key_text(key) != agreement.coordinator.public_key:
        raise SignatureError(
            f"the signing key is not coordinator {agreement.coordinator.id}'s key in the agreement; "
            "ledger entries signed with it would not verify"
        )


def charge(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    query: ReleaseQuery,
    *,
    mechanism: Mechanism,
    sensitivity: int,
    scale: float,
    keys: Sequence[tuple[str, ...]] = (),
    draw: Callable[[], Sequence[int | None]] | None = None,
    binding: LedgerBinding | None = None,
    library: str = OPENDP_LIBRARY,
    allotment: Callable[[PrivacyLoss], None] | None = None,
) -> Charge:
    """The one path that spends privacy budget: every release, scoring step and FedAvg round comes here.

    In order: the key is checked (once); the loss is asked of OpenDP's map; the entry is checked
    against the query table exactly as the auditor will check it (:func:`pplink.queries.derive`:
    agencies, key set and sensitivity); then, under the ledger's lock, the ledger is checked (and
    must be the round's, with ``binding``), the budget and the caller's ``allotment`` are checked,
    and only then ``draw`` draws the noise; the entry is appended and fsynced; only then does this
    return, so nothing can be shown before it is on the ledger.

    Args:
        agreement: the agreement (budget, min_cell_size, coordinator key).
        ledger_path: the ledger.
        coordinator_key: the coordinator's signing key.
        query: the query as recorded on the ledger.
        mechanism: Laplace (pure) or Gaussian (zCDP).
        sensitivity: in the mechanism's metric.
        scale: the noise scale.
        keys: the public keys of the cells recorded on the ledger (empty when the released vector
            goes to the agencies instead, as for residuals and FedAvg).
        draw: draws the noise and returns one value per key (None where suppressed); called once,
            under the lock, after the budget check. None when there are no cells.
        binding: the linkage round the ledger must belong to.
        library: the library that draws the noise, recorded on the entry.
        allotment: called with the loss under the lock before any noise is drawn; raises
            :class:`~pplink.errors.BudgetExceededError` to refuse (a scoring run's own allotment).

    Returns:
        The entry, its hash and the receipt for its recipients.

    Raises:
        SignatureError: the key is not the agreement's coordinator key.
        ReleaseError: the scale is not usable, or the entry would not pass the auditor's check.
        BudgetExceededError: the budget or the allotment would be passed; no noise was drawn.
        LedgerError: the ledger is not the round's, does not verify, or the append failed.
    """
    _check_key(agreement, coordinator_key)
    budget = agreement.budget
    loss = release_loss(budget, mechanism, sensitivity, scale)
    keys = tuple(tuple(k) for k in keys)
    derived = derive(agreement, query.kind, attribute=query.attribute, by_combination=query.by_combination,
                     parties=query.parties, subject=query.subject, cells=keys,
                     round_parties=binding.parties if binding is not None else None)
    if derived.problems or derived.sensitivity.for_mechanism(mechanism) > sensitivity:
        reasons = "; ".join(derived.problems) or (
            f"sensitivity {sensitivity} is below the {derived.sensitivity.for_mechanism(mechanism)} the query implies")
        raise ReleaseError(f"release {query.kind.value} refused: the auditor would not accept it ({reasons})")
    with open_ledger(Path(ledger_path), agreement, binding=binding) as ledger:
        try:
            total = check_budget(ledger.spent, loss, budget)
            if allotment is not None:
                allotment(loss)
        except BudgetExceededError as err:
            log.warning("release %s refused, no noise drawn: %s", query.kind.value, err)
            raise
        values = list(draw()) if draw is not None else []
        if len(values) != len(keys):
            raise ReleaseError(f"release {query.kind.value}: {len(values)} values drawn for {len(keys)} keys")
        draft = EntryDraft(
            query=query, accounting=budget.accounting, mechanism=mechanism, sensitivity=sensitivity, scale=scale,
            loss=loss, min_cell_size=agreement.release.min_cell_size,
            cells=tuple(Cell(key=k, value=v) for k, v in zip(keys, values, strict=True)), library=library,
        )
        entry = ledger.append(draft, coordinator_key)
        ledger_id = ledger.ledger_id
    log.info("release %s recorded as ledger entry %d (epsilon %.6g, total %.6g of %g)",
             query.kind.value, entry.seq, loss.epsilon, total.epsilon, budget.epsilon)
    receipt = receipt_for(ledger_id, entry)
    return Charge(entry=entry, entry_hash=receipt.entry_hash, receipt=receipt,
                  remaining_epsilon=remaining_epsilon(entry.cumulative, budget))


def release_vector(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    query: ReleaseQuery,
    vector: QueryVector,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
    binding: LedgerBinding | None = None,
) -> Release:
    """Noise, suppress, record and return one count vector (through :func:`charge`).

    Args:
        agreement: the agreement (budget, min_cell_size, coordinator key).
        ledger_path: the ledger JSON Lines file (created on first use).
        coordinator_key: the coordinator's Ed25519 signing key.
        query: the canonical query description recorded on the ledger.
        vector: exact counts, public keys and sensitivity.
        epsilon: the loss to spend on this release (zCDP: this release alone, at the agreement's delta).
        rho: zCDP only, instead of epsilon.
        binding: the linkage round the ledger must belong to.

    Returns:
        The release, after its entry is on disk.

    Raises:
        BudgetExceededError: the release would pass the budget; no noise was drawn.
        ReleaseError: bad epsilon/rho.
        SignatureError: the key is not the agreement's coordinator key.
        LedgerError: the ledger is torn, does not verify, or the append failed.
    """
    _check_key(agreement, coordinator_key)
    mechanism, d_in, scale = scale_for(agreement.budget, vector.sensitivity, epsilon=epsilon, rho=rho)

    def draw() -> list[int | None]:
        return suppress(_sample(mechanism, scale, vector.counts), agreement.release.min_cell_size)

    done = charge(agreement, ledger_path, coordinator_key, query, mechanism=mechanism, sensitivity=d_in, scale=scale,
                  keys=vector.keys, draw=draw, binding=binding)
    return Release(entry=done.entry, entry_hash=done.entry_hash, receipt=done.receipt,
                   budget_epsilon=agreement.budget.epsilon, remaining_epsilon=done.remaining_epsilon)


def release_query(
    agreement: AgreementConfig,
    state: LinkageState,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    query: ReleaseQuery,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
    binding: LedgerBinding | None = None,
) -> Release:
    """Release an overlap, count-by, histogram or link-rate query over the linkage state.

    Args:
        agreement: the agreement the state and ledger belong to.
        state: the coordinator's linkage state.
        ledger_path: the ledger file.
        coordinator_key: the coordinator's signing key.
        query: what to release; its ``parties`` are filled from the state.
        epsilon: privacy loss for this release (or ``rho`` under zCDP).
        rho: zCDP only.
        binding: the ledger the round's releases must spend (default: the state's round, checked by
            genesis only; :func:`release_from_files` also pins the file).

    Raises:
        AgreementMismatchError: the state was made under another agreement.
        BudgetExceededError, ReleaseError, SignatureError, LedgerError: see :func:`release_vector`.
    """
    if state.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError("the linkage state was made under another agreement")
    _check_key(agreement, coordinator_key)
    if binding is None:
        binding = binding_for_state(agreement, coordinator_key, state)
    query = ReleaseQuery.model_validate({**query.model_dump(), "parties": state.parties})
    vector = compute_query(agreement, state, query)
    return release_vector(agreement, ledger_path, coordinator_key, query, vector, epsilon=epsilon, rho=rho,
                          binding=binding)


def release_confusion_counts(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    counts_by_group: Mapping[str, Mapping[str, int]],
    *,
    attribute: str,
    epsilon: float | None = None,
    rho: float | None = None,
    subject: str = "",
    binding: LedgerBinding | None = None,
) -> Release:
    """Release model error counts (tp/fp/fn/tn) by subgroup.

    Args:
        agreement: declares ``attribute`` and its values (the public group keys).
        ledger_path: the ledger file.
        coordinator_key: the coordinator's signing key.
        counts_by_group: ``{group: {"tp"|"fp"|"fn"|"tn": count}}``, already computed and bounded
            so that each person adds 1 to exactly one cell (sensitivity 1).
        attribute: the release attribute the groups are values of.
        epsilon: privacy loss for this release (or ``rho`` under zCDP).
        rho: zCDP only.
        subject: what the counts are of, recorded on the ledger (e.g. "model v1, holdout").
        binding: the linkage round the ledger must belong to.

    Raises:
        ReleaseError: undeclared groups or outcomes, bad counts; and see :func:`release_vector`.
    """
    _check_key(agreement, coordinator_key)
    vector = confusion_vector(agreement, attribute, counts_by_group)
    query = ReleaseQuery(kind=QueryKind.CONFUSION, attribute=attribute, subject=subject)
    return release_vector(agreement, ledger_path, coordinator_key, query, vector, epsilon=epsilon, rho=rho,
                          binding=binding)


def release_from_files(
    agreement_path: Path,
    ledger_path: Path | None,
    linkage_dir: Path,
    key_path: Path,
    query: ReleaseQuery,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
) -> Release:
    """:func:`release_query` from files: what ``pplink coordinator release`` runs.

    Args:
        agreement_path: the agreement TOML.
        ledger_path: the ledger file; None: the one the round's pin names, or
            ``linkage_dir/coordinator/ledger.jsonl`` before the round's first release.
        linkage_dir: the match output folder (state at ``linkage_dir/coordinator/linkage.npz``).
        key_path: the coordinator's private key file.
        query: what to release.
        epsilon: privacy loss for this release (or ``rho`` under zCDP).
        rho: zCDP only.

    Raises:
        LedgerError: the ledger is not the one the round's signed manifest names and pin records.
    """
    agreement = load_agreement(Path(agreement_path))
    key = load_private_key(Path(key_path))
    _check_key(agreement, key)
    # Only a whole, published round: the state must be the one its signed manifest names.
    verify_round_member(agreement, Path(linkage_dir), STATE_FILE)
    state = load_linkage_state(Path(linkage_dir) / STATE_FILE, agreement.agreement_id)
    binding = binding_for_linkage(agreement, key, state, Path(linkage_dir))
    if ledger_path is None:
        ledger_path = ledger_for_round(Path(linkage_dir), binding)
    return release_query(agreement, state, ledger_path, key, query, epsilon=epsilon, rho=rho, binding=binding)


def spent_so_far(agreement: AgreementConfig, ledger_path: Path, *, binding: LedgerBinding | None = None) -> PrivacyLoss:
    """The total privacy loss on a ledger (checked as for an append, under its lock)."""
    with open_ledger(Path(ledger_path), agreement, binding=binding) as ledger:
        return ledger.spent
