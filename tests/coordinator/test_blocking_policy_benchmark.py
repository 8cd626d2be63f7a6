"""benchmarks/blocking_policy.py at its tiny size: true-link blocking loss per setting, on the same true pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "blocking_policy.py"


@pytest.mark.slow
def test_blocking_policy_benchmark_sees_denser_blocking_keep_more_true_links(tmp_path: Path) -> None:
    """Invariant: every setting is measured on the same true pairs, losses are shares, and on the
    UK-style set (whose automatic threshold is low) 16 x 192 misses fewer true links than the
    default 21 x 96: a measurement blind to band density would report equal losses."""
    done = subprocess.run([sys.executable, str(BENCHMARK), "--size", "tiny", "--only", "uk_style",
                           "--configs", "21x96", "16x192", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["config"] for r in rows] == ["21x96", "16x192"]
    assert rows[0]["pairs@thr"] == rows[1]["pairs@thr"] > 0
    for row in rows:
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if k.startswith("loss@"))
        assert row["comparisons_per_record"] > 0
    assert rows[1]["loss@floor"] < rows[0]["loss@floor"]
