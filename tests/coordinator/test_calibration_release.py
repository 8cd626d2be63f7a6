"""The DP release of a round's calibration (``link-scores``) and the estimates derived from it."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import coordinator.linkage.calibration_dp as calibration_dp
import coordinator.release.engine as release_module
from coordinator.linkage.calibration import calibrate
from coordinator.linkage.calibration_dp import dp_estimate, noisy_histogram
from coordinator.linkage.mixture import ScoreHistogram, score_histogram
from coordinator.release.calibration import link_score_vector, release_link_scores
from pplink.accounting import QueryKind
from pplink.agreement import AgreementConfig, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.audit.verify import verify_ledger
from pplink.crypto import generate_signing_key, public_key_text
from pplink.errors import ReleaseError
from pplink.ledger import ReleaseQuery, read_ledger
from pplink.link_scores import link_score_keys, link_score_subject
from pplink.queries import Derivation, derive, query_sensitivity

AGENCIES = ("social_care", "school", "health", "police")


def _agreement(accounting: str = "zcdp", min_cell: int = 10) -> tuple[AgreementConfig, Ed25519PrivateKey]:
    keys = {p: generate_signing_key() for p in (*AGENCIES, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(AGENCIES), {p: public_key_text(k) for p, k in keys.items()}))
    data["budget"] = {"epsilon": 100.0, "delta": 1e-6, "accounting": accounting}
    data["release"]["min_cell_size"] = min_cell
    return parse_agreement(data), keys["coordinator"]


def _round_histogram(seed: int = 0) -> ScoreHistogram:
    """Linked pairs of a round: 3,000 true (a third exact), 400 false ones decaying from the floor."""
    rng = np.random.default_rng(seed)
    strangers = 0.55 + rng.exponential(1 / 20, 400)
    scores = np.concatenate([np.ones(1000), rng.beta(14, 2, 2000), strangers[strangers < 1]])
    return score_histogram(scores, floor=0.55)


def _pair_histogram(clusters: list[dict[int, float]], n: int) -> np.ndarray:
    """The floor histogram of clusters given as ``{agency: a record's position}``: one pair per two agencies."""
    values = [abs(c[a] - c[b]) for c in clusters for a, b in itertools.combinations(sorted(c), 2)]
    vector = link_score_vector(score_histogram(1 - np.asarray(values, dtype=np.float64) / 2, floor=0.55), n)
    return vector.counts


@pytest.mark.parametrize("n", [2, 3, 4])
def test_stated_sensitivity_bounds_what_one_person_changes(n: int) -> None:
    """Brute force: adding one person (one floor cluster, one record at each of any agencies, any scores)
    moves the released vector by at most the stated L1 and L2, and a person at every agency attains L1."""
    rng = np.random.default_rng(n)
    base = [{a: float(rng.uniform(0, 0.9)) for a in range(n) if rng.random() < 0.7} for _ in range(80)]
    before = _pair_histogram(base, n)
    stated = query_sensitivity(QueryKind.LINK_SCORES, n)
    worst = 0
    for mask in range(1, 2**n):
        for _ in range(5):
            person = {a: float(rng.uniform(0, 0.9)) for a in range(n) if mask >> a & 1}
            diff = _pair_histogram([*base, person], n) - before
            assert np.abs(diff).sum() <= stated.l1 and math.sqrt((diff**2).sum()) <= stated.l2
            worst = max(worst, int(np.abs(diff).sum()))
    assert worst == n * (n - 1) // 2 == stated.l1


def test_a_release_is_charged_once_and_the_auditor_re_derives_it(tmp_path: Path) -> None:
    """The release goes through the charge path onto the ledger, with the table's sensitivity over the
    round's agencies, and the auditor re-derives the entry without a finding."""
    agreement, key = _agreement()
    ledger = tmp_path / "ledger.jsonl"
    release = release_link_scores(agreement, ledger, key, _round_histogram(), AGENCIES, epsilon=1.0)
    entry = release.entry
    assert entry.query.kind is QueryKind.LINK_SCORES and entry.query.parties == AGENCIES
    assert entry.sensitivity == query_sensitivity(QueryKind.LINK_SCORES, len(AGENCIES)).l2 == 3
    assert tuple(c.key for c in entry.cells) == link_score_keys(0.55, 100)
    assert read_ledger(ledger, agreement) == [entry]
    verdict = verify_ledger(agreement, ledger, expected_hashes=[release.entry_hash])
    assert verdict.ok, verdict.findings


def test_a_mislabelled_calibration_entry_is_refused(tmp_path: Path) -> None:
    """Bins that do not match the subject, a subject without floor and bins, or too few agencies are
    refused before any noise is drawn; a forged entry that skipped that check is flagged by the auditor."""
    agreement, key = _agreement()
    vector = link_score_vector(_round_histogram(), len(AGENCIES))
    ledger = tmp_path / "ledger.jsonl"
    for subject, parties in ((link_score_subject(0.55, 50), AGENCIES), ("linked pairs", AGENCIES),
                             (link_score_subject(0.55, 100), AGENCIES[:1])):
        query = ReleaseQuery(kind=QueryKind.LINK_SCORES, parties=parties, subject=subject)
        with pytest.raises(ReleaseError, match="auditor would not accept"):
            release_module.release_vector(agreement, ledger, key, query, vector, epsilon=1.0)
    assert not ledger.exists() or read_ledger(ledger, agreement) == []
    # A coordinator that skips the engine's check: the entry's sensitivity (1) understates the table's.
    forged = derive(agreement, QueryKind.LINK_SCORES, attribute=None, by_combination=False, parties=AGENCIES,
                    subject=link_score_subject(0.55, 100), cells=vector.keys)
    assert forged.sensitivity.l2 == 3 and not forged.problems
    original = release_module.derive
    release_module.derive = lambda *a, **k: Derivation(sensitivity=forged.sensitivity.model_copy(
        update={"l1": 1, "l2": 1}), problems=())
    try:
        query = ReleaseQuery(kind=QueryKind.LINK_SCORES, parties=AGENCIES, subject=link_score_subject(0.55, 100))
        under = vector.__class__(keys=vector.keys, counts=vector.counts,
                                 sensitivity=vector.sensitivity.model_copy(update={"l1": 1, "l2": 1}))
        release_module.release_vector(agreement, ledger, key, query, under, epsilon=1.0)
    finally:
        release_module.derive = original
    assert not verify_ledger(agreement, ledger).ok


def test_published_estimates_read_the_noisy_cells_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every histogram the estimate and its bootstrap fit is built from the entry's noisy cells: the first
    is exactly them (suppressed bins empty), later ones differ from them only in suppressed bins (filled
    from the fit, below the minimum cell size), and the exact counts never appear."""
    agreement, key = _agreement(min_cell=10)
    exact = _round_histogram()
    release = release_link_scores(agreement, tmp_path / "ledger.jsonl", key, exact, AGENCIES, epsilon=0.5)
    seen: list[np.ndarray] = []
    real_fit = calibration_dp.fit_mixture
    monkeypatch.setattr(calibration_dp, "fit_mixture", lambda h, **k: seen.append(h.counts.copy()) or real_fit(h, **k))
    dp_estimate(release.entry, 0.7, bootstrap=3)
    released = np.array([0.0 if c.value is None else c.value for c in release.entry.cells])
    suppressed = np.array([c.value is None for c in release.entry.cells])
    assert suppressed.any() and len(seen) > 4
    assert np.array_equal(seen[0][-len(released):], released)
    for filled in seen[1:4]:  # the point estimate's filling rounds
        tail = filled[-len(released):]
        assert np.array_equal(tail[~suppressed], released[~suppressed])
        assert (tail[suppressed] <= 9).all()
    coarse = link_score_vector(exact, len(AGENCIES)).counts
    assert not np.array_equal(released, coarse)  # the noise did move the cells
    assert all(not np.array_equal(h[-len(coarse):], coarse) for h in seen)
    assert noisy_histogram(release.entry).floor == 0.55


def test_estimates_from_a_light_noise_release_agree_with_the_exact_ones(tmp_path: Path) -> None:
    """With little noise the published estimate is the exact one to within 0.01 and its interval holds it;
    the same cells read at a larger noise scale give a wider interval."""
    agreement, key = _agreement()
    histogram = _round_histogram(seed=3)
    # The published estimate takes the same median over fits from the floor and higher floors as the exact one.
    exact = calibrate(histogram, threshold=0.7, bootstrap=0).estimate
    light = release_link_scores(agreement, tmp_path / "light.jsonl", key, histogram, AGENCIES, epsilon=50.0).entry
    published = dp_estimate(light, 0.7, bootstrap=20)
    assert published.precision_interval is not None and published.recall_interval is not None
    low, high = published.precision_interval
    assert abs(published.precision - exact.precision) < 0.01
    assert abs(published.recall - exact.recall) < 0.01
    assert low - 0.005 <= exact.precision <= high + 0.005
    # The interval follows the entry's noise scale, not one draw of the noise: one release at epsilon 1
    # against one at 50 compared two random widths (their spreads overlap, so that failed a few runs in
    # a hundred). The same cells read at epsilon 1's scale isolate the scale (the bootstrap is seeded).
    heavy = release_link_scores(agreement, tmp_path / "heavy.jsonl", key, histogram, AGENCIES, epsilon=1.0).entry
    assert heavy.scale > light.scale
    noisier = dp_estimate(light.model_copy(update={"scale": heavy.scale}), 0.7, bootstrap=20)
    assert noisier.precision_interval is not None
    assert noisier.precision_interval[1] - noisier.precision_interval[0] > high - low


def test_dp_estimate_refuses_other_kinds(tmp_path: Path) -> None:
    """Only a link-scores entry is read as a calibration."""
    agreement, key = _agreement()
    release = release_link_scores(agreement, tmp_path / "ledger.jsonl", key, _round_histogram(), AGENCIES,
                                  epsilon=1.0)
    other = release.entry.model_copy(update={"query": ReleaseQuery(kind=QueryKind.OVERLAP, parties=AGENCIES)})
    with pytest.raises(ValueError, match="not a link-scores"):
        noisy_histogram(other)
