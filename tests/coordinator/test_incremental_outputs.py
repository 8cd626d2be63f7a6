"""The incremental round's map writer writes the bytes of the one map format (``pplink.entity_files``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage import incremental_outputs
from coordinator.linkage.incremental_outputs import map_bytes, write_map
from pplink.entity_files import read_entity_map, write_entity_map


@pytest.mark.parametrize("chunk", [100, 1 << 16])
def test_map_bytes_equal_the_entity_map_writer(tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any rows, in any order, entities repeated: byte for byte what ``write_entity_map`` writes.

    The writer formats a chunk of rows at a time: with chunks of 100 rows, the last one partial.
    """
    monkeypatch.setattr(incremental_outputs, "_MAP_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 256, (500, 16), dtype=np.uint8)
    pseudonyms = rng.integers(0, 256, (40, 16), dtype=np.uint8)
    entity = rng.integers(0, 40, 500)
    rows = rng.permutation(500)[:321]
    write_entity_map(tmp_path / "ref.csv", [(tokens[r].tobytes().hex(), pseudonyms[entity[r]].tobytes().hex())
                                            for r in rows.tolist()])
    digest = write_map(tmp_path / "fast.csv", rows, tokens, entity, pseudonyms)
    reference = (tmp_path / "ref.csv").read_bytes()
    assert (tmp_path / "fast.csv").read_bytes() == reference
    assert digest == hashlib.sha256(reference).hexdigest()
    assert len(read_entity_map(tmp_path / "fast.csv")) == 321


def test_an_empty_map_is_its_header(tmp_path: Path) -> None:
    """A party with no live rows gets the header alone, as the reference writer gives."""
    write_entity_map(tmp_path / "ref.csv", [])
    empty = np.zeros((0, 16), dtype=np.uint8)
    assert map_bytes(np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.int64), empty).tobytes() == \
        (tmp_path / "ref.csv").read_bytes()
    digest = write_map(tmp_path / "fast.csv", np.zeros(0, dtype=np.int64), empty, np.zeros(0, dtype=np.int64), empty)
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert digest == hashlib.sha256((tmp_path / "ref.csv").read_bytes()).hexdigest()
