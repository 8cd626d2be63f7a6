"""The one match round function, driven through a fake in-memory MatchNodes (no files, no Flower).

Each test plays agencies that are offline, fail a step or fail to roll back, and checks what the
round does about it: who is asked what, what is kept, what the run record and the error say.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.linkage.round_nodes import PartyMap
from coordinator.linkage.round_runner import run_round
from coordinator.run_records import RunPhase, RunStatus
from nodes.encode import encode_file
from pplink.encfile import EncodingsFile, read_encodings
from pplink.errors import TransportError
from pplink.lab.synth import generate_synth, write_synth
from tests.support import AGENCIES, Setup, make_setup


@dataclass
class Deployment:
    setup: Setup
    files: dict[str, EncodingsFile]


def _deployment(root: Path, *, allow_missing: bool) -> Deployment:
    edit = (lambda t: t.replace("allow_missing_parties = false", "allow_missing_parties = true")) \
        if allow_missing else None
    setup = make_setup(root, edit=edit)
    write_synth(generate_synth(120, AGENCIES, seed=11), root / "records")
    files = {}
    for a in AGENCIES:
        out = encode_file(setup.agreement, a, setup.secret, setup.key(a), root / "records" / f"{a}.csv",
                          root / "enc" / f"{a}.enc", skip_invalid=True).output
        files[a] = read_encodings(out, setup.agreement)
    return Deployment(setup, files)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """An agreement that needs every agency in a round."""
    return _deployment(tmp_path_factory.mktemp("strict"), allow_missing=False)


@pytest.fixture(scope="module")
def lenient(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """An agreement with linkage.allow_missing_parties = true."""
    return _deployment(tmp_path_factory.mktemp("lenient"), allow_missing=True)


class FakeNodes:
    """Agencies held in memory; each can be offline or fail a step. Records every call."""

    def __init__(self, files: Mapping[str, EncodingsFile], *, offline: Sequence[str] = (),
                 fail_encode: Sequence[str] = (), fail_resolve: Sequence[str] = (),
                 fail_rollback: Sequence[str] = ()) -> None:
        self.files = dict(files)
        self.offline, self.fail_encode = set(offline), set(fail_encode)
        self.fail_resolve, self.fail_rollback = set(fail_resolve), set(fail_rollback)
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        #: What each agency holds as its current result: the map of the last round it resolved.
        self.results: dict[str, PartyMap] = {}
        self.previous: dict[str, PartyMap | None] = {}

    def connect(self, agencies: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        self.calls.append(("connect", tuple(agencies)))
        return tuple(a for a in agencies if a not in self.offline), {a: "offline" for a in agencies
                                                                       if a in self.offline}

    def encode(self, parties: Sequence[str]) -> tuple[dict[str, EncodingsFile], dict[str, str]]:
        self.calls.append(("encode", tuple(parties)))
        return ({p: self.files[p] for p in parties if p not in self.fail_encode},
                {p: "PPL301 at the node during encode" for p in parties if p in self.fail_encode})

    def resolve(self, maps: Mapping[str, PartyMap]) -> tuple[tuple[str, ...], dict[str, str]]:
        self.calls.append(("resolve", tuple(maps)))
        done = []
        for party, party_map in maps.items():
            if party not in self.fail_resolve:
                self.previous[party] = self.results.get(party)
                self.results[party] = party_map
                done.append(party)
        return tuple(done), {p: "went offline during resolve" for p in maps if p in self.fail_resolve}

    def rollback(self, parties: Sequence[str]) -> dict[str, str]:
        self.calls.append(("rollback", tuple(parties)))
        for party in parties:
            if party not in self.fail_rollback:
                previous = self.previous.pop(party)
                if previous is None:
                    self.results.pop(party)
                else:
                    self.results[party] = previous
        return {p: "no reply" for p in parties if p in self.fail_rollback}


@dataclass
class Run:
    out: Path
    staging: Path
    records: list[dict[str, object]]
    log: list[str]


def _run(d: Deployment, nodes: FakeNodes, root: Path, *, staged: bool = True) -> Run:
    run = Run(root / "rounds" / "r1", root / "rounds" / "r1.partial", [], [])
    run_round(d.setup.agreement, d.setup.key("coordinator"), nodes, run.out,
              staging=run.staging if staged else None, workers=1,
              record=lambda **changes: run.records.append(changes), log=run.log.append)
    return run


def _failed(d: Deployment, nodes: FakeNodes, root: Path, match: str) -> Run:
    run = Run(root / "rounds" / "r1", root / "rounds" / "r1.partial", [], [])
    with pytest.raises(TransportError, match=match):
        run_round(d.setup.agreement, d.setup.key("coordinator"), nodes, run.out, staging=run.staging, workers=1,
                  record=lambda **changes: run.records.append(changes), log=run.log.append)
    # Invariant of every failed staged round: nothing of it is kept, and the record says it failed.
    assert not run.out.exists() and not run.staging.exists()
    assert run.records[-1]["status"] is RunStatus.FAILED
    return run


def test_every_agency_gets_exactly_its_own_published_map(strict: Deployment, tmp_path: Path) -> None:
    """Invariant: each agency is sent one map, its own, with a line for every row it sent, and the map
    it is sent is the one published in the kept round folder (same tokens, same pseudonyms)."""
    nodes = FakeNodes(strict.files)
    run = _run(strict, nodes, tmp_path)
    assert [step for step, _ in nodes.calls] == ["connect", "encode", "resolve"]
    assert set(nodes.results) == set(AGENCIES) and not run.staging.exists()
    for party, party_map in nodes.results.items():
        assert (party_map.tokens == strict.files[party].tokens).all()
        with open(run.out / f"{party}.map.csv", encoding="utf-8") as fh:
            published = [(r["row_token"], r["entity_id"]) for r in csv.DictReader(fh)]
        sent = list(zip(party_map.tokens.tobytes().hex(" ", 16).split(), party_map.entities.tobytes().hex(" ", 16)
                        .split(), strict=True))
        assert published == sent and len(sent) == party_map.rows == strict.files[party].header.n_records
    assert run.records[-1]["status"] is RunStatus.FINISHED and run.records[-1]["output_dir"] == str(run.out)
    assert [r["phase"] for r in run.records] == [RunPhase.ENCODE, RunPhase.MATCH, RunPhase.RESOLVE, RunPhase.DONE]


def test_an_agency_that_fails_encode_fails_the_round_before_any_map_is_sent(strict: Deployment,
                                                                            tmp_path: Path) -> None:
    nodes = FakeNodes(strict.files, fail_encode=["school"])
    run = _failed(strict, nodes, tmp_path, match=r"at query\.encode \(school\)")
    assert [step for step, _ in nodes.calls] == ["connect", "encode"]
    assert set(run.records[-1]["problems"]) == {"school"}  # type: ignore[arg-type]


def test_an_agency_that_fails_encode_is_left_out_when_the_agreement_allows_it(lenient: Deployment,
                                                                             tmp_path: Path) -> None:
    """Invariant: the round goes on without it, names it missing (record and signed manifest) and
    sends it nothing more."""
    nodes = FakeNodes(lenient.files, fail_encode=["school"])
    run = _run(lenient, nodes, tmp_path)
    others = tuple(a for a in AGENCIES if a != "school")
    assert nodes.calls[-1] == ("resolve", others) and set(nodes.results) == set(others)
    manifest = json.loads((run.out / "manifest.json").read_text())
    assert manifest["missing"] == ["school"] and sorted(manifest["maps"]) == sorted(others)
    assert run.records[1]["missing"] == ("school",) and run.records[-1]["status"] is RunStatus.FINISHED


def test_an_agency_that_fails_resolve_has_the_others_roll_back(strict: Deployment, tmp_path: Path) -> None:
    """Invariant: after a failed resolve every agency holds its previous result again (here: none),
    exactly the agencies that had resolved are asked to roll back, and nothing is kept."""
    nodes = FakeNodes(strict.files, fail_resolve=["health"])
    run = _failed(strict, nodes, tmp_path, match=r"at query\.resolve \(health\)")
    others = tuple(sorted(a for a in AGENCIES if a != "health"))
    assert nodes.calls[-1] == ("rollback", others)
    assert nodes.results == {}
    assert run.records[-2]["phase"] is RunPhase.ROLLBACK
    assert "rolling back" in " ".join(run.log)


def test_a_failed_rollback_is_named_in_the_record(strict: Deployment, tmp_path: Path) -> None:
    nodes = FakeNodes(strict.files, fail_resolve=["health"], fail_rollback=["police"])
    run = _failed(strict, nodes, tmp_path, match="health")
    problems = run.records[-1]["problems"]
    assert isinstance(problems, dict) and "may still be in place" in problems["police"]
    assert nodes.results.keys() == {"police"}


def test_a_missing_agency_fails_the_round_before_anything_is_asked(strict: Deployment, tmp_path: Path) -> None:
    nodes = FakeNodes(strict.files, offline=["police"])
    _failed(strict, nodes, tmp_path, match="police: offline; the agreement does not allow a round without every")
    assert [step for step, _ in nodes.calls] == ["connect"]


def test_a_missing_agency_is_left_out_when_the_agreement_allows_it(lenient: Deployment, tmp_path: Path) -> None:
    nodes = FakeNodes(lenient.files, offline=["police"])
    run = _run(lenient, nodes, tmp_path)
    others = tuple(a for a in AGENCIES if a != "police")
    assert nodes.calls[1] == ("encode", others) and set(nodes.results) == set(others)
    assert run.records[-1]["problems"] == {"police": "offline"}
    assert json.loads((run.out / "manifest.json").read_text())["missing"] == ["police"]


def test_fewer_than_two_agencies_fail_the_round_even_when_missing_ones_are_allowed(lenient: Deployment,
                                                                                  tmp_path: Path) -> None:
    nodes = FakeNodes(lenient.files, offline=["police", "health"], fail_encode=["school"])
    _failed(lenient, nodes, tmp_path, match="fewer than two agencies remain")
    assert [step for step, _ in nodes.calls] == ["connect", "encode"]


def test_an_unstaged_round_is_published_where_asked(strict: Deployment, tmp_path: Path) -> None:
    """Invariant: without staging (the file-based path) the round is published to its folder at once."""
    nodes = FakeNodes(strict.files)
    run = _run(strict, nodes, tmp_path, staged=False)
    assert (run.out / "manifest.json").is_file() and not run.staging.exists()
