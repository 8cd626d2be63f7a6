"""The auditor catches and names every kind of tampering, from the agreement and the ledger bytes alone."""

from __future__ import annotations

import base64
import functools
import json
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from pplink.accounting import Mechanism, PrivacyLoss, QueryKind, entry_loss
from pplink.agreement import Accounting, AgreementConfig, canonical_json, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.audit.verify import FindingKind, verify_ledger, verify_ledger_bytes
from pplink.crypto import generate_signing_key, public_key_text, sign
from pplink.errors import LedgerError
from pplink.ledger import GENESIS_HASH, Cell, EntryDraft, ReleaseQuery, line_hash, signing_payload
from pplink.ledger_writer import open_ledger
from pplink.queries import declared_attribute, spec_for

AGENCIES = ("social_care", "school", "health")


def make_agreement(accounting: str = "pure", epsilon: float = 1.0) -> tuple[AgreementConfig, Ed25519PrivateKey]:
    """A default agreement with fresh in-memory keys; returns it and the coordinator's key."""
    keys = {p: generate_signing_key() for p in (*AGENCIES, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(AGENCIES), {p: public_key_text(k) for p, k in keys.items()}))
    data["budget"] = {"epsilon": epsilon, "delta": 1e-6, "accounting": accounting}
    return parse_agreement(data), keys["coordinator"]


def draft(agreement: AgreementConfig, scale: float = 10.0, *, kind: QueryKind = QueryKind.OVERLAP,
          claimed: PrivacyLoss | None = None, sensitivity: int | None = None, value: int = 42) -> EntryDraft:
    """A draft entry; honest unless ``claimed`` or ``sensitivity`` say otherwise."""
    mechanism = Mechanism.LAPLACE if agreement.budget.accounting is Accounting.PURE else Mechanism.GAUSSIAN
    attribute = "area" if kind is QueryKind.LINK_RATE else None
    needed = {QueryKind.LINK_RATE: 6 if mechanism is Mechanism.LAPLACE else 3}.get(kind, 1)
    d_in = sensitivity if sensitivity is not None else needed
    # The kind's real key set (from the query table): the first cell released, the rest suppressed.
    declared = declared_attribute(agreement, attribute) if attribute else None
    keys = spec_for(kind).keys(agreement, AGENCIES, declared, False, ())
    assert keys is not None
    return EntryDraft(
        query=ReleaseQuery(kind=kind, attribute=attribute, parties=AGENCIES), accounting=agreement.budget.accounting,
        mechanism=mechanism, sensitivity=d_in, scale=scale,
        loss=claimed if claimed is not None else entry_loss(mechanism, d_in, scale, agreement.budget.delta),
        min_cell_size=agreement.release.min_cell_size,
        cells=tuple(Cell(key=k, value=value if i == 0 else None) for i, k in enumerate(keys)),
        library="opendp==0.16.0",
    )


def write(path: Path, agreement: AgreementConfig, key: Ed25519PrivateKey, drafts: list[EntryDraft]) -> list[bytes]:
    """Append drafts through the real writer (which does not police the budget); return the lines.

    Line 1 is the ledger's genesis; entry n is on line n + 1 (``lines[n]``).
    """
    with open_ledger(path, agreement) as ledger:
        for d in drafts:
            ledger.append(d, key)
    return path.read_bytes().split(b"\n")[:-1]


@pytest.fixture
def honest(tmp_path: Path) -> tuple[AgreementConfig, Ed25519PrivateKey, list[bytes]]:
    """A four-entry pure-DP ledger spending 0.1 each of a budget of 1."""
    agreement, key = make_agreement()
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement) for _ in range(4)])
    return agreement, key, lines


def audit(agreement: AgreementConfig, lines: list[bytes], tail: bytes = b"\n"):  # type: ignore[no-untyped-def]
    return verify_ledger_bytes(agreement, b"\n".join(lines) + tail if lines else b"")


def kinds_at(verdict) -> set[tuple[int | None, FindingKind]]:  # type: ignore[no-untyped-def]
    return {(f.line, f.kind) for f in verdict.findings}


