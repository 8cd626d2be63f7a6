"""The DP release of a round's calibration: its floor-solve linked pairs by Dice bin, on the round's ledger.

Whatever leaves the coordinator about how good a round's linkage is (the estimated precision,
recall and missed links in the report, the notice and ``pplink eval linkage``) is post-processing of
this one release (:mod:`coordinator.linkage.calibration_dp`), never of the exact histogram. It goes
through :func:`coordinator.release.engine.release_vector` and so through the one charge path
(:func:`~coordinator.release.engine.charge`): checked against the query table as the auditor checks
it (``link-scores``, :mod:`pplink.link_scores`), budget-checked before any noise is drawn, on the
ledger before anyone sees it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.calibration_dp import dp_estimate
from coordinator.linkage.mixture import ScoreHistogram
from coordinator.linkage.state import STATE_FILE, load_linkage_state
from coordinator.release.binding import DEFAULT_LEDGER, binding_for_linkage, ledger_for_round
from coordinator.release.engine import Release, release_vector
from coordinator.release.queries import QueryVector
from pplink.accounting import QueryKind
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.errors import ReleaseError
from pplink.ledger import ReleaseQuery, line_hash
from pplink.ledger_genesis import LedgerBinding
from pplink.link_scores import link_score_keys, link_score_sensitivity, link_score_subject
from pplink.round_manifest import verify_round_member

__all__ = ["CALIBRATION_FILE", "RELEASE_BINS", "link_score_vector", "publish_calibration", "release_link_scores"]

#: In the round's folder, beside the maps: the published (DP) estimates and the ledger entry they derive from.
CALIBRATION_FILE = "calibration.json"

#: Bins of the release over [0, 1] (0.01 wide): the noise is per bin, so fewer bins carry less of it
#: in total; the fit is parametric and needs no finer bins (measured in benchmarks/quality.py).
RELEASE_BINS = 100


def link_score_vector(histogram: ScoreHistogram, n_parties: int, bins: int = RELEASE_BINS) -> QueryVector:
    """The release's exact counts: the histogram merged into ``bins`` bins from its floor's, with keys and sensitivity.

    >>> from coordinator.linkage.mixture import score_histogram
    >>> v = link_score_vector(score_histogram([0.97, 0.99, 1.0], floor=0.96, bins=200), 2, bins=50)
    >>> v.keys, v.counts.tolist(), v.sensitivity.l1
    ((('0.9600',), ('0.9800',)), [1, 2], 1)
    """
    fine = len(histogram.counts)
    if fine % bins:
        raise ValueError(f"{bins} release bins do not divide the histogram's {fine}")
    coarse = np.asarray(histogram.counts, dtype=np.float64).reshape(bins, fine // bins).sum(axis=1)
    keys = link_score_keys(histogram.floor, bins)
    counts = np.rint(coarse[bins - len(keys):]).astype(np.int64)
    return QueryVector(keys=keys, counts=counts, sensitivity=link_score_sensitivity(n_parties))


def release_link_scores(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    histogram: ScoreHistogram,
    parties: Sequence[str],
    *,
    epsilon: float | None = None,
    rho: float | None = None,
    binding: LedgerBinding | None = None,
    bins: int = RELEASE_BINS,
) -> Release:
    """Release a round's floor-solve linked-pair histogram with DP noise, on its ledger.

    Args:
        agreement: the agreement (budget, min_cell_size, coordinator key).
        ledger_path: the round's ledger.
        coordinator_key: the coordinator's signing key.
        histogram: the floor solve's linked-pair histogram (exact; it stays here).
        parties: the round's agencies, in state order (the sensitivity is over them).
        epsilon: the loss of this release (the agreement's ``linkage.calibration_epsilon``).
        rho: zCDP only, instead of epsilon.
        binding: the linkage round the ledger must belong to.
        bins: bins over [0, 1] (:data:`RELEASE_BINS`).

    Returns:
        The release; its cells are the noisy counts the estimates are derived from.

    Raises:
        BudgetExceededError, ReleaseError, SignatureError, LedgerError: see
            :func:`~coordinator.release.engine.release_vector`.
    """
    vector = link_score_vector(histogram, len(parties), bins)
    query = ReleaseQuery(kind=QueryKind.LINK_SCORES, parties=tuple(parties),
                         subject=link_score_subject(histogram.floor, bins))
    return release_vector(agreement, ledger_path, coordinator_key, query, vector, epsilon=epsilon, rho=rho,
                          binding=binding)


def _round_ledger(linkage_dir: Path, binding: LedgerBinding | None) -> Path:
    """The round's ledger file; beside an earlier round's ledger (kept as evidence), one named by the round id."""
    path = ledger_for_round(linkage_dir, binding)
    if binding is None or path != linkage_dir / DEFAULT_LEDGER or not path.is_file():
        return path
    with open(path, "rb") as fh:
        first = fh.readline().rstrip(b"\n")
    if not first or line_hash(first) == binding.genesis:
        return path
    return linkage_dir / f"coordinator/ledger.{binding.round_id}.jsonl"


def publish_calibration(agreement: AgreementConfig, key: Ed25519PrivateKey, linkage_dir: Path) -> dict[str, Any]:
    """Release a published round's calibration on its ledger and write its estimates beside the maps.

    Runs after the round is published (its ledger is the one the signed manifest names, pinned in
    the folder, as for ``coordinator release``), at the agreement's ``linkage.calibration_epsilon``.
    Writes :data:`CALIBRATION_FILE`: the round's threshold and method, the ledger entry (sequence
    number and hash) and the estimates derived from that entry alone, with intervals that include
    the DP noise.

    Args:
        agreement: the agreement (its ``linkage.calibration_epsilon`` must be set).
        key: the coordinator's signing key.
        linkage_dir: the published round's folder.

    Returns:
        What was written.

    Raises:
        ReleaseError: the agreement states no calibration epsilon, or the round kept no histogram.
        BudgetExceededError, LedgerError, RoundIntegrityError: as for any release over the round.
    """
    epsilon = agreement.linkage.calibration_epsilon
    if epsilon is None:
        raise ReleaseError("the agreement states no linkage.calibration_epsilon: no calibration is published")
    linkage_dir = Path(linkage_dir)
    verify_round_member(agreement, linkage_dir, STATE_FILE)
    state = load_linkage_state(linkage_dir / STATE_FILE, agreement.agreement_id)
    kept = state.meta.get("calibration_histogram")
    if not isinstance(kept, dict):
        raise ReleaseError(f"{linkage_dir}: the round kept no calibration histogram")
    histogram = ScoreHistogram(counts=np.asarray(kept["counts"], dtype=np.float64), floor=float(kept["floor"]))
    binding = binding_for_linkage(agreement, key, state, linkage_dir)
    release = release_link_scores(agreement, _round_ledger(linkage_dir, binding), key, histogram, state.parties,
                                  epsilon=epsilon, binding=binding)
    estimate = dp_estimate(release.entry, state.threshold)
    published = {
        "round_id": state.meta.get("round_id"),
        "method": (state.meta.get("calibration") or {}).get("method", "given"),
        "threshold": state.threshold,
        "dp": {"query": QueryKind.LINK_SCORES.value, "epsilon": epsilon, "ledger_seq": release.entry.seq,
               "entry_hash": release.entry_hash},
        **estimate.model_dump(mode="json"),
    }
    atomic_write(linkage_dir / CALIBRATION_FILE, json.dumps(published, indent=2))
    return published
