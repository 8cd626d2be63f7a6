"""One atomic write for every file: a failed write leaves the old file, and nobody renames by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pplink.atomic import atomic_file, atomic_write, remove_partials

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    atomic_write(target, b"old\n", mode=0o600)
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"new, half written")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old\n" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]


def test_remove_partials_takes_only_temporary_files(tmp_path: Path) -> None:
    for name in (".a.csv.123.partial", ".b.csv.9.partial", "a.csv", "keep.partial.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in remove_partials(tmp_path, of="a.csv")] == [".a.csv.123.partial"]
    assert [p.name for p in remove_partials(tmp_path)] == [".b.csv.9.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "keep.partial.txt"]


def test_no_module_renames_files_by_hand() -> None:
    """Every rename of a written file goes through pplink.atomic (fsync of file and folder included)."""
    offenders = []
    for package in ("pplink", "nodes", "coordinator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "pplink" / "atomic.py":
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"os\.replace\(|os\.rename\(|\.partial\"", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], offenders
