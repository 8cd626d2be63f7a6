"""The linkage state on disk as a base and delta segments: loading replays exactly the state a round left."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage import state_segments
from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.incremental import apply_round
from coordinator.linkage.state_segments import COMPACT_AFTER_DELTAS, append_delta, delta_paths
from coordinator.linkage.state_store import IncrementalState, derive_state_key, load_state, save_state, state_path
from coordinator.linkage.uploads import read_upload
from pplink.errors import StateError
from tests.coordinator.test_incremental import World, first_round


def _same(a: IncrementalState, b: IncrementalState) -> None:
    assert a.meta() == b.meta()
    for name in ("party", "tokens", "clks", "keys", "added_day", "entity", "pseudonyms", "edge_a", "edge_b",
                 "edge_sim", "positions", "skip"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.attr_codes.keys() == b.attr_codes.keys()
    for party, codes in a.attr_codes.items():
        assert codes.keys() == b.attr_codes[party].keys()
        assert all(np.array_equal(v, b.attr_codes[party][c]) for c, v in codes.items())


@pytest.fixture
def world(setup, tmp_path: Path) -> World:  # type: ignore[no-untyped-def]
    return World(setup, tmp_path)


@pytest.mark.parametrize("blocking", [None, BlockingConfig(bits_per_band=10, bands=12)])
def test_loading_base_and_deltas_gives_the_state_each_round_left(world: World, blocking) -> None:  # type: ignore[no-untyped-def]
    """Invariant: after any sequence of rounds saved as deltas, loading equals the state in memory."""
    agreement = world.setup.agreement
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    path = state_path(world.root / "state")
    first_round(world, blocking=blocking)
    assert load_state(path, key, agreement.agreement_id).mode == ("all-pairs" if blocking is None else "blocked")
    names = agreement.agency_ids
    rounds = [[world.delta(names[0], add=6, withdraw=4), world.delta(names[1], add=0, withdraw=3)],
              [world.full(names[2], 50)],  # an agency starting over: all its rows leave, a new set arrives
              [world.delta(names[3], add=9, withdraw=0)],
              [world.delta(name, add=2, withdraw=2) for name in names]]
    for paths in rounds:
        state = load_state(path, key, agreement.agreement_id)
        before = len(delta_paths(path))
        state, _, _ = apply_round(agreement, state, [read_upload(p, agreement) for p in paths])
        append_delta(path, state, key)
        assert len(delta_paths(path)) == before + 1
        _same(load_state(path, key, agreement.agreement_id), state)
    # Compaction writes the same state whole and removes the deltas.
    state = load_state(path, key, agreement.agreement_id)
    save_state(path, state, key)
    assert delta_paths(path) == []
    _same(load_state(path, key, agreement.agreement_id), state)


def test_a_round_saves_a_delta_and_compacts_after_the_limit(world: World) -> None:
    first = first_round(world)
    assert first.saved_as == "whole"
    path = state_path(world.root / "state")
    sizes = []
    for i in range(1, COMPACT_AFTER_DELTAS + 1):
        summary = world.run([world.delta("school", add=1, withdraw=0)])
        if i < COMPACT_AFTER_DELTAS:
            assert summary.saved_as == "delta" and len(delta_paths(path)) == i
            sizes.append(summary.saved_bytes)
        else:  # the round that would write the limit's delta writes the state whole instead
            assert summary.saved_as == "whole" and delta_paths(path) == []
    assert max(sizes) < path.stat().st_size / 2  # a delta holds what changed, not the state
    assert world.run([world.delta("school", add=1, withdraw=0)], compact=True).saved_as == "whole"


def test_a_round_that_removes_rows_writes_the_state_whole(world: World) -> None:
    """Invariant: a withdrawn row's encoding is on disk in no base or delta once its round ends."""
    first_round(world)
    path = state_path(world.root / "state")
    assert world.run([world.delta("school", add=2, withdraw=0)]).saved_as == "delta"
    summary = world.run([world.delta("school", add=1, withdraw=1)])
    assert summary.saved_as == "whole" and sum(summary.removed.values()) == 1 and delta_paths(path) == []


