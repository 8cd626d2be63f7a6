"""``pplink coordinator release`` and ``pplink audit verify`` through click: exit codes, files, tables, JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from coordinator.linkage.state import LinkageState
from pplink.agreement_template import DEFAULT_AREAS
from pplink.cli.audit import audit
from pplink.cli.main import PplinkGroup
from pplink.cli.release import release_command
from pplink.errors import BudgetExceededError, LedgerError, UsageError
from tests.support import AGENCIES, Setup, make_setup, publish_linkage_round


def _cli() -> click.Group:
    """The root group with ``coordinator release`` (as the lead registers it) and ``audit``."""
    root = PplinkGroup("pplink")
    coordinator = click.Group("coordinator")
    coordinator.add_command(release_command)
    root.add_command(coordinator)
    root.add_command(audit)
    return root


def run(*args: str | Path) -> Result:
    return CliRunner(mix_stderr=False).invoke(_cli(), [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Setup, Path]:
    """An agreement (zcdp, epsilon 1) with keys on disk and a linkage state of 300 synthetic people."""
    setup = make_setup(tmp_path, edit=lambda text: text.replace("epsilon = 4.0", "epsilon = 1.0"))
    rng = random.Random(11)
    cluster_of: dict[str, list[int]] = {p: [] for p in AGENCIES}
    attributes = {p: {"area": [], "deprivation_quintile": [], "age_band": []} for p in AGENCIES}
    for i in range(300):
        at = [p for p in AGENCIES if rng.random() < 0.5] or [AGENCIES[0]]
        for party in at:
            cluster_of[party].append(i)
            attributes[party]["area"].append(rng.choice(DEFAULT_AREAS[:2]))
            attributes[party]["deprivation_quintile"].append(str(rng.randint(1, 5)))
            attributes[party]["age_band"].append(None)
    state = LinkageState(setup.agreement.agreement_id, AGENCIES,
                         {p: np.array(v, dtype=np.int64) for p, v in cluster_of.items()},
                         np.zeros((300, 16), dtype=np.uint8), attributes, 0.8)
    out = publish_linkage_round(setup.agreement, setup.key("coordinator"), state, tmp_path / "match")
    return setup, out


def release(setup: Setup, out: Path, *extra: str) -> Result:
    return run("coordinator", "release", "--agreement", setup.agreement_path, "--ledger", setup.root / "ledger.jsonl",
               "--linkage", out, "--key", setup.key_path("coordinator"), *extra)


def verify(setup: Setup, *extra: str) -> Result:
    return run("audit", "verify", "--agreement", setup.agreement_path, "--ledger", setup.root / "ledger.jsonl", *extra)


def test_release_then_audit_round_trip(files) -> None:  # type: ignore[no-untyped-def]
    """A release prints its ledger entry and table, writes --out only after the entry exists; the audit passes."""
    setup, out = files
    r = release(setup, out, "--query", "overlap", "--epsilon", "0.3", "--out", setup.root / "overlap.json")
    assert r.exit_code == 0, r.output + r.stderr
    assert "Release recorded as ledger entry 1" in r.stdout and "social_care+school" in r.stdout
    assert "gaussian" in r.stdout and "remaining" in r.stdout
    written = json.loads((setup.root / "overlap.json").read_text())
    ledger_line = json.loads((setup.root / "ledger.jsonl").read_bytes().splitlines()[1])  # after the genesis
    assert written["entry"] == ledger_line
    r = release(setup, out, "--query", "count-by", "--attribute", "area", "--by-combination", "--epsilon", "0.3")
    assert r.exit_code == 0, r.stderr
    r = verify(setup)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "OK: chain, signatures" in r.stdout and "count-by area x combination" in r.stdout
    assert "re-derived eps" in r.stdout and "claimed rho" in r.stdout


def test_link_rate_json_includes_the_derived_rates(files) -> None:  # type: ignore[no-untyped-def]
    """--json prints the release (entry, receipt hash) and derived rates; 4 agencies: L2 = ceil(sqrt(10)) = 4."""
    setup, out = files
    r = release(setup, out, "--query", "link-rate", "--attribute", "deprivation_quintile", "--epsilon", "0.5", "--json")
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["entry"]["sensitivity"] == 4 and payload["entry"]["query"]["parties"] == list(AGENCIES)
    assert len(payload["link_rates"]) == 4 * 3 * 6  # ordered agency pairs x (5 quintiles + missing)
    assert len(payload["entry_hash"]) == 64


def test_a_release_past_the_budget_exits_with_its_code_and_writes_nothing(files) -> None:  # type: ignore[no-untyped-def]
    """Budget exhaustion: the refusal's exit code, a message with what is left, the ledger unchanged."""
    setup, out = files
    assert release(setup, out, "--query", "overlap", "--epsilon", "0.8").exit_code == 0
    before = (setup.root / "ledger.jsonl").read_bytes()
    r = release(setup, out, "--query", "overlap", "--epsilon", "0.8", "--out", setup.root / "x.json")
    assert r.exit_code == BudgetExceededError("x").exit_code
    assert "release refused" in r.stderr and "remaining rho" in r.stderr
    assert (setup.root / "ledger.jsonl").read_bytes() == before
    assert not (setup.root / "x.json").exists()


