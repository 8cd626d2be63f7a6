"""benchmarks/quality.py at its tiny size: every dataset reports measured, estimated and oracle figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.mark.slow
def test_quality_benchmark_reports_every_dataset_at_tiny_size() -> None:
    """Invariant: one JSON line per dataset, with F1 at the automatic threshold, estimates that are
    probabilities, and the oracle's F1 at a threshold it chose with the truth."""
    done = subprocess.run([sys.executable, str(BENCHMARK), "--size", "tiny"],
                          capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["dataset"] for r in rows] == ["uk_style", "households", "febrl1", "synth"]
    for row in rows:
        assert 0.0 < row["threshold"] < 1.0
        for key in ("f1", "precision", "recall", "est_precision", "est_recall", "oracle_f1"):
            assert 0.0 <= row[key] <= 1.0, key
        low, high = row["est_precision_interval"]
        assert low <= high