def test_an_edited_reordered_or_missing_delta_is_refused(world: World) -> None:
    agreement = world.setup.agreement
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    path = state_path(world.root / "state")
    first_round(world)
    for _ in range(3):
        world.run([world.delta("school", add=2, withdraw=0)])
    deltas = [p for _, p in delta_paths(path)]
    raw = [p.read_bytes() for p in deltas]
    expected = load_state(path, key, agreement.agreement_id)
    for position in (10, len(raw[1]) // 2, len(raw[1]) - 1):
        tampered = bytearray(raw[1])
        tampered[position] ^= 1
        deltas[1].write_bytes(bytes(tampered))
        with pytest.raises(StateError):
            load_state(path, key, agreement.agreement_id)
    deltas[0].write_bytes(raw[1])  # reordered
    deltas[1].write_bytes(raw[0])
    with pytest.raises(StateError, match="fails authentication"):
        load_state(path, key, agreement.agreement_id)
    deltas[1].write_bytes(raw[1])
    deltas[0].unlink()  # dropped from the middle
    with pytest.raises(StateError, match="fails authentication"):
        load_state(path, key, agreement.agreement_id)
    deltas[0].write_bytes(raw[0])
    other = derive_state_key(world.setup.key("school"), agreement.agreement_id)
    with pytest.raises(StateError):
        load_state(path, other, agreement.agreement_id)
    _same(load_state(path, key, agreement.agreement_id), expected)


def test_deltas_of_an_earlier_base_are_skipped(world: World) -> None:
    """A compaction cut short (new base written, old deltas not yet removed) loads as the new base."""
    agreement = world.setup.agreement
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    path = state_path(world.root / "state")
    first_round(world)
    world.run([world.delta("school", add=3, withdraw=0)])
    stale = world.root / "stale"
    stale.mkdir()
    for _, p in delta_paths(path):
        shutil.copy(p, stale / p.name)
    world.run([world.delta("school", add=3, withdraw=1)], compact=True)
    expected = load_state(path, key, agreement.agreement_id)
    for p in stale.iterdir():
        shutil.copy(p, path.parent / p.name)
    assert delta_paths(path)
    _same(load_state(path, key, agreement.agreement_id), expected)


def test_a_delta_records_only_the_entities_that_moved_and_replays_any_re_solve() -> None:
    """Invariant: a delta's retired and fresh pseudonyms and moved rows rebuild every entity and the table
    exactly, whatever the re-solve did (retire, add, move, rotate every pseudonym), and name only the rows
    that moved."""
    rng = np.random.default_rng(5)
    table = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    before = rng.integers(0, 50, 1000)
    before[-30:] = -1  # the round's new rows
    kept = rng.random(50) > 0.2
    table_after = np.concatenate([table[kept], rng.integers(0, 256, (7, 16), dtype=np.uint8)])
    renumber = np.full(50, -1)
    renumber[kept] = np.arange(int(kept.sum()))
    entity = np.where(before >= 0, renumber[before], -1)
    entity[(entity < 0) | (rng.random(1000) < 0.01)] = -1
    moved = entity < 0
    entity[moved] = rng.integers(0, len(table_after), int(moved.sum()))
    for after in (table_after, rng.integers(0, 256, table_after.shape, dtype=np.uint8)):  # then a rotation
        arrays = state_segments._entity_change(before, table, entity, after)
        assert "entity" not in arrays
        if after is table_after:
            assert len(arrays["moved"]) <= int(moved.sum()) and len(arrays["fresh"]) == 7
        got, got_table = state_segments._changed_entities(before, table, arrays)
        assert np.array_equal(got, entity) and np.array_equal(got_table, after)


def test_a_delta_written_with_every_entity_still_loads(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: deltas of the older layout (every row's entity and the whole table) load to the same state."""
    agreement = world.setup.agreement
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    path = state_path(world.root / "state")
    first_round(world)
    monkeypatch.setattr(state_segments, "_entity_change",
                        lambda *arrays: {"entity": arrays[2], "pseudonyms": arrays[3]})
    state = load_state(path, key, agreement.agreement_id)
    paths = [world.delta(name, add=3, withdraw=2) for name in agreement.agency_ids[:2]]
    state, _, _ = apply_round(agreement, state, [read_upload(p, agreement) for p in paths])
    append_delta(path, state, key)
    _same(load_state(path, key, agreement.agreement_id), state)
