"""Kill encode, match, release and resolve at every write point: a later step completes or refuses.

Each step runs in a forked child whose ``os.replace`` (every rename of every file pplink writes
goes through :mod:`pplink.atomic`) or ``os.write`` (the ledger's append) ends the process with
``os._exit`` at the n-th call: no ``finally`` block, no clean-up, as with SIGKILL. This is repeated
for n = 1, 2, … until the step finishes before reaching n, each time from the same starting files.

The invariant, checked after every kill: nothing half-written is ever accepted. Every agency's
``node resolve`` either refuses with a pplink error, or succeeds with a map of the one round
whose signed manifest is in place, and then all agencies succeed together, with shared entity
ids across agencies (the reproduction of issue #14: a crash mid-publish once left two agencies
with new maps and two with old ones, and both were accepted).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.linkage.match_round import run_match_round
from coordinator.release.engine import release_from_files
from nodes.encode import encode_file
from nodes.resolve import resolve_files
from pplink.entity_files import read_entities
from pplink.errors import PplinkError
from pplink.lab.synth import generate_synth, write_synth
from pplink.ledger import QueryKind, ReleaseQuery, read_ledger
from tests.support import Setup, make_setup

pytestmark = pytest.mark.slow

AGENCIES = ("social_care", "school", "health")
KILLED = 77


def _killed_at(n: int, call: str, step: Callable[[], object]) -> bool:
    """Run ``step`` in a child that dies at the n-th ``os.<call>``; True if it was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to pytest
        real = getattr(os, call)
        count = [0]

        def dying(*args: object) -> object:
            count[0] += 1
            if count[0] == n:
                if call == "write":  # a torn write: half the bytes reach the file, then the process dies
                    fd, data = args
                    real(fd, bytes(data)[: max(1, len(data) // 2)])  # type: ignore[arg-type]
                os._exit(KILLED)
            return real(*args)

        setattr(os, call, dying)
        try:
            step()
        except BaseException:  # noqa: BLE001 - any failure is reported by status, not raised in the fork
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), f"the step failed on its own (exit {code}) at write point {n}"
    return code == KILLED


def _each_write_point(call: str, reset: Callable[[], None], step: Callable[[], object],
                      check: Callable[[int], None]) -> int:
    """Kill ``step`` at write point 1, 2, … (resetting first each time) and check after each."""
    n = 0
    while True:
        n += 1
        assert n < 200, "the step never finished"
        reset()
        if not _killed_at(n, call, step):
            return n - 1
        check(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Setup, Path]:
    root = tmp_path_factory.mktemp("faults")
    setup = make_setup(root, agencies=AGENCIES)
    write_synth(generate_synth(150, AGENCIES, seed=3), root / "records")
    return setup, root


def _encode(setup: Setup, root: Path, agency: str) -> Path:
    return encode_file(setup.agreement, agency, setup.secret, setup.key(agency), root / "records" / f"{agency}.csv",
                       root / "nodes" / f"{agency}.enc", skip_invalid=True, workers=1).output


def _match(setup: Setup, root: Path) -> None:
    run_match_round(setup.agreement, setup.key("coordinator"), [root / "nodes" / f"{a}.enc" for a in AGENCIES],
                    root / "linkage", workers=1, blocking=None)


def _resolve_all(setup: Setup, root: Path) -> dict[str, str | Exception]:
    """Each agency's resolve: the round id it accepted, or the pplink error it refused with."""
    out: dict[str, str | Exception] = {}
    for agency in AGENCIES:
        try:
            out[agency] = resolve_files(setup.agreement, agency, root / "nodes" / f"{agency}.tokens",
                                        root / "linkage" / f"{agency}.map.csv",
                                        root / "nodes" / f"{agency}.entities.csv").round_id
        except PplinkError as err:
            out[agency] = err
    return out


def _assert_all_or_nothing(setup: Setup, root: Path, where: str) -> bool:
    """Resolve at every agency: all refuse, or all accept one round with links across agencies."""
    outcomes = _resolve_all(setup, root)
    accepted = {a: r for a, r in outcomes.items() if isinstance(r, str)}
    if not accepted:
        return False
    assert len(accepted) == len(AGENCIES) and len(set(accepted.values())) == 1, f"{where}: mixed round {outcomes}"
    entities = [set(read_entities(root / "nodes" / f"{a}.entities.csv").values()) for a in AGENCIES]
    assert entities[0] & entities[1], f"{where}: no entity shared across agencies"
    return True


def _snapshot(root: Path, name: str) -> Callable[[], None]:
    """Save ``nodes`` and ``linkage`` now; return a function that puts them back."""
    saved = root / name
    shutil.rmtree(saved, ignore_errors=True)
    for part in ("nodes", "linkage"):
        if (root / part).exists():
            shutil.copytree(root / part, saved / part)

    def reset() -> None:
        for part in ("nodes", "linkage"):
            shutil.rmtree(root / part, ignore_errors=True)
            if (saved / part).exists():
                shutil.copytree(saved / part, root / part)

    return reset


def test_match_killed_at_every_write_point(world: tuple[Setup, Path]) -> None:
    """Re-running the match on the same .enc files (old maps still fit the tokens) is the hard case."""
    setup, root = world
    for agency in AGENCIES:
        _encode(setup, root, agency)
    _match(setup, root)
    assert _assert_all_or_nothing(setup, root, "the first round")
    reset = _snapshot(root, "before-match")
    refused = []

    def check(n: int) -> None:
        if not _assert_all_or_nothing(setup, root, f"match killed at write {n}"):
            refused.append(n)
        _match(setup, root)  # the later step: a fresh match completes and is accepted
        assert _assert_all_or_nothing(setup, root, f"match re-run after write {n}")
        assert not list((root / "linkage").glob(".*.partial")), "the re-run left temporary files behind"

    points = _each_write_point("replace", reset, lambda: _match(setup, root), check)
    assert points >= 2 * len(AGENCIES) + 4  # maps, state, report: staged then moved; signature; manifest
    assert refused, "no kill fell inside publishing"


def test_encode_killed_at_every_write_point(world: tuple[Setup, Path]) -> None:
    """A kill between the tokens and the .enc: the round made from the old .enc is refused at resolve."""
    setup, root = world
    for agency in AGENCIES:
        _encode(setup, root, agency)
    _match(setup, root)
    reset = _snapshot(root, "before-encode")
    outcomes = []

    def check(n: int) -> None:
        _match(setup, root)  # the coordinator matches whatever .enc files are there
        resolved = _resolve_all(setup, root)
        assert len({r for r in resolved.values() if isinstance(r, str)}) == 1  # the others accept that round
        outcomes.append(isinstance(resolved["school"], str))
        _encode(setup, root, "school")  # the later step: encoding again, then a round, completes
        assert not list((root / "nodes").glob(".*.partial")), "the later encode left temporary files behind"
        _match(setup, root)
        assert _assert_all_or_nothing(setup, root, f"encode re-run after write {n}")

    points = _each_write_point("replace", reset, lambda: _encode(setup, root, "school"), check)
    assert points == 2  # tokens, then the .enc
    assert outcomes == [True, False]  # killed before any write: the old pair; after the tokens: refused


def test_resolve_killed_at_every_write_point(world: tuple[Setup, Path]) -> None:
    setup, root = world
    for agency in AGENCIES:
        _encode(setup, root, agency)
    _match(setup, root)
    target = root / "nodes" / "school.entities.csv"
    target.write_text("record_id,entity_id\n")  # the previous result: a killed resolve must leave it as it was
    reset = _snapshot(root, "before-resolve")

    def step() -> None:
        resolve_files(setup.agreement, "school", root / "nodes" / "school.tokens", root / "linkage" / "school.map.csv",
                      target)

    def check(n: int) -> None:
        assert target.read_text() == "record_id,entity_id\n", "a killed resolve changed the previous result"
        assert list(target.parent.glob(".school.entities.csv.*.partial")), "the kill left no temporary file"
        step()
        assert not list(target.parent.glob(".*.partial")), "the later resolve left the temporary file behind"
        assert len(read_entities(target)) == len((root / "nodes" / "school.tokens").read_text().splitlines()) - 1

    assert _each_write_point("replace", reset, step, check) == 1


def test_release_killed_at_every_write_point(world: tuple[Setup, Path]) -> None:
    """A torn ledger append is refused by the next release; a complete one counts; the round is checked."""
    setup, root = world
    for agency in AGENCIES:
        _encode(setup, root, agency)
    _match(setup, root)
    ledger = root / "ledger.jsonl"
    query = ReleaseQuery(kind=QueryKind.OVERLAP)

    def step() -> None:
        release_from_files(setup.agreement_path, ledger, root / "linkage", setup.key_path("coordinator"), query,
                           epsilon=0.1)

    def reset() -> None:
        ledger.unlink(missing_ok=True)
        # A fresh ledger for the round: its pin (which file the round's releases went to) goes too.
        (root / "linkage" / "coordinator" / "ledger.pin.json").unlink(missing_ok=True)
        step()  # one release already on the ledger

    torn = []

    def check(n: int) -> None:
        try:
            entries = read_ledger(ledger, setup.agreement)
        except PplinkError:
            torn.append(n)
            with pytest.raises(PplinkError, match="torn"):
                step()  # the later release refuses a torn ledger rather than charging on top of it
            return
        assert len(entries) in (1, 2)
        step()
        assert len(read_ledger(ledger, setup.agreement)) == len(entries) + 1

    assert _each_write_point("write", reset, step, check) >= 1
    assert torn, "no kill tore the ledger's append"


def test_release_refuses_a_round_that_is_not_whole(world: tuple[Setup, Path]) -> None:
    setup, root = world
    for agency in AGENCIES:
        _encode(setup, root, agency)
    _match(setup, root)
    (root / "linkage" / "manifest.json").unlink()
    with pytest.raises(PplinkError, match="incomplete"):
        release_from_files(setup.agreement_path, root / "ledger2.jsonl", root / "linkage",
                           setup.key_path("coordinator"), ReleaseQuery(kind=QueryKind.OVERLAP), epsilon=0.1)