def resign(lines: list[bytes], key: Ed25519PrivateKey, start: int, edit=lambda obj: obj) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Rewrite lines[start:] as a forger holding ``key`` would: edit, re-chain, re-sign."""
    out = list(lines[:start])
    prev = line_hash(out[-1]) if out else GENESIS_HASH
    for line in lines[start:]:
        obj = edit(json.loads(line))
        obj["prev_hash"] = prev
        obj["signature"] = base64.b64encode(sign(key, signing_payload(obj))).decode()
        new = canonical_json(obj)
        out.append(new)
        prev = line_hash(new)
    return out


def test_an_honest_ledger_verifies_with_a_row_per_entry(honest) -> None:  # type: ignore[no-untyped-def]
    """No findings; rows show claimed = re-derived and the running total and remaining budget."""
    agreement, _, lines = honest
    verdict = audit(agreement, lines)
    assert verdict.ok and verdict.findings == ()
    assert [r.seq for r in verdict.rows] == [1, 2, 3, 4]
    assert all(r.claimed_epsilon == r.derived_epsilon == pytest.approx(0.1) for r in verdict.rows)
    assert verdict.rows[-1].cumulative_epsilon == pytest.approx(0.4)
    assert verdict.remaining_epsilon == pytest.approx(0.6)
    assert verdict.head_hash == line_hash(lines[-1])
    assert audit(agreement, []).ok  # an empty ledger spends nothing


def test_an_edited_value_is_caught(honest) -> None:  # type: ignore[no-untyped-def]
    """Changing a released number breaks that entry's signature and the next entry's chain link."""
    agreement, _, lines = honest
    lines[2] = lines[2].replace(b'"value":42', b'"value":420')
    found = kinds_at(audit(agreement, lines))
    assert (3, FindingKind.SIGNATURE) in found and (4, FindingKind.CHAIN) in found


def test_a_deleted_entry_is_caught(honest) -> None:  # type: ignore[no-untyped-def]
    """Removing entry 2: line 2 now holds entry 3 (sequence jump) and does not chain to line 1."""
    agreement, _, lines = honest
    del lines[2]
    verdict = audit(agreement, lines)
    assert {(3, FindingKind.SEQUENCE), (3, FindingKind.CHAIN)} <= kinds_at(verdict)
    assert any("entry 2 should be" in f.problem and "missing" in f.problem for f in verdict.findings)


def test_reordered_entries_are_caught(honest) -> None:  # type: ignore[no-untyped-def]
    """Swapping entries 2 and 3 breaks the sequence and the chain at both lines."""
    agreement, _, lines = honest
    lines[2], lines[3] = lines[3], lines[2]
    found = kinds_at(audit(agreement, lines))
    assert {(3, FindingKind.SEQUENCE), (4, FindingKind.SEQUENCE), (3, FindingKind.CHAIN),
            (4, FindingKind.CHAIN)} <= found


def test_entries_signed_by_another_key_are_caught(honest) -> None:  # type: ignore[no-untyped-def]
    """A forger re-chaining and re-signing from entry 2 with their own key fails every signature from there."""
    agreement, _, lines = honest
    forged = resign(lines, generate_signing_key(), 2, edit=lambda o: {**o, "cells": [{"key": ["x"], "value": 99}]})
    found = kinds_at(audit(agreement, forged))
    signatures = {(3, FindingKind.SIGNATURE), (4, FindingKind.SIGNATURE), (5, FindingKind.SIGNATURE)}
    # The made-up cells are also named (and charged the worst case); nothing before the forgery is.
    assert signatures <= found and {(3, FindingKind.QUERY), (4, FindingKind.QUERY)} <= found
    assert {line for line, _ in found} == {3, 4, 5}


def test_a_claimed_epsilon_below_what_the_scale_implies_is_caught(tmp_path: Path) -> None:
    """The coordinator itself signs an entry claiming 0.01 for noise of scale 2 (epsilon 0.5): named."""
    agreement, key = make_agreement()
    lines = write(tmp_path / "l.jsonl", agreement, key,
                  [draft(agreement), draft(agreement, 2.0, claimed=PrivacyLoss(epsilon=0.01)), draft(agreement)])
    verdict = audit(agreement, lines)
    under = [f for f in verdict.findings if f.kind is FindingKind.UNDER_CLAIMED]
    assert [(f.line, f.seq) for f in under] == [(3, 2)]
    assert "claims epsilon 0.01" in under[0].problem and "implies 0.5" in under[0].problem
    # Its running totals were built from the false claim, so they are wrong from there on.
    assert {(3, FindingKind.CUMULATIVE), (4, FindingKind.CUMULATIVE)} <= kinds_at(verdict)
    assert verdict.rows[1].derived_epsilon == pytest.approx(0.5)
    assert verdict.spent.epsilon == pytest.approx(0.7)


def test_an_understated_sensitivity_is_caught_and_the_true_cost_composed(tmp_path: Path) -> None:
    """A link-rate entry stating sensitivity 1 (it is 6 over three agencies) is named and charged at 6."""
    agreement, key = make_agreement(epsilon=10.0)
    lines = write(tmp_path / "l.jsonl", agreement, key,
                  [draft(agreement, 60.0, kind=QueryKind.LINK_RATE, sensitivity=1)])
    verdict = audit(agreement, lines)
    assert (2, FindingKind.SENSITIVITY) in kinds_at(verdict)
    assert verdict.spent.epsilon == pytest.approx(0.1)  # 6 / 60, not the claimed 1 / 60


def test_a_ledger_that_overspends_is_caught(tmp_path: Path) -> None:
    """Honest entries of 0.4 each: the third takes the total to 1.2 > 1 and is named (and the fourth)."""
    agreement, key = make_agreement()
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement, 2.5) for _ in range(4)])
    verdict = audit(agreement, lines)
    over = [(f.line, f.seq) for f in verdict.findings if f.kind is FindingKind.OVERSPEND]
    assert over == [(4, 3), (5, 4)]
    assert verdict.remaining_epsilon == 0.0


def test_zcdp_overspend_is_judged_on_composed_rho(tmp_path: Path) -> None:
    """Under zCDP the total rho, converted at delta, is what meets the budget."""
    agreement, key = make_agreement("zcdp", 2.0)
    one = entry_loss(Mechanism.GAUSSIAN, 1, 4.0, 1e-6)  # rho 1/32 (epsilon 1.14 alone)
    assert one.epsilon < 2.0
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement, 4.0) for _ in range(4)])
    verdict = audit(agreement, lines)
    assert verdict.spent.rho == pytest.approx(4 / 32)
    first_over = min(f.line for f in verdict.findings if f.kind is FindingKind.OVERSPEND)
    assert 2 < first_over <= 5
    assert all(f.kind is FindingKind.OVERSPEND for f in verdict.findings)


def test_a_laplace_entry_under_zcdp_accounting_is_named(tmp_path: Path) -> None:
    """The mechanism must fit the agreement's accounting (the writer refuses it; a forger is caught)."""
    agreement, key = make_agreement("zcdp", 4.0)
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement)])
    laplace = entry_loss(Mechanism.LAPLACE, 1, 10.0, 0.0).model_dump()
    forged = resign(lines, key, 1, edit=lambda o: {**o, "mechanism": "laplace", "loss": laplace})
    verdict = audit(agreement, forged)
    assert (2, FindingKind.MECHANISM) in kinds_at(verdict)
    assert verdict.spent.rho == pytest.approx(0.1**2 / 2)  # charged as pure 0.1-DP => 0.005-zCDP
    pure_draft = EntryDraft(**{**draft(agreement).model_dump(), "mechanism": Mechanism.LAPLACE, "loss": laplace})
    with pytest.raises(LedgerError, match="does not fit"), open_ledger(tmp_path / "l.jsonl", agreement) as ledger:
        ledger.append(pure_draft, key)


