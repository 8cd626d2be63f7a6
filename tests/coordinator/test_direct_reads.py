"""A range read through DirectReader is exactly the file's bytes there, around the page cache or not."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage import direct_reads
from coordinator.linkage.direct_reads import DirectReader
from coordinator.linkage.state_store import derive_state_key, load_state, state_path
from pplink.errors import StateError
from tests.coordinator.test_incremental import World, first_round
from tests.coordinator.test_state_segments import _same

# Empty, under, at and over one alignment block, and ranges that start and end anywhere in a block.
_SIZES = [0, 1, 4095, 4096, 4097, 3 * 4096 + 5000, 50_001]


@pytest.fixture
def world(setup, tmp_path: Path) -> World:  # type: ignore[no-untyped-def]
    return World(setup, tmp_path)


def _ordinary_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a file system that refuses ``O_DIRECT``."""
    monkeypatch.setattr(direct_reads, "_open_direct", lambda path, stat: None)


@pytest.mark.parametrize("direct", [True, False])
def test_every_range_reads_exactly_the_files_bytes(tmp_path: Path, direct: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: ``read(offset, length)`` returns the file's bytes there, cut short only where the file ends."""
    if not direct:
        _ordinary_reads(monkeypatch)
    rng = np.random.default_rng(3)
    for size in _SIZES:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(data)  # not fsynced: a direct read must still see these bytes, not the disk's
        with path.open("rb") as fh, DirectReader(fh.fileno(), path) as reader:
            assert reader.size == size and (direct or not reader.direct)
            buffer = reader.buffer(size + 10)
            for offset in sorted({0, 1, 4095, 4096, 4097, size // 2, max(size - 1, 0), size}):
                for length in sorted({0, 1, 4, 4096, size - offset, size - offset + 10}):
                    if length > size + 10:  # more than the buffer was made for
                        continue
                    assert bytes(reader.read(offset, length, buffer)) == data[offset : offset + length]


def test_a_file_replaced_after_it_was_opened_is_read_as_opened(tmp_path: Path) -> None:
    """Invariant: the reader reads the file open on its descriptor, even once another file took its name."""
    path, other = tmp_path / "state.bin", tmp_path / "new.bin"
    old = os.urandom(3 * 4096 + 17)
    path.write_bytes(old)
    other.write_bytes(os.urandom(len(old)))
    with path.open("rb") as fh:
        os.replace(other, path)
        with DirectReader(fh.fileno(), path) as reader:
            assert not reader.direct
            assert bytes(reader.read(5, len(old) - 5, reader.buffer(len(old)))) == old[5:]


def test_a_state_reads_the_same_and_tampering_is_refused_either_way(world: World,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: a state (base and deltas) loads the same read around the page cache or the ordinary way, and a
    flipped bit in either file fails authentication both ways."""
    agreement = world.setup.agreement
    key = derive_state_key(world.setup.key("coordinator"), agreement.agreement_id)
    path = state_path(world.root / "state")
    first_round(world)
    world.run([world.delta("school", add=3, withdraw=0)])
    delta = path.with_name(f"{path.name}.delta-000001")
    assert delta.exists()
    direct = load_state(path, key, agreement.agreement_id)
    with monkeypatch.context() as patch:
        _ordinary_reads(patch)
        _same(load_state(path, key, agreement.agreement_id), direct)
    for ordinary in (False, True):
        with monkeypatch.context() as patch:
            if ordinary:
                _ordinary_reads(patch)
            for target in (path, delta):
                raw = target.read_bytes()
                tampered = bytearray(raw)
                tampered[len(raw) * 2 // 3] ^= 1
                target.write_bytes(bytes(tampered))
                with pytest.raises(StateError, match="fails authentication"):
                    load_state(path, key, agreement.agreement_id)
                target.write_bytes(raw)
    _same(load_state(path, key, agreement.agreement_id), direct)
