"""The release engine: differentially private aggregates, each on the signed ledger before anyone sees it.

One path for every query (:func:`release_query` for the linkage structure,
:func:`release_confusion_counts` for model error counts from scoring):

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import STATE_FILE, LinkageState, load_linkage_state
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
    entry_loss,
    remaining_epsilon,
    scale_for,
)
from pplink.agreement import AgreementConfig, load_agreement
from pplink.crypto import load_private_key, public_key_text
from pplink.errors import AgreementMismatchError, BudgetExceededError, SignatureError
from pplink.ledger import Cell, EntryDraft, LedgerEntry, ReleaseQuery, entry_line, line_hash, open_ledger
from pplink.models import PplinkModel
from pplink.round_manifest import verify_round_member

__all__ = [
    "Release",
    "release_confusion_counts",
    "release_from_files",
    "release_query",
    "release_vector",
    "spent_so_far",
    "suppress",
]

log = logging.getLogger(__name__)


class Release(PplinkModel):
    """A recorded release: its ledger entry (which holds the released cells) and the budget left.

    Attributes:
        entry: the ledger entry, already fsynced.
        entry_hash: SHA-256 of the entry's line, a receipt recipients can check against the ledger.
        budget_epsilon: the agreement's total epsilon.
        remaining_epsilon: what is left after this release.
    """

    entry: LedgerEntry
    entry_hash: str
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


def release_vector(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    query: ReleaseQuery,
    vector: QueryVector,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
) -> Release:
    """Noise, suppress, record and return one count vector: the engine's single release path.

    Args:
        agreement: the agreement (budget, min_cell_size, coordinator key).
        ledger_path: the ledger JSON Lines file (created on first use).
        coordinator_key: the coordinator's Ed25519 signing key.
        query: the canonical query description recorded on the ledger.
        vector: exact counts, public keys and sensitivity.
        epsilon: the loss to spend on this release (zCDP: this release alone, at the agreement's delta).
        rho: zCDP only, instead of epsilon.

    Returns:
        The release, after its entry is on disk.

    Raises:
        BudgetExceededError: the release would pass the budget; no noise was drawn.
        ReleaseError: bad epsilon/rho.
        SignatureError: the key is not the agreement's coordinator key.
        LedgerError: the ledger is torn, does not verify, or the append failed.
    """
    _check_key(agreement, coordinator_key)
    budget = agreement.budget
    mechanism, d_in, scale = scale_for(budget, vector.sensitivity, epsilon=epsilon, rho=rho)
    request = entry_loss(mechanism, d_in, scale, budget.delta)
    with open_ledger(Path(ledger_path), agreement) as ledger:
        spent = ledger.spent
        try:
            total = check_budget(spent, request, budget)
        except BudgetExceededError as err:
            log.warning("release %s refused, no noise drawn: %s", query.kind.value, err)
            raise
        noisy = _sample(mechanism, scale, vector.counts)
        values = suppress(noisy, agreement.release.min_cell_size)
        draft = EntryDraft(
            query=query, accounting=budget.accounting, mechanism=mechanism, sensitivity=d_in, scale=scale,
            loss=request, min_cell_size=agreement.release.min_cell_size,
            cells=tuple(Cell(key=k, value=v) for k, v in zip(vector.keys, values, strict=True)),
            library=OPENDP_LIBRARY,
        )
        entry = ledger.append(draft, coordinator_key)
    log.info("release %s recorded as ledger entry %d (epsilon %.6g, total %.6g of %g)",
             query.kind.value, entry.seq, request.epsilon, total.epsilon, budget.epsilon)
    return Release(entry=entry, entry_hash=line_hash(entry_line(entry)), budget_epsilon=budget.epsilon,
                   remaining_epsilon=remaining_epsilon(entry.cumulative, budget))


def release_query(
    agreement: AgreementConfig,
    state: LinkageState,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    query: ReleaseQuery,
    *,
    epsilon: float | None = None,
    rho: float | None = None,
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

    Raises:
        AgreementMismatchError: the state was made under another agreement.
        BudgetExceededError, ReleaseError, SignatureError, LedgerError: see :func:`release_vector`.
    """
    if state.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError("the linkage state was made under another agreement")
    _check_key(agreement, coordinator_key)
    query = ReleaseQuery.model_validate({**query.model_dump(), "parties": state.parties})
    vector = compute_query(agreement, state, query)
    return release_vector(agreement, ledger_path, coordinator_key, query, vector, epsilon=epsilon, rho=rho)


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

    Raises:
        ReleaseError: undeclared groups or outcomes, bad counts; and see :func:`release_vector`.
    """
    _check_key(agreement, coordinator_key)
    vector = confusion_vector(agreement, attribute, counts_by_group)
    query = ReleaseQuery(kind=QueryKind.CONFUSION, attribute=attribute, subject=subject)
    return release_vector(agreement, ledger_path, coordinator_key, query, vector, epsilon=epsilon, rho=rho)


def release_from_files(
    agreement_path: Path,
    ledger_path: Path,
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
        ledger_path: the ledger file.
        linkage_dir: the match output folder (state at ``linkage_dir/coordinator/linkage.npz``).
        key_path: the coordinator's private key file.
        query: what to release.
        epsilon: privacy loss for this release (or ``rho`` under zCDP).
        rho: zCDP only.
    """
    agreement = load_agreement(Path(agreement_path))
    key = load_private_key(Path(key_path))
    _check_key(agreement, key)
    # Only a whole, published round: the state must be the one its signed manifest names.
    verify_round_member(agreement, Path(linkage_dir), STATE_FILE)
    state = load_linkage_state(Path(linkage_dir) / STATE_FILE, agreement.agreement_id)
    return release_query(agreement, state, ledger_path, key, query, epsilon=epsilon, rho=rho)


def spent_so_far(agreement: AgreementConfig, ledger_path: Path) -> PrivacyLoss:
    """The total privacy loss on a ledger (checked as for an append)."""
    with open_ledger(Path(ledger_path), agreement) as ledger:
        return ledger.spent