def test_a_gaussian_scale_that_overflows_opendp_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    """A forged zCDP entry with scale 1e-6 (rho 5e11: OpenDP's conversion overflows) is counted as unbounded."""
    agreement, key = make_agreement("zcdp", 4.0)
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement)])
    forged = resign(lines, key, 1, edit=lambda o: {**o, "scale": 1e-6})
    verdict = audit(agreement, forged)
    assert {FindingKind.UNDER_CLAIMED, FindingKind.OVERSPEND} <= {f.kind for f in verdict.findings}
    assert verdict.spent.epsilon == float("inf")


def test_a_released_small_cell_is_caught(tmp_path: Path) -> None:
    """A value below min_cell_size should have been suppressed."""
    agreement, key = make_agreement()
    lines = write(tmp_path / "l.jsonl", agreement, key, [draft(agreement, value=3)])
    assert kinds_at(audit(agreement, lines)) == {(2, FindingKind.SMALL_CELL)}


def test_a_torn_tail_is_reported(honest) -> None:  # type: ignore[no-untyped-def]
    """An interrupted last write shows as a torn line, named by number."""
    agreement, _, lines = honest
    verdict = audit(agreement, lines, tail=b"\n" + lines[1][:40])
    assert kinds_at(verdict) == {(6, FindingKind.TORN)}


