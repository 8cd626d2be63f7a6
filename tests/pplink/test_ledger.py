"""The ledger file: a signed genesis, canonical signed chained lines, fsynced locked appends, torn lines refused."""

from __future__ import annotations

import hashlib
import json
import threading
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pplink.accounting import Mechanism, QueryKind, entry_loss
from pplink.agreement import Accounting, AgreementConfig, canonical_json, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.crypto import generate_signing_key, public_key_text, verify
from pplink.errors import AgreementMismatchError, LedgerError, SignatureError
from pplink.ledger import (
    Cell,
    EntryDraft,
    ReleaseQuery,
    decode_signature,
    line_hash,
    read_genesis,
    read_ledger,
    signing_payload,
)
from pplink.ledger_writer import open_ledger

AGENCIES = ("social_care", "school", "health")


def make_agreement(accounting: str = "pure", epsilon: float = 1.0) -> tuple[AgreementConfig, Ed25519PrivateKey]:
    """A default agreement with fresh in-memory keys; returns it and the coordinator's key."""
    keys = {p: generate_signing_key() for p in (*AGENCIES, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(AGENCIES), {p: public_key_text(k) for p, k in keys.items()}))
    data["budget"] = {"epsilon": epsilon, "delta": 1e-6, "accounting": accounting}
    return parse_agreement(data), keys["coordinator"]


def draft(agreement: AgreementConfig, scale: float = 4.0) -> EntryDraft:
    """An honest draft: an overlap release whose claimed loss is what its scale implies."""
    mechanism = Mechanism.LAPLACE if agreement.budget.accounting is Accounting.PURE else Mechanism.GAUSSIAN
    return EntryDraft(
        query=ReleaseQuery(kind=QueryKind.OVERLAP, parties=AGENCIES), accounting=agreement.budget.accounting,
        mechanism=mechanism, sensitivity=1, scale=scale,
        loss=entry_loss(mechanism, 1, scale, agreement.budget.delta), min_cell_size=10,
        cells=(Cell(key=("social_care",), value=42), Cell(key=("school",), value=None)), library="opendp==0.16.0",
    )


def test_appends_are_canonical_chained_signed_and_totalled(tmp_path: Path) -> None:
    """Each line is canonical JSON + newline; prev_hash chains lines; the signature covers all but itself."""
    agreement, key = make_agreement()
    path = tmp_path / "ledger.jsonl"
    with open_ledger(path, agreement) as ledger:
        assert ledger.entries == () and ledger.spent.epsilon == 0.0
        first = ledger.append(draft(agreement, 4.0), key)
        second = ledger.append(draft(agreement, 2.0), key)
        assert ledger.spent.epsilon == pytest.approx(0.75)
    assert (first.seq, second.seq) == (1, 2)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4  # genesis, two entries
    genesis = read_genesis(path, agreement)
    assert genesis is not None and genesis.agreement_id == agreement.agreement_id and genesis.round_id is None
    assert first.prev_hash == line_hash(lines[0])  # the chain starts at the genesis line
    assert second.prev_hash == hashlib.sha256(lines[1]).hexdigest() == line_hash(lines[1])
    for line in lines[1:3]:
        obj = json.loads(line)
        assert canonical_json(obj) == line
        verify(agreement.coordinator.public_key, signing_payload(obj), decode_signature(obj["signature"]), what="t")
    assert first.cumulative.epsilon == pytest.approx(0.25) and second.cumulative.epsilon == pytest.approx(0.75)
    assert first.agreement_id == agreement.agreement_id
    assert read_ledger(path, agreement) == [first, second]


def test_zcdp_entries_carry_rho_and_the_converted_total(tmp_path: Path) -> None:
    """Under zCDP the running total is the sum of rhos converted at the agreement's delta."""
    agreement, key = make_agreement("zcdp", 4.0)
    with open_ledger(tmp_path / "l.jsonl", agreement) as ledger:
        a = ledger.append(draft(agreement, 4.0), key)
        b = ledger.append(draft(agreement, 4.0), key)
    assert a.loss.rho == pytest.approx(1 / 32) and b.cumulative.rho == pytest.approx(1 / 16)
    assert a.cumulative.delta == 1e-6
    assert b.cumulative.epsilon < a.loss.epsilon + b.loss.epsilon  # composing rho beats adding epsilons


def test_a_wrong_signing_key_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Entries signed by anyone but the agreement's coordinator would not verify, so none are written."""
    agreement, _ = make_agreement()
    path = tmp_path / "l.jsonl"
    with open_ledger(path, agreement) as ledger, pytest.raises(SignatureError):
        ledger.append(draft(agreement), generate_signing_key())
    assert not path.exists() or path.read_bytes() == b""


