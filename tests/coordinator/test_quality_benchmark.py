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
    probabilities (exact and DP), the round's own blocking loss (zero: every tiny round compares all pairs) beside
    the hypothetical fixed 96 x 21 one, and the oracle's F1 at a threshold it chose with the truth."""
    done = subprocess.run([sys.executable, str(BENCHMARK), "--size", "tiny"],
                          capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["dataset"] for r in rows] == ["uk_style", "households", "febrl1", "synth"]
    for row in rows:
        assert 0.0 < row["threshold"] < 1.0
        for key in ("f1", "precision", "recall", "est_precision", "est_recall", "dp_precision", "dp_recall",
                    "hypothetical_21x96_true_link_loss", "hypothetical_21x96_loss_all_pairs_floor", "oracle_f1"):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["blocking"]["method"] == "all-pairs"
        assert row["round_blocking_loss"] == row["round_linkage_blocking_loss"] == 0.0
        low, high = row["est_precision_interval"]
        assert low <= high


@pytest.mark.slow
def test_capped_ladder_forces_the_blocked_path_and_reports_the_second_pass() -> None:
    """Invariant: with ``--cap-ladder 21x96`` the round blocks at 21 x 96 by budget, makes a second pass, and what
    neither pass compares is at most what the first alone never compares."""
    done = subprocess.run([sys.executable, str(BENCHMARK), "--size", "tiny", "--cap-ladder", "21x96",
                           "--only", "febrl1"], capture_output=True, text=True, timeout=600, check=True)
    (row,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert (row["blocking"]["method"], row["blocking"]["bits_per_band"], row["blocking"]["bands"]) == ("budget", 21, 96)
    assert row["second_pass"] is not None
    assert 0.0 <= row["round_blocking_loss"] <= row["round_first_pass_loss"] == row["hypothetical_21x96_true_link_loss"]


@pytest.mark.slow
def test_quality_errors_benchmark_counts_every_wrong_pair_once() -> None:
    """Invariant: every missed pair is counted once by its combination of causes, each cause at least
    as often as it appears in a combination, and no count exceeds the true pairs."""
    sys.path.insert(0, str(BENCHMARK.parent.parent))
    from benchmarks.quality_errors import analyse

    result = analyse(150, seed=2, households=False)
    assert sum(result["missed_by_combination"].values()) <= result["missed"] <= result["true_pairs"]
    for cause, count in result["missed_by_cause"].items():
        assert count >= sum(n for combo, n in result["missed_by_combination"].items() if cause in combo.split("+"))
    assert all(kind.split(":")[0] in {"stranger", "household", "twin"} for kind in result["false_by_kind"])


class _People:
    """The smallest dataset ``quality_blocking`` reads: row i of every agency is person i."""

    def __init__(self, agencies: int, rows: int) -> None:
        self.agencies = tuple(f"a{d}" for d in range(agencies))
        self.ids = [tuple(f"r{i}" for i in range(rows)) for _ in range(agencies)]

    def truth(self) -> dict[str, dict[str, str]]:
        return {a: {r: f"p{i}" for i, r in enumerate(ids)} for a, ids in zip(self.agencies, self.ids, strict=True)}


def test_true_link_loss_is_what_a_blocked_comparison_misses() -> None:
    """Invariant: the loss read from the band keys equals the share of the true pairs scoring at least the
    threshold that a blocked comparison with the same setting does not find (and is 0 for all pairs)."""
    import numpy as np

    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.match import match_clks

    sys.path.insert(0, str(BENCHMARK.parent))
    from quality_blocking import pair_dice, true_link_loss, true_pairs

    rng = np.random.default_rng(4)
    people = rng.random((300, 1024)) < 0.3
    clks = [np.packbits(people ^ (rng.random(people.shape) < rng.uniform(0.02, 0.12, (300, 1))), axis=1)
            for _ in range(3)]
    dataset, threshold, config = _People(3, 300), 0.6, BlockingConfig(bits_per_band=16, bands=12)
    loss, eligible = true_link_loss(dataset, clks, dataset.ids, threshold, config)
    pairs = np.array(true_pairs(dataset, dataset.ids), dtype=np.int64)
    kept = pairs[pair_dice(clks, pairs) >= threshold]
    found = match_clks(clks, threshold, blocking=config, workers=1, keep_candidates=True).candidates
    assert found is not None
    (d_a, d_b), (r_a, r_b) = found[1], found[2]
    seen = set(zip(d_a.tolist(), r_a.tolist(), d_b.tolist(), r_b.tolist(), strict=True))
    missed = sum((int(a), int(ra), int(b), int(rb)) not in seen for a, ra, b, rb in kept)
    assert eligible == len(kept) > 0 and 0 < missed < len(kept)
    assert loss == pytest.approx(missed / len(kept))
    assert true_link_loss(dataset, clks, dataset.ids, threshold, None) == (0.0, eligible)
