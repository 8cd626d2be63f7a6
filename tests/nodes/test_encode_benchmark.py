"""benchmarks/encode.py at a tiny size: both sides run in fresh processes and report their rates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "encode.py"


def test_encode_benchmark_reports_both_sides_at_tiny_size() -> None:
    """Invariant: one JSON line per worker count with pplink's and clkhash's rates, the CLI's time and
    how many records pplink encoded (all of the synthetic ones that validate)."""
    done = subprocess.run([sys.executable, str(BENCHMARK), "--records", "400", "--workers", "1", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    assert row["records"] == 400 and row["workers"] == 1
    # Plain clkhash gets exactly the rows pplink validated, normalised: both encode the same records.
    assert 390 <= row["pplink_encoded"] == row["clkhash_encoded"] <= 400
    assert row["pplink_records_per_s"] > 0 and row["clkhash_records_per_s"] > 0 and row["cli_s"] > 0
