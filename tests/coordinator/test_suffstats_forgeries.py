"""The auditor re-derives a sufficient-statistics entry's exact sensitivity from its subject.

A training release of a scoring run (``G`` or ``b``) moves by ``C^2`` or ``C/2`` per person, in
fixed-point units, plus the CKKS slack; its ledger subject names ``C``, the unit, the slack and the
value count (``pplink.scoring.suffstats_protocol.release_subject``), and every node accepts only the
subject its own run plan gives. Invariant: an insider holding the coordinator's key who restates the
sensitivity below what the subject implies (re-signing the whole chain so that signatures, chain and
claimed losses all hold) is caught by the auditor, an entry whose subject hides its inputs is a
finding, and the release engine refuses both before any noise.
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.release.binding import binding_for_state
from coordinator.release.engine import charge
from coordinator.scoring.suffstats import charge_release
from pplink.accounting import Mechanism, PrivacyLoss, QueryKind, compose, entry_loss
from pplink.agreement import canonical_json, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.audit.verify import FindingKind, verify_ledger_bytes
from pplink.crypto import generate_signing_key, public_key_text, sign
from pplink.errors import ReleaseError
from pplink.ledger import ReleaseQuery, line_hash, signing_payload
from pplink.scoring.suffstats import RELEASE_B, RELEASE_GRAM, SuffStatsSettings, noise_plan
from pplink.scoring.suffstats_protocol import SuffStatsPlan, release_subject
from tests.coordinator.test_audit_forgeries import AGENCIES, make_state

Obj = dict[str, object]


class Run:
    """A zCDP agreement, a bound ledger and the two honest training charges of one run."""

    def __init__(self, tmp_path: Path) -> None:
        keys = {p: generate_signing_key() for p in (*AGENCIES, "coordinator", "auditor")}
        data = tomllib.loads(default_agreement_toml(list(AGENCIES), {p: public_key_text(k) for p, k in keys.items()}))
        data["budget"]["epsilon"] = 50.0
        self.agreement, self.key = parse_agreement(data), keys["coordinator"]
        self.binding = binding_for_state(self.agreement, self.key, make_state(self.agreement))
        settings = SuffStatsSettings()
        widths = (3, 2, 2, 2)
        self.plan = SuffStatsPlan("ab" * 16, self.agreement.agreement_id, AGENCIES[0], AGENCIES, widths,
                                  ("e1",), settings,
                                  noise_plan(settings, len(AGENCIES), self.agreement.budget.delta, sum(widths)))
        self.path = tmp_path / "ledger.jsonl"
        for release in (RELEASE_GRAM, RELEASE_B):
            charge_release(self.agreement, self.path, self.key, self.plan, release, binding=self.binding)
        self.lines = self.path.read_bytes().split(b"\n")[:-1]

    def verdict(self, lines: list[bytes]):  # type: ignore[no-untyped-def]
        return verify_ledger_bytes(self.agreement, b"\n".join(lines) + b"\n")

    def forge(self, seq: int, edit: Callable[[Obj], Obj]) -> list[bytes]:
        """Edit entry ``seq``; make its claimed loss and every running total agree; re-chain and re-sign."""
        delta = self.agreement.budget.delta
        out = list(self.lines[:seq])
        claimed = [PrivacyLoss.model_validate(json.loads(line)["loss"]) for line in out[1:]]
        for line in self.lines[seq:]:
            obj = json.loads(line)
            if obj["seq"] == seq:
                obj = edit(obj)
                obj["loss"] = entry_loss(Mechanism(obj["mechanism"]), obj["sensitivity"], obj["scale"], delta)\
                    .model_dump(mode="json")
            claimed.append(PrivacyLoss.model_validate(obj["loss"]))
            obj["cumulative"] = compose(claimed, self.agreement.budget.accounting, delta).model_dump(mode="json")
            obj["prev_hash"] = line_hash(out[-1])
            obj["signature"] = base64.b64encode(sign(self.key, signing_payload(obj))).decode()
            out.append(canonical_json(obj))
        return out


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def _findings(verdict) -> set[tuple[int | None, FindingKind]]:  # type: ignore[no-untyped-def]
    return {(f.seq, f.kind) for f in verdict.findings}


def test_the_honest_charges_verify_at_their_exact_sensitivity(run: Run) -> None:
    """The entries state the run plan's sensitivities, which is what the auditor re-derives from the subject."""
    verdict = run.verdict(run.lines)
    assert verdict.ok, verdict.findings
    stated = [json.loads(line)["sensitivity"] for line in run.lines[1:]]
    assert stated == [run.plan.noise.gram_sensitivity, run.plan.noise.b_sensitivity]
    assert stated[0] > 1000  # C^2 in fixed-point units: far above the kind's old lower bound of 1


