"""Incremental linkage: rounds of deltas give what a full run over the same rows gives, under stable pseudonyms."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.edges import band_keys
from coordinator.linkage.incremental import run_incremental_round
from coordinator.linkage.match import match_clks
from coordinator.linkage.resolve_clusters import greedy_groups
from coordinator.linkage.similarity import compute_dice
from coordinator.linkage.state_store import IncrementalState, derive_state_key, load_state, state_path
from pplink.deltafile import WithdrawReason, file_digest, write_delta
from pplink.encfile import write_encodings
from pplink.errors import DeltaChainError, MatchError, StateError
from tests.support import Setup, make_setup

Partition = set[frozenset[tuple[int, bytes]]]


@dataclass
class Agency:
    """One synthetic agency: its live tokens and encodings, and the last file of its chain."""

    name: str
    tokens: np.ndarray
    clks: np.ndarray
    last: Path
    sequence: int = 0
    sent: list[Path] = field(default_factory=list)


class World:
    """Synthetic people seen by several agencies with bit noise; agencies send full files and deltas."""

    def __init__(self, setup: Setup, root: Path, people: int = 250, seed: int = 3) -> None:
        self.setup, self.root = setup, root
        self.rng = np.random.default_rng(seed)
        self.people = self.rng.random((people, setup.agreement.identifiers.filter_bits)) < 0.3
        self.agencies: dict[str, Agency] = {}

    def records(self, n: int) -> np.ndarray:
        who = self.rng.choice(len(self.people), n, replace=False)
        return np.packbits(self.people[who] ^ (self.rng.random((n, self.people.shape[1])) < 0.03), axis=1)

    def full(self, name: str, n: int) -> Path:
        clks = self.records(n)
        tokens = self.rng.integers(0, 256, (n, 16), dtype=np.uint8)
        path = self.root / f"{name}.full-{self.rng.integers(1 << 30)}.enc"
        write_encodings(path, agreement=self.setup.agreement, party=name, tokens=tokens, clks=clks, attributes={},
                        key=self.setup.key(name))
        self.agencies[name] = Agency(name, tokens, clks, path, 0, [path])
        return path

    def delta(self, name: str, add: int, withdraw: int, *, commit: bool = True) -> Path:
        agency = self.agencies[name]
        out = self.rng.choice(len(agency.tokens), withdraw, replace=False)
        clks = self.records(add)
        tokens = self.rng.integers(0, 256, (add, 16), dtype=np.uint8)
        path = self.root / f"{name}.delta{agency.sequence + 1}-{self.rng.integers(1 << 30)}"
        write_delta(path, agreement=self.setup.agreement, party=name, previous=file_digest(agency.last.read_bytes()),
                    sequence=agency.sequence + 1, withdrawn=agency.tokens[out],
                    reasons=np.full(withdraw, WithdrawReason.WITHDRAWN, dtype=np.uint8), tokens=tokens, clks=clks,
                    attributes={}, key=self.setup.key(name))
        if commit:
            keep = np.ones(len(agency.tokens), dtype=bool)
            keep[out] = False
            agency.tokens = np.concatenate([agency.tokens[keep], tokens])
            agency.clks = np.concatenate([agency.clks[keep], clks])
            agency.last, agency.sequence = path, agency.sequence + 1
            agency.sent.append(path)
        return path

    def state(self) -> IncrementalState:
        agreement = self.setup.agreement
        key = derive_state_key(self.setup.key("coordinator"), agreement.agreement_id)
        return load_state(state_path(self.root / "state"), key, agreement.agreement_id)

    def run(self, paths: list[Path], **kwargs):  # type: ignore[no-untyped-def]
        out = self.root / f"round{len(list(self.root.glob('round*')))}"
        return run_incremental_round(self.setup.agreement, self.setup.key("coordinator"), paths, out,
                                     self.root / "state", workers=2, **kwargs)


def state_partition(state: IncrementalState) -> Partition:
    groups: dict[int, set[tuple[int, bytes]]] = {}
    for row in range(state.n_rows):
        groups.setdefault(int(state.entity[row]), set()).add((int(state.party[row]), state.tokens[row].tobytes()))
    return {frozenset(g) for g in groups.values()}


def full_run_partition(state: IncrementalState) -> Partition:
    """A from-scratch all-pairs match (anonlink's kernel and solver) over the state's live rows."""
    datasets = [state.clks[state.party == p] for p in range(len(state.parties))]
    tokens = [state.tokens[state.party == p] for p in range(len(state.parties))]
    result = match_clks(datasets, state.threshold, blocking=None, workers=1)
    groups: dict[int, set[tuple[int, bytes]]] = {}
    for p, labels in enumerate(result.labels):
        for row, label in enumerate(labels.tolist()):
            groups.setdefault(label, set()).add((p, tokens[p][row].tobytes()))
    return {frozenset(g) for g in groups.values()}


@pytest.fixture
def world(setup: Setup, tmp_path: Path) -> World:
    return World(setup, tmp_path)


def first_round(world: World, n: int = 160, **kwargs):  # type: ignore[no-untyped-def]
    paths = [world.full(name, n) for name in world.setup.agreement.agency_ids]
    return world.run(paths, **kwargs)


def test_rounds_of_deltas_equal_a_full_rerun(world: World) -> None:
    summary = first_round(world)
    assert summary.created and summary.change.splits == 0
    assert state_partition(world.state()) == full_run_partition(world.state())
    for _ in range(3):
        names = world.setup.agreement.agency_ids[:3]
        summary = world.run([world.delta(name, add=12, withdraw=8) for name in names])
        assert summary.removed == {"withdrawn": 24} and summary.added == 36
        state = world.state()
        # The invariant: incremental rounds cluster the live rows exactly as a full run would.
        assert state_partition(state) == full_run_partition(state)
        assert summary.comparisons < sum(len(a.tokens) for a in world.agencies.values()) * 36


def test_blocked_rounds_equal_a_full_run_with_the_frozen_bands(world: World) -> None:
    blocking = BlockingConfig(bits_per_band=10, bands=12)
    first_round(world, blocking=blocking)
    for _ in range(2):
        world.run([world.delta(name, add=15, withdraw=10) for name in world.setup.agreement.agency_ids])
    state = world.state()
    assert state.mode == "blocked"
    # Reference: every cross-agency pair sharing a band key, scored and solved from scratch.
    keys = band_keys(state.clks, state.positions)
    n = state.n_rows
    a, b = np.triu_indices(n, k=1)
    candidate = (state.party[a] != state.party[b]) & (keys[:, a] == keys[:, b]).any(axis=0)
    a, b = a[candidate], b[candidate]
    swap = state.party[a] > state.party[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    sim = compute_dice(state.clks, state.clks, a, b)
    keep = sim >= state.threshold
    rows, group = greedy_groups(state.party, a[keep], b[keep], sim[keep])
    label = np.arange(n)
    label[rows] = group
    reference: dict[int, set[tuple[int, bytes]]] = {}
    for row in range(n):
        reference.setdefault(int(label[row]), set()).add((int(state.party[row]), state.tokens[row].tobytes()))
    assert len(state.skip) == 0  # no frozen-out bucket at this size, so the reference needs none
    assert state_partition(state) == {frozenset(g) for g in reference.values()}
    assert len(state.edge_a) == int(keep.sum())


def read_map(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return {row["row_token"]: row["entity_id"] for row in csv.DictReader(fh)}


def test_pseudonyms_stay_with_unchanged_clusters(world: World) -> None:
    first = first_round(world)
    before = {name: read_map(first.maps[name]) for name in first.maps}
    second = world.run([world.delta("school", add=10, withdraw=0)])
    assert second.change.rows_resolved < sum(second.records.values()) / 2  # only touched components re-solved
    moved = 0
    for name, old in before.items():
        new = read_map(second.maps[name])
        assert old.keys() <= new.keys()
        moved += sum(new[token] != entity for token, entity in old.items())
    # Only rows whose cluster a new row joined or reshaped may change pseudonym, and they are counted.
    assert moved == second.change.moved_rows
    assert moved <= 2 * second.added


def test_withdrawal_removes_the_row_and_reclusters(world: World) -> None:
    first_round(world)
    state = world.state()
    linked = np.flatnonzero(np.bincount(state.entity)[state.entity] == 2)
    school = world.setup.agreement.agency_ids.index("school")
    row = int(next(r for r in linked if state.party[r] == school))
    partner = int(next(r for r in linked if r != row and state.entity[r] == state.entity[row]))
    partner_token = state.tokens[partner].tobytes().hex()
    agency = world.agencies["school"]
    target = int(np.flatnonzero((agency.tokens == state.tokens[row]).all(axis=1))[0])
    path = world.root / "school.delta1"
    write_delta(path, agreement=world.setup.agreement, party="school", previous=file_digest(agency.last.read_bytes()),
                sequence=1, withdrawn=agency.tokens[[target]], reasons=np.array([1], dtype=np.uint8),
                tokens=np.zeros((0, 16), dtype=np.uint8), clks=np.zeros((0, 128), dtype=np.uint8), attributes={},
                key=world.setup.key("school"))
    before = read_map(world.root / "round0" / f"{world.setup.agreement.agency_ids[state.party[partner]]}.map.csv")
    summary = world.run([path])
    assert summary.removed == {"withdrawn": 1}
    after = world.state()
    assert not (after.tokens == state.tokens[row]).all(axis=1).any()  # gone from the state, encoding included
    assert not any(bytes(c) == state.clks[row].tobytes() for c in after.clks)
    partner_map = read_map(summary.maps[world.setup.agreement.agency_ids[state.party[partner]]])
    assert partner_map[partner_token] == before[partner_token]  # the partner keeps its pseudonym
    assert state_partition(after) == full_run_partition(after)
    with open(summary.out_dir / "school.withdrawn.csv") as fh:
        assert list(csv.reader(fh))[1] == [state.tokens[row].tobytes().hex(), "withdrawn"]


def test_retention_expires_rows_of_agencies_past_linkage_days(world: World) -> None:
    first_round(world)
    later = datetime.now(UTC) + timedelta(days=world.setup.agreement.retention.linkage_days)
    # school's delta is dated today, so its rows are within retention as of that date; the
    # agencies that sent nothing are judged at the round's date, a retention period later.
    summary = world.run([world.delta("school", add=5, withdraw=0)], now=later)
    assert summary.removed == {"retention": 3 * 160}
    assert set(summary.records.values()) == {0, 165} and summary.records["school"] == 165
    state = world.state()
    # Only one agency is left, so nobody is linked and every edge went with the expired rows.
    assert len(state.edge_a) == 0 and len(state.pseudonyms) == state.n_rows == 165


def test_pseudonyms_rotate_when_the_agreement_says(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, edit=lambda text: text.replace("[retention]", "[retention]\npseudonym_days = 30"))
    world = World(setup, tmp_path)
    first = first_round(world)
    before = {name: read_map(first.maps[name]) for name in first.maps}
    same = world.run([world.delta("school", add=0, withdraw=0)], now=datetime.now(UTC) + timedelta(days=29))
    assert not same.rotated
    rotated = world.run([world.delta("school", add=0, withdraw=0)], now=datetime.now(UTC) + timedelta(days=30))
    assert rotated.rotated
    for name, old in before.items():
        new = read_map(rotated.maps[name])
        assert not set(new.values()) & set(old.values())  # every pseudonym replaced
        # ... and the clusters are the same ones: a bijection between old and new pseudonyms.
        assert len({(old[t], new[t]) for t in old}) == len(set(old.values()))


def test_chained_deltas_out_of_order_replayed_or_forked_are_refused(world: World) -> None:
    first_round(world)
    one = world.delta("school", add=3, withdraw=1)
    two = world.delta("school", add=3, withdraw=1)
    with pytest.raises(DeltaChainError, match="out of order|never applied"):
        world.run([two])
    world.run([one])
    with pytest.raises(DeltaChainError, match="already applied"):
        world.run([one])
    agency = world.agencies["school"]
    agency.last, agency.sequence = agency.sent[0], 0  # a fork: another delta on the full file
    fork = world.delta("school", add=2, withdraw=0, commit=False)
    with pytest.raises(DeltaChainError, match="out of order"):
        world.run([fork])
    world.run([two])  # the real chain still applies


def test_a_delta_cannot_start_a_state(world: World) -> None:
    paths = [world.full(name, 20) for name in world.setup.agreement.agency_ids]
    with pytest.raises(DeltaChainError, match="full encodings"):
        world.run([*paths[:3], world.delta(world.setup.agreement.agency_ids[3], add=1, withdraw=0)])


def test_state_is_sealed_under_the_coordinator_key(world: World) -> None:
    first_round(world)
    path = state_path(world.root / "state")
    raw = path.read_bytes()
    state = world.state()
    assert path.stat().st_mode & 0o077 == 0
    assert state.clks[0].tobytes() not in raw and state.tokens[0].tobytes() not in raw
    agreement = world.setup.agreement
    other = derive_state_key(world.setup.key("school"), agreement.agreement_id)
    with pytest.raises(StateError, match="authentication"):
        load_state(path, other, agreement.agreement_id)
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    for position in (len(raw) // 2, len(raw) - 1, 20):
        tampered = bytearray(raw)
        tampered[position] ^= 1
        path.write_bytes(bytes(tampered))
        with pytest.raises(StateError):
            load_state(path, key, agreement.agreement_id)
    path.write_bytes(raw[:-100])
    with pytest.raises(StateError):
        load_state(path, key, agreement.agreement_id)
    path.write_bytes(raw)
    assert load_state(path, key, agreement.agreement_id).n_rows == state.n_rows


def test_an_agency_may_start_over_with_a_full_file(world: World) -> None:
    first_round(world)
    summary = world.run([world.full("school", 100)])
    assert summary.removed == {"replaced": 160} and summary.records["school"] == 100
    state = world.state()
    assert state_partition(state) == full_run_partition(state)
    world.run([world.delta("school", add=5, withdraw=5)])  # its chain continues from the new full file


def test_one_round_at_a_time_on_a_state(world: World) -> None:
    import fcntl

    first_round(world)
    with open(world.root / "state" / "linkage.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(StateError, match="another round"):
            world.run([world.delta("school", add=1, withdraw=0)])


def test_the_first_round_needs_every_agency_as_a_full_round_does(world: World) -> None:
    paths = [world.full(name, 20) for name in world.setup.agreement.agency_ids[:3]]
    with pytest.raises(MatchError, match="no encodings from police"):
        world.run(paths)


@pytest.mark.slow
def test_incremental_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    """Invariant: benchmarks/incremental.py runs end to end and reports an incremental round that compares
    fewer pairs than the full re-match, with the same records linked as well (equal F1 within 1%)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "incremental.py"
    done = subprocess.run([sys.executable, str(script), "--agencies", "3", "--records", "600", "--repeat", "1",
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, check=True)
    row = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert row["incremental_added"] == 3 * 6 and row["incremental_removed"] == {"withdrawn": 3 * 1}
    assert 0 < row["incremental_comparisons"] < row["full_rematch_comparisons"]
    assert abs(row["f1_incremental"] - row["f1_full_rematch"]) < 0.01


def test_incremental_benchmark_round_on_a_state_built_from_the_truth(tmp_path: Path) -> None:
    """Invariant: with --state-from truth the benchmark builds the starting state without a first round, and its
    round applies every delta to it; the round withdraws rows, so it saves the state whole (erasure is not deferred),
    while the same round without withdrawals (the timed target) appends a delta segment. With --cold each round is
    also timed with the state dropped from the page cache first (never more of it cached than in the warm run)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "incremental.py"
    rows = []
    for cold in ([], ["--cold"]):  # the second run reuses the state the first built and kept in --work-dir
        done = subprocess.run([sys.executable, str(script), "--agencies", "3", "--records", "600", "--repeat", "1",
                               "--state-from", "truth", "--no-peer", "--cache-dir", str(tmp_path),
                               "--work-dir", str(tmp_path / "work"), *cold],
                              capture_output=True, text=True, timeout=600, check=True)
        rows.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{"))))
    row = rows[0]
    assert row["incremental_added"] == 3 * 6 and row["incremental_removed"] == {"withdrawn": 3 * 1}
    assert row["saved_as"] == "whole" and row["saved_bytes"] > 0
    assert row["incremental_saved_as"] == "delta" and 0 < row["incremental_saved_bytes"] < row["saved_bytes"]
    assert row["full_rematch_seconds"] is None and row["f1_incremental"] > 0.5
    assert not row["state_reused"] and rows[1]["state_reused"]
    same = ("incremental_added", "incremental_removed", "incremental_comparisons", "f1_incremental", "moved_rows")
    assert {k: rows[1][k] for k in same} == {k: row[k] for k in same}
    assert "incremental_seconds_cold" not in row and "cold" not in row["state_cached_share"]
    assert rows[1]["incremental_seconds_cold"] > 0 and rows[1]["withdraw_round_seconds_cold"] > 0
    shares = rows[1]["state_cached_share"]
    assert len(shares["cold"]) == len(shares["warm"]) == 1
    assert all(c is None or c <= w for c, w in zip(shares["cold"], shares["warm"], strict=True))


def test_a_new_token_repeating_a_live_one_of_its_agency_is_refused(world: World) -> None:
    """Invariant: a round refuses new rows whose token repeats one of the same agency's live rows or another new
    row of the same file, and accepts a token that only another agency holds (tokens are per agency)."""
    first_round(world)
    agreement = world.setup.agreement
    school, other = world.agencies["school"], next(a for n, a in world.agencies.items() if n != "school")

    def delta_with(tokens: np.ndarray, tag: str) -> Path:
        path = world.root / f"school.{tag}.delta"
        write_delta(path, agreement=agreement, party="school", previous=file_digest(school.last.read_bytes()),
                    sequence=school.sequence + 1, withdrawn=np.zeros((0, 16), dtype=np.uint8),
                    reasons=np.zeros(0, dtype=np.uint8), tokens=tokens, clks=world.records(len(tokens)),
                    attributes={}, key=world.setup.key("school"))
        return path

    fresh = world.rng.integers(0, 256, (2, 16), dtype=np.uint8)
    for tokens, tag in ((np.stack([fresh[0], school.tokens[5]]), "live"), (np.stack([fresh[0], fresh[0]]), "twice")):
        with pytest.raises(MatchError, match="repeats a row token"):
            world.run([delta_with(tokens, tag)])
    assert world.run([delta_with(np.stack([fresh[1], other.tokens[0]]), "other")]).added == 2
