"""Issue #14, part 2: insider-forged, coordinator-signed entries that understate their cost are all caught.

Each forgery is what an insider holding the coordinator's key would write: take an honest ledger,
edit one entry's labels, recompute its claimed loss and running totals so they agree with the
edit, then re-chain and re-sign everything from there. Signatures, chain and claimed losses all
hold, so only an auditor that re-derives agencies, key set and sensitivity from the agreement, the
ledger's genesis and the query table (``pplink.queries``) can catch it. Forgeries that change
nothing the auditor can re-derive (the residuals' unit in their subject, the genesis itself) are
caught with the recipients' receipts or the round's signed manifest.
"""

from __future__ import annotations

import base64
import json
import math
import random
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import LinkageState
from coordinator.release.binding import binding_for_state
from coordinator.release.engine import charge, release_query, release_vector
from coordinator.release.queries import QueryVector
from pplink.accounting import Mechanism, PrivacyLoss, QueryKind, Sensitivity, compose, entry_loss
from pplink.agreement import AgreementConfig, canonical_json, parse_agreement
from pplink.agreement_template import DEFAULT_AREAS, default_agreement_toml
from pplink.audit.verify import AuditVerdict, FindingKind, verify_ledger_bytes
from pplink.crypto import generate_signing_key, public_key_text, sign
from pplink.errors import ReleaseError
from pplink.ledger import ReleaseQuery, line_hash, signing_payload
from pplink.ledger_genesis import genesis_line
from pplink.queries import spec_for
from pplink.query_keys import combination_keys
from pplink.receipts import Receipt

AGENCIES = ("social_care", "school", "health", "police")
Obj = dict[str, object]


def make_agreement() -> tuple[AgreementConfig, Ed25519PrivateKey]:
    """Four agencies, pure accounting, a budget wide enough that only the labels are at issue."""
    keys = {p: generate_signing_key() for p in (*AGENCIES, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(AGENCIES), {p: public_key_text(k) for p, k in keys.items()}))
    data["budget"] = {"epsilon": 50.0, "delta": 1e-6, "accounting": "pure"}
    data["release"]["attributes"].append({"column": "age_years", "lower": 0.0, "upper": 18.0, "bins": 6})
    return parse_agreement(data), keys["coordinator"]


def make_state(agreement: AgreementConfig) -> LinkageState:
    rng = random.Random(5)
    cluster_of: dict[str, list[int]] = {p: [] for p in AGENCIES}
    attributes = {p: {"area": [], "age_band": []} for p in AGENCIES}
    for i in range(300):
        for party in [p for p in AGENCIES if rng.random() < 0.5] or [AGENCIES[0]]:
            cluster_of[party].append(i)
            attributes[party]["area"].append(rng.choice(DEFAULT_AREAS))
            attributes[party]["age_band"].append(None)
    clusters = {p: np.array(v, dtype=np.int64) for p, v in cluster_of.items()}
    return LinkageState(agreement.agreement_id, AGENCIES, clusters, np.zeros((300, 16), dtype=np.uint8), attributes,
                        0.8, meta={"round_id": "ab" * 16})


