"""Issue #14, parts 1 and 6: the budget belongs to the round's ledger, not to a file name.

Every reproduction from the issue ends refused by the engine, or caught by ``audit verify`` (with
the receipts recipients keep, or the round's signed manifest):

* ``--ledger new.jsonl`` next to a ledger that has spent: refused; the new ledger's audit with
  the first ledger's receipts shows the fork;
* an empty ledger, a copy, a ledger cut back in place, another round's ledger: refused;
* two concurrent releases through a symlink and the real path: they share one lock, so the second
  is judged against the first (never both past the budget);
* ``--epsilon 1e308``, ``--rho 1e300``, ``--epsilon 1e-300``: a ReleaseError with its exit code.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from coordinator.linkage.state import LinkageState
from coordinator.release.binding import PIN_FILE
from pplink.agreement_template import DEFAULT_AREAS
from pplink.cli.audit import audit
from pplink.cli.main import PplinkGroup
from pplink.cli.release import release_command
from pplink.errors import LedgerError, ReleaseError
from pplink.ledger_genesis import read_pin
from tests.support import AGENCIES, Setup, make_setup, publish_linkage_round

ROOT = Path(__file__).resolve().parents[2]


def _cli() -> click.Group:
    root = PplinkGroup("pplink")
    coordinator = click.Group("coordinator")
    coordinator.add_command(release_command)
    root.add_command(coordinator)
    root.add_command(audit)
    return root


def run(*args: str | Path) -> Result:
    return CliRunner(mix_stderr=False).invoke(_cli(), [str(a) for a in args], catch_exceptions=False)


def _state(setup: Setup, seed: int = 11) -> LinkageState:
    rng = random.Random(seed)
    cluster_of: dict[str, list[int]] = {p: [] for p in AGENCIES}
    attributes = {p: {"area": [], "deprivation_quintile": []} for p in AGENCIES}
    for i in range(400):
        for party in [p for p in AGENCIES if rng.random() < 0.5] or [AGENCIES[0]]:
            cluster_of[party].append(i)
            attributes[party]["area"].append(rng.choice(DEFAULT_AREAS[:2]))
            attributes[party]["deprivation_quintile"].append(str(rng.randint(1, 5)))
    return LinkageState(setup.agreement.agreement_id, AGENCIES,
                        {p: np.array(v, dtype=np.int64) for p, v in cluster_of.items()},
                        np.zeros((400, 16), dtype=np.uint8), attributes, 0.8, meta={"round_id": f"{seed:032x}"})


@pytest.fixture
def rnd(tmp_path: Path) -> tuple[Setup, Path]:
    """A pure-DP agreement with budget 4 (as in the issue) and a published round."""
    setup = make_setup(tmp_path, edit=lambda t: t.replace('accounting = "zcdp"', 'accounting = "pure"'))
    assert setup.agreement.budget.epsilon == 4.0
    return setup, publish_linkage_round(setup.agreement, setup.key("coordinator"), _state(setup),
                                        tmp_path / "round")


def release(setup: Setup, linkage: Path, ledger: Path | None, *extra: str | Path) -> Result:
    ledger_args: tuple[str | Path, ...] = ("--ledger", ledger) if ledger is not None else ()
    return run("coordinator", "release", "--agreement", setup.agreement_path, *ledger_args, "--linkage", linkage,
               "--key", setup.key_path("coordinator"), "--query", "overlap", *extra)


def verify(setup: Setup, ledger: Path, *extra: str | Path) -> Result:
    return run("audit", "verify", "--agreement", setup.agreement_path, "--ledger", ledger, *extra)


def _kinds(result: Result) -> set[str]:
    return {f["kind"] for f in json.loads(result.stdout)["findings"]}


def test_a_new_ledger_next_to_a_spent_one_is_refused_and_its_fork_caught(rnd) -> None:  # type: ignore[no-untyped-def]
    """The issue's first reproduction: --ledger new.jsonl (ε 4) after 2.46 spent elsewhere."""
    setup, linkage = rnd
    ledger = setup.root / "ledger.jsonl"
    receipts = setup.root / "agency.receipts"
    assert release(setup, linkage, ledger, "--epsilon", "2.46", "--receipts", receipts).exit_code == 0
    r = release(setup, linkage, setup.root / "new.jsonl", "--epsilon", "4")
    assert r.exit_code == LedgerError("x").exit_code
    assert "not the file this round's releases went to" in r.stderr
    assert not (setup.root / "new.jsonl").read_bytes()  # locked, never written

    # A person who removes the pin to force it through is caught by any recipient's receipt.
    (linkage / PIN_FILE).unlink()
    assert release(setup, linkage, setup.root / "new.jsonl", "--epsilon", "4").exit_code == 0
    assert verify(setup, setup.root / "new.jsonl").exit_code == 0  # alone it looks fine: the limitation
    r = verify(setup, setup.root / "new.jsonl", "--receipts", receipts, "--json")
    assert r.exit_code == LedgerError("x").exit_code and _kinds(r) == {"fork"}


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_an_emptied_or_cut_ledger_is_caught_by_receipts(rnd, keep: int) -> None:  # type: ignore[no-untyped-def]
    """Cut to nothing, to its genesis, or to its first entry: a receipt for entry 2 shows the truncation."""
    setup, linkage = rnd
    ledger, receipts = setup.root / "ledger.jsonl", setup.root / "agency.receipts"
    for _ in range(2):
        assert release(setup, linkage, ledger, "--epsilon", "0.5", "--receipts", receipts).exit_code == 0
    ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:keep]))
    assert verify(setup, ledger).exit_code == 0  # alone, a shorter ledger verifies
    r = verify(setup, ledger, "--receipts", receipts, "--json")
    assert r.exit_code == LedgerError("x").exit_code and _kinds(r) == {"truncated"}