def test_a_torn_last_line_is_reported_and_appending_refused(tmp_path: Path) -> None:
    """A crash mid-write leaves a line without newline: named by file and line, never repaired."""
    agreement, key = make_agreement()
    path = tmp_path / "l.jsonl"
    with open_ledger(path, agreement) as ledger:
        ledger.append(draft(agreement), key)
        ledger.append(draft(agreement), key)
    good = path.read_bytes()
    torn = good + good.split(b"\n")[0][:50]
    path.write_bytes(torn)
    with pytest.raises(LedgerError, match=r"l\.jsonl: line 4 is torn"):
        read_ledger(path, agreement)
    with pytest.raises(LedgerError, match="line 4 is torn"), open_ledger(path, agreement):
        pass
    assert path.read_bytes() == torn  # left exactly as found


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda lines: [lines[0], b"{not json"], "line 3 is not JSON"),
        (lambda lines: [lines[0], lines[1].replace(b'"seq":2', b'"seq": 2')], "line 3 is not in canonical form"),
        (lambda lines: [lines[0], b'{"seq":2}'], "line 3 is not a valid ledger entry"),
        (lambda lines: [lines[1], lines[0]], "line 2 has sequence number 2"),
        (lambda lines: [lines[0], lines[1].replace(b'"value":42', b'"value":43')], "line 3: signature does not verify"),
        (lambda lines: [lines[1]], "line 2 has sequence number 2"),
    ],
)
def test_a_damaged_ledger_is_refused_for_appending(tmp_path: Path, mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    """The coordinator never extends a ledger whose lines, order or signatures do not hold."""
    agreement, key = make_agreement()
    path = tmp_path / "l.jsonl"
    with open_ledger(path, agreement) as ledger:
        ledger.append(draft(agreement), key)
        ledger.append(draft(agreement), key)
    genesis, *lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join([genesis, *mangle(lines)]) + b"\n")
    with pytest.raises(LedgerError, match=message), open_ledger(path, agreement):
        pass


def test_a_ledger_from_another_agreement_is_refused(tmp_path: Path) -> None:
    """Entries carry the agreement id; a ledger is never continued under another agreement."""
    agreement, key = make_agreement()
    other, _ = make_agreement()
    path = tmp_path / "l.jsonl"
    with open_ledger(path, agreement) as ledger:
        ledger.append(draft(agreement), key)
    with pytest.raises(AgreementMismatchError), open_ledger(path, other):
        pass


def test_the_lock_excludes_a_second_appender(tmp_path: Path) -> None:
    """While one release holds the ledger, another cannot take it (and says so after its timeout)."""
    agreement, _ = make_agreement()
    path = tmp_path / "l.jsonl"
    with open_ledger(path, agreement):
        with (pytest.raises(LedgerError, match="held the ledger lock"),
              open_ledger(path, agreement, lock_timeout_s=0.05)):
            pass
    with open_ledger(path, agreement, lock_timeout_s=0.05):  # released afterwards
        pass


def test_concurrent_appenders_produce_one_unbroken_chain(tmp_path: Path) -> None:
    """Four threads appending at once (each with its own lock fd) still give seq 1..n and a valid chain."""
    agreement, key = make_agreement(epsilon=100.0)
    path = tmp_path / "l.jsonl"
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                with open_ledger(path, agreement) as ledger:
                    ledger.append(draft(agreement, 100.0), key)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = read_ledger(path, agreement)
    assert [e.seq for e in entries] == list(range(1, 21))
    assert entries[-1].cumulative.epsilon == pytest.approx(20 * 0.01)


def test_writer_is_unusable_after_its_block(tmp_path: Path) -> None:
    """Appending after the lock is released could race another appender, so it is refused."""
    agreement, key = make_agreement()
    with open_ledger(tmp_path / "l.jsonl", agreement) as ledger:
        pass
    with pytest.raises(LedgerError, match="outside"):
        ledger.append(draft(agreement), key)


def test_release_query_model_rules() -> None:
    """Options that do not fit the query kind are rejected rather than silently ignored."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs an attribute"):
        ReleaseQuery(kind=QueryKind.COUNT_BY)
    with pytest.raises(ValidationError, match="takes no attribute"):
        ReleaseQuery(kind=QueryKind.OVERLAP, attribute="area")
    with pytest.raises(ValidationError, match="by_combination does not apply to query histogram"):
        ReleaseQuery(kind=QueryKind.HISTOGRAM, attribute="age", by_combination=True)
    assert ReleaseQuery(kind=QueryKind.LINK_RATE).attribute is None


def test_a_lock_is_on_the_file_not_its_name(tmp_path: Path) -> None:
    """A hard link takes the same lock; a waiter whose name is renamed over locks the new file, not the old."""
    import os
    import time

    from pplink.ledger_genesis import file_identity, lock_file, unlock_file

    path, hard = tmp_path / "l.jsonl", tmp_path / "hard.jsonl"
    path.write_bytes(b"")
    os.link(path, hard)
    held = lock_file(path, 1.0, what="ledger")
    with pytest.raises(LedgerError, match="held the ledger lock"):
        lock_file(hard, 0.05, what="ledger")
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(lock_file(path, 5.0, what="ledger")))
    waiter.start()
    time.sleep(0.2)  # the waiter has opened the old file and is waiting on its lock
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(b"")
    os.replace(replacement, path)  # the name now points at another file
    unlock_file(held)
    waiter.join()
    st = os.stat(path)
    assert file_identity(got[0]) == (st.st_dev, st.st_ino)
    unlock_file(got[0])
