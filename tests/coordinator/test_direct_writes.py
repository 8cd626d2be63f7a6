"""A file written through DirectFile holds exactly the bytes written, around the page cache or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage import direct_writes
from coordinator.linkage.direct_writes import DirectFile, direct_atomic_file

# Empty, under, at and over one alignment block, and around the gathering buffer's size (shrunk below).
_SIZES = [0, 1, 4095, 4096, 4097, 3 * 4096 - 7, 3 * 4096, 3 * 4096 + 5000, 50_001]


@pytest.mark.parametrize("direct", [True, False])
def test_the_file_holds_exactly_the_bytes_written(tmp_path: Path, direct: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A small buffer makes every size cross several buffer flushes; without O_DIRECT (refused, or forced
    # off here) the same calls write the ordinary way.
    monkeypatch.setattr(direct_writes, "_BUFFER", 3 * 4096)
    if not direct:
        monkeypatch.setattr(direct_writes, "_try_direct", lambda fd: False)
    rng = np.random.default_rng(2)
    for size in _SIZES:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"f{size}.bin"
        with direct_atomic_file(path, mode=0o600) as fh:
            for start in range(0, size, 3001):  # pieces that never line up with a block
                fh.write(data[start : start + 3001])
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o600
        with DirectFile.create(tmp_path / "plain.bin") as fh:
            fh.write(data)
        assert (tmp_path / "plain.bin").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")) == []


def test_a_failed_write_leaves_the_target_untouched(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), direct_atomic_file(path) as fh:
        fh.write(b"x" * 10_000)
        raise RuntimeError("cut short")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]