def test_the_default_ledger_is_the_rounds_and_stays_pinned(rnd) -> None:  # type: ignore[no-untyped-def]
    """Without --ledger the round's own ledger is used; the pin records its identity and last entry."""
    setup, linkage = rnd
    assert release(setup, linkage, None, "--epsilon", "0.5").exit_code == 0
    pin = read_pin(linkage / PIN_FILE)
    assert pin is not None and pin.seq == 1 and Path(pin.path) == linkage / "coordinator" / "ledger.jsonl"
    assert release(setup, linkage, None, "--epsilon", "0.5").exit_code == 0
    assert read_pin(linkage / PIN_FILE).seq == 2  # type: ignore[union-attr]
    assert verify(setup, Path(pin.path), "--linkage", linkage).exit_code == 0


@pytest.mark.parametrize("how", ["empty", "copy", "cut-back", "other-round"])
def test_any_other_ledger_is_refused(rnd, how: str) -> None:  # type: ignore[no-untyped-def]
    """An empty ledger, a copy (a second file), the same file cut back, another round's ledger: all refused."""
    setup, linkage = rnd
    ledger = setup.root / "ledger.jsonl"
    for _ in range(2):
        assert release(setup, linkage, ledger, "--epsilon", "0.5").exit_code == 0
    target = setup.root / "other.jsonl"
    if how == "empty":
        target.write_bytes(b"")
    elif how == "copy":
        shutil.copyfile(ledger, target)
    elif how == "cut-back":
        target = ledger
        lines = ledger.read_bytes().splitlines(keepends=True)
        with open(ledger, "r+b") as fh:  # same inode, fewer entries
            fh.truncate(len(b"".join(lines[:2])))
    else:
        other = publish_linkage_round(setup.agreement, setup.key("coordinator"), _state(setup, seed=12),
                                      setup.root / "r2")
        assert release(setup, other, target, "--epsilon", "0.5").exit_code == 0
    before = target.read_bytes()
    r = release(setup, linkage, target, "--epsilon", "0.5")
    assert r.exit_code == LedgerError("x").exit_code, r.stderr
    assert target.read_bytes() == before


def test_a_symlink_takes_the_same_lock_as_the_ledger(rnd) -> None:  # type: ignore[no-untyped-def]
    """While a release holds the ledger through its name, the same file through a symlink must wait."""
    from coordinator.linkage.state import load_linkage_state
    from coordinator.release.binding import binding_for_linkage
    from coordinator.release.engine import STATE_FILE
    from pplink.ledger_writer import open_ledger

    setup, linkage = rnd
    ledger = setup.root / "ledger.jsonl"
    assert release(setup, linkage, ledger, "--epsilon", "0.5").exit_code == 0
    link = setup.root / "link.jsonl"
    link.symlink_to(ledger)
    assert release(setup, linkage, link, "--epsilon", "0.5").exit_code == 0  # the same file: accepted
    agreement = setup.agreement
    state = load_linkage_state(linkage / STATE_FILE, agreement.agreement_id)
    binding = binding_for_linkage(agreement, setup.key("coordinator"), state, linkage)
    with open_ledger(ledger, agreement, binding=binding):
        # Unbound (no round folder lock): only the file's own lock, by inode, can stop it.
        with pytest.raises(LedgerError, match="held the ledger lock"), open_ledger(link, agreement,
                                                                                 lock_timeout_s=0.1):
            pass
    with open_ledger(link, agreement, lock_timeout_s=0.1):  # free again once released
        pass