def test_a_truncated_tail_is_caught_with_receipts(honest) -> None:  # type: ignore[no-untyped-def]
    """Cutting the last entries leaves a valid chain; a recipient's receipt (entry hash) exposes it."""
    agreement, _, lines = honest
    receipt = line_hash(lines[4])
    assert audit(agreement, lines[:4]).ok  # the limitation the receipts exist for
    verdict = verify_ledger_bytes(agreement, b"\n".join(lines[:4]) + b"\n", expected_hashes=[receipt])
    assert kinds_at(verdict) == {(None, FindingKind.MISSING_ENTRY)}
    assert verify_ledger_bytes(agreement, b"\n".join(lines) + b"\n", expected_hashes=[receipt]).ok


def test_a_ledger_under_another_agreement_is_named(honest) -> None:  # type: ignore[no-untyped-def]
    """Entries stamped with another agreement id are findings (and their signatures do not verify either)."""
    _, _, lines = honest
    other, _ = make_agreement()
    found = kinds_at(audit(other, lines))
    assert {(1, FindingKind.GENESIS), (2, FindingKind.AGREEMENT), (2, FindingKind.SIGNATURE)} <= found


def test_a_rewritten_line_is_named_not_canonical(honest) -> None:  # type: ignore[no-untyped-def]
    """Reformatting a line (same content, other bytes) is visible: the chain hashes bytes."""
    agreement, _, lines = honest
    lines[4] = json.dumps(json.loads(lines[4]), indent=None).encode()
    assert kinds_at(audit(agreement, lines)) == {(5, FindingKind.NOT_CANONICAL)}


def test_verify_ledger_reads_the_file_and_refuses_a_missing_one(honest, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The file wrapper gives the same verdict; a missing ledger is an error, not an empty pass."""
    agreement, _, _ = honest
    assert verify_ledger(agreement, tmp_path / "l.jsonl").ok
    with pytest.raises(LedgerError, match="cannot read ledger"):
        verify_ledger(agreement, tmp_path / "absent.jsonl")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_fails_verification(data) -> None:  # type: ignore[no-untyped-def]
    """Property: changing any one byte of a two-entry ledger produces at least one finding."""
    agreement, blob = _flip_ledger()
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != blob[pos]), label="byte")
    flipped = blob[:pos] + bytes([new]) + blob[pos + 1:]
    assert not verify_ledger_bytes(agreement, flipped).ok


@functools.cache
def _flip_ledger() -> tuple[AgreementConfig, bytes]:
    """A two-entry honest ledger, built once for the property test."""
    import tempfile

    agreement, key = make_agreement()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.jsonl"
        write(path, agreement, key, [draft(agreement), draft(agreement)])
        return agreement, path.read_bytes()
