"""The state's in-place row arrays, its direct load, and the round's linear-time helpers give what the copies gave."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage.incremental_outputs import map_bytes
from coordinator.linkage.resolve_clusters import components
from coordinator.linkage.state_arrays import _buffer, array_pieces, keep_runs, replace_rows
from coordinator.linkage.state_store import _MAGIC, IncrementalState, load_base, write_sealed
from coordinator.linkage.state_tokens import lookup, lookup_all, repeats


@pytest.mark.parametrize("axis", [0, 1])
def test_replace_rows_in_place_equals_a_fresh_copy(axis: int) -> None:
    rng = np.random.default_rng(1)
    shape = (5000, 3) if axis == 0 else (4, 5000)
    values = rng.integers(0, 1 << 30, shape).astype(np.uint32)
    keep = rng.random(5000) > 0.01
    keep[:100] = True
    new = rng.integers(0, 1 << 30, (70, 3) if axis == 0 else (4, 70)).astype(np.uint32)
    expected = np.concatenate([values[keep] if axis == 0 else values[:, keep], new], axis=axis)
    held = _buffer(np.dtype(np.uint32), shape, axis, 5000)
    held[...] = values
    address = held.__array_interface__["data"][0]
    out = replace_rows(held, keep_runs(keep), int(keep.sum()), new, axis)
    assert np.array_equal(out, expected)
    assert out.__array_interface__["data"][0] == address  # no new memory: the buffer had spare rows
    before = values.copy()
    fresh = replace_rows(values, keep_runs(keep), int(keep.sum()), new, axis)  # a plain array: copied, left alone
    assert np.array_equal(fresh, expected) and np.array_equal(values, before)
    grown = replace_rows(out, keep_runs(np.ones(out.shape[axis], dtype=bool)), out.shape[axis],
                         np.zeros((10**5, 3) if axis == 0 else (4, 10**5), dtype=np.uint32), axis)
    assert grown.shape[axis] == out.shape[axis] + 10**5  # past the spare rows: a new, larger buffer


def test_a_state_sealed_with_keys_as_one_piece_loads_the_same(tmp_path: Path) -> None:
    # Files written before the keys went band by band hold segments that span two bands; here one
    # segment spans every array, so each is filled through the scratch buffer.
    rng = np.random.default_rng(2)
    n = 3000
    state = IncrementalState(agreement_id="ab" * 16, parties=["a", "b"], threshold=0.8, mode="blocked",
                             positions=np.zeros((5, 3), dtype=np.int64), skip=np.zeros((0, 2), dtype=np.uint64),
                             width=8, party=(np.arange(n) % 2).astype(np.uint16),
                             tokens=rng.integers(0, 256, (n, 16), dtype=np.uint8),
                             clks=rng.integers(0, 256, (n, 8), dtype=np.uint8),
                             keys=rng.integers(0, 8, (5, n)).astype(np.uint32), added_day=np.zeros(n, dtype=np.int64),
                             entity=np.arange(n, dtype=np.int64), pseudonyms=np.zeros((n, 16), dtype=np.uint8))
    key = bytes(range(32))
    flat = [piece for array in state._arrays().values() for piece in array_pieces(array)]
    meta = json.dumps({**state.meta(), "arrays": [[name, a.dtype.str, list(a.shape)]
                                                  for name, a in state._arrays().items()]}, sort_keys=True).encode()
    whole = [memoryview(struct.pack(">I", len(meta)) + meta), memoryview(b"".join(bytes(p) for p in flat))]
    path = tmp_path / "old.state"
    write_sealed(path, _MAGIC, {"agreement_id": state.agreement_id}, whole, key)
    loaded, _ = load_base(path, key, state.agreement_id)
    for name in ("party", "tokens", "clks", "keys", "entity"):
        assert np.array_equal(getattr(loaded, name), getattr(state, name)), name
    assert loaded.keys.base is not None and loaded.keys.base.size > loaded.keys.size  # loaded with spare rows


def test_lookup_and_collisions_match_whole_tokens_even_when_prefixes_collide() -> None:
    rng = np.random.default_rng(3)
    live = rng.integers(0, 256, (2000, 16), dtype=np.uint8)
    live[7, :8] = live[8, :8]  # two live tokens sharing 8 bytes
    wanted = np.concatenate([live[[8, 5, 7]], rng.integers(0, 256, (2, 16), dtype=np.uint8)])
    assert lookup(live, wanted).tolist() == [8, 5, 7, -1, -1]
    fresh = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    assert not repeats(fresh) and not len(lookup_all(live, fresh)[0])
    one_live = np.concatenate([rng.integers(0, 256, (5, 16), dtype=np.uint8), live[[8]]])
    assert [x.tolist() for x in lookup_all(live, one_live)] == [[8], [5]] and not repeats(one_live)
    twice = rng.integers(0, 256, (5, 16), dtype=np.uint8)
    assert repeats(np.concatenate([twice, twice[:1]]))


def test_components_and_map_lines_equal_their_plain_definitions() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    a, b = rng.integers(0, n, 2500), rng.integers(0, n, 2500)
    label = components(n, a, b)
    # The smallest node of each component, by repeated relaxation over the edges.
    expected = np.arange(n)
    while True:
        low = np.minimum(expected[a], expected[b])
        step = expected.copy()
        np.minimum.at(step, a, low)
        np.minimum.at(step, b, low)
        if np.array_equal(step, expected):
            break
        expected = step
    assert np.array_equal(label, expected)
    tokens = rng.integers(0, 256, (10, 16), dtype=np.uint8)
    lines = map_bytes(np.arange(10), tokens, np.arange(10)[::-1].copy(), tokens).tobytes().decode().splitlines()
    assert lines[1:] == [f"{t.tobytes().hex()},{tokens[9 - i].tobytes().hex()}" for i, t in enumerate(tokens)]