class Honest:
    """An honest bound ledger: overlap, link-rate by area, one residuals step, errors by agency presence."""

    def __init__(self, tmp_path: Path) -> None:
        self.agreement, self.key = make_agreement()
        self.state = make_state(self.agreement)
        self.binding = binding_for_state(self.agreement, self.key, self.state)
        self.path = tmp_path / "ledger.jsonl"
        a, k = self.agreement, self.key
        r1 = release_query(a, self.state, self.path, k, ReleaseQuery(kind="overlap"), epsilon=0.5)
        r2 = release_query(a, self.state, self.path, k, ReleaseQuery(kind="link-rate", attribute="area"), epsilon=0.5)
        subject = "residuals: vertical logistic regression run 0123456789ab, step 1 of 1, 300 entities, unit 1/1024"
        r3 = charge(a, self.path, k, ReleaseQuery(kind=QueryKind.RESIDUALS, subject=subject),
                    mechanism=Mechanism.LAPLACE, sensitivity=1024, scale=1024 * 4.0, binding=self.binding)
        presence = tuple((agency, where, outcome) for agency in AGENCIES[1:] for where in ("known", "not known")
                         for outcome in ("tp", "fp", "fn", "tn"))
        r4 = release_vector(a, self.path, k, ReleaseQuery(kind="confusion", attribute="area", subject="by presence"),
                            QueryVector(presence, np.full(len(presence), 50), Sensitivity(l1=3, l2=2)), epsilon=0.5,
                            binding=self.binding)
        self.receipts = [r1.receipt, r2.receipt, r3.receipt, r4.receipt]
        self.lines = self.path.read_bytes().split(b"\n")[:-1]

    def verdict(self, lines: list[bytes], **kwargs) -> AuditVerdict:  # type: ignore[no-untyped-def]
        return verify_ledger_bytes(self.agreement, b"\n".join(lines) + b"\n", **kwargs)

    def forge(self, seq: int, edit: Callable[[Obj], Obj]) -> list[bytes]:
        """Edit entry ``seq``; make its claimed loss and every running total agree; re-chain and re-sign."""
        out = list(self.lines[:seq])
        claimed = [PrivacyLoss.model_validate(json.loads(line)["loss"]) for line in out[1:]]
        for line in self.lines[seq:]:
            obj = json.loads(line)
            if obj["seq"] == seq:
                obj = edit(obj)
                obj["loss"] = entry_loss(Mechanism(obj["mechanism"]), obj["sensitivity"], obj["scale"], 0.0)\
                    .model_dump(mode="json")
            claimed.append(PrivacyLoss.model_validate(obj["loss"]))
            obj["cumulative"] = compose(claimed, self.agreement.budget.accounting, 0.0).model_dump(mode="json")
            obj["prev_hash"] = line_hash(out[-1])
            obj["signature"] = base64.b64encode(sign(self.key, signing_payload(obj))).decode()
            out.append(canonical_json(obj))
        return out


@pytest.fixture
def honest(tmp_path: Path) -> Honest:
    return Honest(tmp_path)


def _found(verdict: AuditVerdict) -> set[tuple[int | None, FindingKind]]:
    return {(f.seq, f.kind) for f in verdict.findings}


def _forgery_is_otherwise_clean(verdict: AuditVerdict) -> None:
    """The insider's forgery holds up as far as signatures and chain go: only re-derivation can catch it."""
    assert not {FindingKind.SIGNATURE, FindingKind.CHAIN, FindingKind.SEQUENCE} & {f.kind for f in verdict.findings}


def test_the_honest_ledger_verifies(honest: Honest) -> None:
    """The baseline: every entry consistent with the agreement, the round's agencies and the table."""
    verdict = honest.verdict(honest.lines, receipts=honest.receipts, expected_genesis=honest.binding.genesis)
    assert verdict.ok, verdict.findings
    assert verdict.round_id == "ab" * 16


def _link_rate_keys(agreement: AgreementConfig, parties: tuple[str, ...]) -> list[list[str]]:
    area = next(a for a in agreement.release.attributes if a.column == "area")
    keys = spec_for("link-rate").keys(agreement, parties, area, False, ())
    assert keys is not None
    return [list(k) for k in keys]


def test_a_link_rate_cut_to_two_agencies_is_caught(honest: Honest) -> None:
    """L1 10 over the round's four agencies, restated as over two (L1 3) with two agencies' cells."""
    def cut(obj: Obj) -> Obj:
        keys = _link_rate_keys(honest.agreement, AGENCIES[:2])
        return {**obj, "query": {**obj["query"], "parties": list(AGENCIES[:2])}, "sensitivity": 3,  # type: ignore[dict-item]
                "cells": [{"key": k, "value": None} for k in keys]}

    verdict = honest.verdict(honest.forge(2, cut))
    _forgery_is_otherwise_clean(verdict)
    assert {(2, FindingKind.QUERY), (2, FindingKind.SENSITIVITY)} <= _found(verdict)
    assert verdict.rows[1].derived_epsilon == pytest.approx(10 / (10 / 0.5))  # charged at L1 10, not 3