@pytest.mark.parametrize(("seq", "less"), [(1, 1), (2, 1), (1, None), (2, None)])
def test_an_understated_sensitivity_is_caught(run: Run, seq: int, less: int | None) -> None:
    """One unit below the exact bound, or the old lower bound of 1, re-signed consistently: a SENSITIVITY finding."""
    def understate(obj: Obj) -> Obj:
        return {**obj, "sensitivity": 1 if less is None else int(obj["sensitivity"]) - less}  # type: ignore[call-overload]

    verdict = run.verdict(run.forge(seq, understate))
    assert not {FindingKind.SIGNATURE, FindingKind.CHAIN} & {f.kind for f in verdict.findings}
    assert (seq, FindingKind.SENSITIVITY) in _findings(verdict)


@pytest.mark.parametrize("edit", [
    lambda s: s.split(";")[0],  # the old subject: no C, unit or slack
    lambda s: s.replace("CKKS slack 0.015625", "CKKS slack 0.0"),  # slack below the protocol's
    lambda s: s.replace(" on 45 values", " on 44 values"),  # not an upper triangle's count
])
def test_a_subject_that_hides_or_shrinks_its_inputs_is_a_finding(run: Run, edit: Callable[[str], str]) -> None:
    def rewrite(obj: Obj) -> Obj:
        query = dict(obj["query"])  # type: ignore[call-overload]
        return {**obj, "query": {**query, "subject": edit(str(query["subject"]))}}

    verdict = run.verdict(run.forge(1, rewrite))
    assert (1, FindingKind.QUERY) in _findings(verdict)


def test_a_smaller_c_in_the_subject_is_refused_by_the_nodes(run: Run) -> None:
    """A subject restating C smaller is self-consistent for the auditor, but is not the subject any
    node's plan gives, so no node draws noise for it (``LedgerFollower.consume`` matches it exactly)."""
    honest = release_subject(RELEASE_GRAM, run.plan)
    assert honest in {json.loads(line)["query"]["subject"] for line in run.lines[1:]}
    smaller = SuffStatsPlan(run.plan.run_id, run.plan.agreement_id, run.plan.label_owner, run.plan.parties,
                            run.plan.widths, run.plan.entity_ids, SuffStatsSettings(feature_norm=1.0), run.plan.noise)
    assert release_subject(RELEASE_GRAM, smaller) != honest


def test_the_engine_refuses_an_understated_charge_before_any_noise(run: Run, tmp_path: Path) -> None:
    ledger = tmp_path / "other.jsonl"
    query = ReleaseQuery(kind=QueryKind.SUFFICIENT_STATISTICS, parties=run.plan.parties,
                         subject=release_subject(RELEASE_GRAM, run.plan))
    with pytest.raises(ReleaseError, match="the auditor would not accept it"):
        charge(run.agreement, ledger, run.key, query, mechanism=Mechanism.GAUSSIAN,
               sensitivity=run.plan.noise.gram_sensitivity - 1, scale=run.plan.noise.gram_scale, binding=run.binding)
    assert not ledger.exists()