@pytest.mark.parametrize("args", [("--query", "overlap", "--epsilon", "0.1", "--rho", "0.01"),
                                  ("--query", "overlap"),
                                  ("--query", "overlap", "--attribute", "area", "--epsilon", "0.1"),
                                  ("--query", "count-by", "--epsilon", "0.1")])
def test_bad_option_combinations_are_usage_errors(files, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """Conflicting or missing options exit with the usage error's code before anything is released."""
    setup, out = files
    r = release(setup, out, *args)
    assert r.exit_code == UsageError("x").exit_code, r.stderr
    assert not (setup.root / "ledger.jsonl").exists()


def test_audit_names_tampering_and_exits_with_the_ledger_code(files) -> None:  # type: ignore[no-untyped-def]
    """An edited number: the table is still printed, the findings are named, the exit code is LedgerError's."""
    setup, out = files
    for _ in range(2):
        assert release(setup, out, "--query", "count-by", "--attribute", "area", "--epsilon", "0.2").exit_code == 0
    path = setup.root / "ledger.jsonl"
    lines = path.read_bytes().splitlines()
    obj = json.loads(lines[1])
    obj["cells"][0]["value"] = (obj["cells"][0]["value"] or 0) + 100
    lines[1] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    r = verify(setup)
    assert r.exit_code == LedgerError("x").exit_code
    assert "[signature] line 2" in r.stdout and "[chain] line 3" in r.stdout and "FAILED" in r.stdout
    assert "does not verify" in r.stderr
    r = verify(setup, "--json")
    assert r.exit_code == LedgerError("x").exit_code
    verdict = json.loads(r.stdout)
    assert verdict["ok"] is False and {f["kind"] for f in verdict["findings"]} == {"signature", "chain"}


def test_audit_checks_receipts_against_a_truncated_ledger(files) -> None:  # type: ignore[no-untyped-def]
    """--expect-entry: a recipient's receipt for a release cut off the end of the ledger is reported."""
    setup, out = files
    release(setup, out, "--query", "overlap", "--epsilon", "0.1")
    receipt = json.loads(release(setup, out, "--query", "overlap", "--epsilon", "0.1", "--json").stdout)["entry_hash"]
    assert verify(setup, "--expect-entry", receipt).exit_code == 0
    path = setup.root / "ledger.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))  # genesis and entry 1
    r = verify(setup, "--expect-entry", receipt)
    assert r.exit_code == LedgerError("x").exit_code and "[missing-entry] ledger" in r.stdout