def test_link_rate_cells_labelled_overlap_are_caught(honest: Honest) -> None:
    """The link-rate entry relabelled as an overlap (L1 1): its cells are not an overlap's; charged the worst case."""
    verdict = honest.verdict(honest.forge(2, lambda obj: {
        **obj, "query": {**obj["query"], "kind": "overlap", "attribute": None}, "sensitivity": 1}))  # type: ignore[dict-item]
    _forgery_is_otherwise_clean(verdict)
    assert {(2, FindingKind.QUERY), (2, FindingKind.SENSITIVITY)} <= _found(verdict)
    assert verdict.rows[1].derived_epsilon == pytest.approx(0.5)  # L1 10 at the recorded scale 20


def test_a_residual_sensitivity_of_1024_restated_as_1_is_caught(honest: Honest) -> None:
    """Residuals in units of 1/1024 move one entry by 1024 units, not 1."""
    verdict = honest.verdict(honest.forge(3, lambda obj: {**obj, "sensitivity": 1}))
    _forgery_is_otherwise_clean(verdict)
    assert (3, FindingKind.SENSITIVITY) in _found(verdict)
    assert verdict.rows[2].derived_epsilon == pytest.approx(0.25)


def test_a_residual_unit_rewritten_in_the_subject_is_caught_by_the_label_owners_receipt(honest: Honest) -> None:
    """Subject and sensitivity both restated as unit 1: consistent on its face; the receipt shows the rewrite."""
    def rewrite(obj: Obj) -> Obj:
        subject = str(obj["query"]["subject"]).replace("unit 1/1024", "unit 1/1")  # type: ignore[index]
        return {**obj, "query": {**obj["query"], "subject": subject}, "sensitivity": 1}  # type: ignore[dict-item]

    forged = honest.forge(3, rewrite)
    assert honest.verdict(forged).ok  # the limitation the receipts exist for
    verdict = honest.verdict(forged, receipts=honest.receipts)
    assert {f.kind for f in verdict.findings} == {FindingKind.FORK}


def test_parties_not_in_the_agreement_are_caught(honest: Honest) -> None:
    """An overlap over an agency the agreement does not have."""
    verdict = honest.verdict(honest.forge(1, lambda obj: {
        **obj, "query": {**obj["query"], "parties": [*AGENCIES[:3], "mystery"]}}))  # type: ignore[dict-item]
    _forgery_is_otherwise_clean(verdict)
    problems = [f.problem for f in verdict.findings if f.kind is FindingKind.QUERY]
    assert any("not in the agreement (mystery)" in p for p in problems)


def test_presence_errors_restated_as_sensitivity_one_are_caught(honest: Honest) -> None:
    """Errors by agency presence put one person in a cell of every agency asked: L1 3 here, not 1."""
    verdict = honest.verdict(honest.forge(4, lambda obj: {**obj, "sensitivity": 1}))
    _forgery_is_otherwise_clean(verdict)
    assert (4, FindingKind.SENSITIVITY) in _found(verdict)


@pytest.mark.parametrize(("what", "edit"), [
    ("an undeclared attribute", lambda obj: {**obj, "query": {**obj["query"], "kind": "count-by",
                                                              "attribute": "religion"}}),
    ("a histogram of a categorical attribute", lambda obj: {**obj, "query": {**obj["query"], "kind": "histogram",
                                                                             "attribute": "area"}}),
    ("a FedAvg round of one agency", lambda obj: {**obj, "query": {**obj["query"], "kind": "fedavg",
                                                                   "parties": [AGENCIES[0]], "subject": "round 1"},
                                                  "cells": []}),
    ("cells added to a residuals entry", lambda obj: {**obj, "cells": [{"key": ["x"], "value": 99}]}),
    ("an agency named twice", lambda obj: {**obj, "query": {**obj["query"], "parties": [*AGENCIES, AGENCIES[0]]}}),
])
def test_other_mislabelled_entries_are_caught(honest: Honest, what: str, edit) -> None:  # type: ignore[no-untyped-def]
    """Further labels an insider could change: every one is a query finding."""
    seq = 3 if "residuals" in what else 1
    verdict = honest.verdict(honest.forge(seq, edit))
    _forgery_is_otherwise_clean(verdict)
    assert (seq, FindingKind.QUERY) in _found(verdict), what