_RACE = """
import sys
from pathlib import Path
from coordinator.release.engine import release_from_files
from pplink.errors import PplinkError
from pplink.ledger import ReleaseQuery
agreement, ledger, linkage, key, go = sys.argv[1:6]
while not Path(go).exists():
    pass
try:
    release_from_files(Path(agreement), Path(ledger), Path(linkage), Path(key), ReleaseQuery(kind="overlap"),
                       epsilon=3.0)
    print("released")
except PplinkError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.slow
def test_concurrent_releases_through_a_symlink_never_both_land(rnd) -> None:  # type: ignore[no-untyped-def]
    """The issue's second reproduction: two processes, ε 3 each against a budget of 4, one via a symlink."""
    setup, linkage = rnd
    ledger = setup.root / "ledger.jsonl"
    link = setup.root / "link.jsonl"
    link.symlink_to(ledger)
    for attempt in range(3):
        for path in (ledger, linkage / PIN_FILE):
            path.unlink(missing_ok=True)
        go = setup.root / f"go{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(setup.agreement_path), str(path), str(linkage),
                                   str(setup.key_path("coordinator")), str(go)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path in (ledger, link)]
        go.touch()
        outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
        assert outcomes == ["BudgetExceededError", "released"], outcomes
        assert verify(setup, ledger).exit_code == 0


@pytest.mark.parametrize(("option", "value"), [("--epsilon", "1e308"), ("--rho", "1e300"), ("--epsilon", "1e-300"),
                                               ("--epsilon", "inf"), ("--epsilon", "-1")])
def test_extreme_epsilon_or_rho_is_a_release_error(tmp_path: Path, option: str, value: str) -> None:
    """No OpenDP overflow traceback and no saturated cells: a ReleaseError naming the range, nothing written."""
    setup = make_setup(tmp_path)  # zcdp, so --rho is allowed
    linkage = publish_linkage_round(setup.agreement, setup.key("coordinator"), _state(setup), tmp_path / "round")
    r = release(setup, linkage, setup.root / "l.jsonl", option, value)
    assert r.exit_code == ReleaseError("x").exit_code, r.stderr
    assert "Traceback" not in r.stderr and "Overflow" not in r.stderr
    assert "range" in r.stderr or "positive and finite" in r.stderr
    assert not (setup.root / "l.jsonl").exists()


@pytest.mark.slow
def test_a_real_match_round_names_its_ledger_and_releases_spend_only_it(setup: Setup, tmp_path: Path) -> None:
    """coordinator match -> the signed manifest names the genesis; release and audit --linkage agree on it."""
    from coordinator.linkage.match_round import run_match_round
    from nodes.encode import encode_file
    from pplink.lab.synth import generate_synth, write_synth
    from pplink.ledger import read_genesis

    write_synth(generate_synth(120, AGENCIES, seed=3), tmp_path / "records")
    encodings = [encode_file(setup.agreement, a, setup.secret, setup.key(a), tmp_path / "records" / f"{a}.csv",
                             tmp_path / "nodes" / f"{a}.enc", skip_invalid=True).output for a in AGENCIES]
    out = tmp_path / "linkage"
    run_match_round(setup.agreement, setup.key("coordinator"), encodings, out, workers=1)
    named = json.loads((out / "manifest.json").read_bytes())["ledger"]
    assert release(setup, out, None, "--epsilon", "0.5").exit_code == 0
    ledger = out / "coordinator" / "ledger.jsonl"
    genesis = read_genesis(ledger, setup.agreement)
    assert genesis is not None and genesis.round_id == named["round_id"] and genesis.parties == AGENCIES
    assert verify(setup, ledger, "--linkage", out).exit_code == 0
    # A ledger of the same agreement from a second round is not this round's.
    other = tmp_path / "linkage2"
    run_match_round(setup.agreement, setup.key("coordinator"), encodings, other, workers=1)
    assert release(setup, other, None, "--epsilon", "0.5").exit_code == 0
    r = verify(setup, other / "coordinator" / "ledger.jsonl", "--linkage", out, "--json")
    assert r.exit_code == LedgerError("x").exit_code and _kinds(r) == {"genesis"}
    assert release(setup, out, other / "coordinator" / "ledger.jsonl", "--epsilon", "0.5").exit_code != 0