def test_a_forged_genesis_with_fewer_agencies_is_caught_by_the_manifest(honest: Honest) -> None:
    """An insider restarts the ledger from a genesis naming two agencies and restates a link-rate over them."""
    genesis = genesis_line(honest.agreement, honest.key, "ab" * 16, AGENCIES[:2])
    keys = _link_rate_keys(honest.agreement, AGENCIES[:2])
    link = json.loads(honest.lines[2])
    link.update(seq=1, sensitivity=3, query={**link["query"], "parties": list(AGENCIES[:2])},
                cells=[{"key": k, "value": None} for k in keys], prev_hash=line_hash(genesis))
    link["loss"] = entry_loss(Mechanism.LAPLACE, 3, link["scale"], 0.0).model_dump(mode="json")
    link["cumulative"] = link["loss"]
    link["signature"] = base64.b64encode(sign(honest.key, signing_payload(link))).decode()
    forged = [genesis, canonical_json(link)]
    assert honest.verdict(forged).ok  # self-consistent
    verdict = honest.verdict(forged, expected_genesis=honest.binding.genesis, receipts=honest.receipts)
    kinds = {f.kind for f in verdict.findings}
    assert FindingKind.GENESIS in kinds and FindingKind.RECEIPT in kinds


def test_an_absurd_forged_scale_is_a_finding_not_a_crash(honest: Honest) -> None:
    """A scale of 1e-300 (a loss of 1e300): reported as overspent, and the audit completes."""
    lines = honest.forge(1, lambda obj: {**obj, "scale": 1e-300, "sensitivity": 1})
    verdict = honest.verdict(lines)
    assert FindingKind.OVERSPEND in {f.kind for f in verdict.findings}
    assert verdict.spent.epsilon >= 1e300 or math.isinf(verdict.spent.epsilon)


def test_receipts_that_are_not_evidence_are_reported(honest: Honest) -> None:
    """A receipt whose entry was edited (its signature fails) proves nothing, and says so."""
    bad = honest.receipts[0]
    edited = bad.entry.model_copy(update={"scale": bad.entry.scale * 2})
    fake = Receipt(ledger=bad.ledger, seq=bad.seq, entry_hash=bad.entry_hash, entry=edited)
    verdict = honest.verdict(honest.lines, receipts=[fake])
    assert [f.kind for f in verdict.findings] == [FindingKind.RECEIPT]


def test_the_engine_refuses_what_the_auditor_would_catch(tmp_path: Path) -> None:
    """The same table guards the engine: each understated release is refused before noise, nothing written."""
    agreement, key = make_agreement()
    state = make_state(agreement)
    binding = binding_for_state(agreement, key, state)
    ledger = tmp_path / "l.jsonl"
    link_keys = tuple(tuple(k) for k in _link_rate_keys(agreement, AGENCIES))
    cases = [
        (ReleaseQuery(kind="overlap", parties=AGENCIES), link_keys, 1),  # link-rate cells labelled overlap
        (ReleaseQuery(kind="link-rate", attribute="area", parties=AGENCIES[:2]),
         tuple(tuple(k) for k in _link_rate_keys(agreement, AGENCIES[:2])), 3),  # cut to two agencies
        (ReleaseQuery(kind=QueryKind.RESIDUALS, subject="residuals: step 1, unit 1/1024"), (), 1),  # 1024 -> 1
        (ReleaseQuery(kind="overlap", parties=(*AGENCIES[:3], "mystery")),
         tuple((label,) for _, label in combination_keys((*AGENCIES[:3], "mystery"))), 1),  # not in the agreement
    ]
    for query, keys, sensitivity in cases:
        with pytest.raises(ReleaseError, match="the auditor would not accept it"):
            charge(agreement, ledger, key, query, mechanism=Mechanism.LAPLACE, sensitivity=sensitivity, scale=20.0,
                   keys=keys, binding=binding)  # refused before any noise would be drawn
    assert not ledger.exists()
