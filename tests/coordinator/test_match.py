"""Tests for coordinator.linkage.match, checked against anonlink and a brute-force Dice + greedy reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from anonlink.similarities import dice_coefficient_accelerated
from bitarray import bitarray

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.blocking_recall import measure_blocking_recall
from coordinator.linkage.match import (
    MatchResult,
    SimilarityHistogram,
    compute_dice,
    match_clks,
    similarity_histogram,
)
from pplink.errors import MatchError

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "match.py"

#: Blocking that makes every pair a candidate: 64 one-bit bands miss a pair only if it disagrees
#: on all 64 sampled bits (probability ~1e-24 here), and pairs meet in dozens of bands, which
#: exercises the first-band deduplication.
EVERY_PAIR = BlockingConfig(bits_per_band=1, bands=64, split_bits=0, max_bucket_pairs=10**9, min_bit_frequency=0.0)


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pplink_benchmark_match", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return _load_benchmark()


@pytest.fixture(scope="module")
def people(benchmark: ModuleType) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three agencies of 300 clkhash-encoded synthetic people with typos (seeded)."""
    return benchmark.make_encodings(3, 300, seed=11)


def _bitarrays(data: np.ndarray) -> list[bitarray]:
    out = []
    for row in data:
        bits = bitarray(endian="big")
        bits.frombytes(row.tobytes())
        out.append(bits)
    return out


# --- brute-force reference ------------------------------------------------------------------------


def _brute_candidates(datasets: list[np.ndarray],
                      threshold: float) -> list[tuple[float, tuple[int, int], tuple[int, int]]]:
    """Every cross-dataset pair at or above threshold, by full matrix Dice, in anonlink's order."""
    out = []
    for i in range(len(datasets)):
        for j in range(i + 1, len(datasets)):
            a = np.unpackbits(datasets[i], axis=1).astype(np.int64)
            b = np.unpackbits(datasets[j], axis=1).astype(np.int64)
            inter = a @ b.T
            denominator = a.sum(1)[:, None] + b.sum(1)[None, :]
            sims = np.divide(2 * inter, denominator, out=np.zeros(inter.shape), where=denominator > 0)
            for r0, r1 in zip(*np.nonzero(sims >= threshold), strict=True):
                out.append((float(sims[r0, r1]), (i, int(r0)), (j, int(r1))))
    return sorted(out, key=lambda c: (-c[0], c[1][0], c[2][0], c[1][1], c[2][1]))


def _brute_greedy(candidates: list[tuple[float, tuple[int, int], tuple[int, int]]]) -> set[frozenset]:
    """Greedy clustering: in candidate order, merge two groups iff every cross pair was already seen."""
    group: dict[tuple[int, int], list[tuple[int, int]]] = {}
    seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    for _, x, y in candidates:
        seen.update({(x, y), (y, x)})
        gx, gy = group.setdefault(x, [x]), group.setdefault(y, [y])
        if gx is gy:
            continue
        if all((p, q) in seen for p in gx for q in gy):
            merged = gx + gy
            for record in merged:
                group[record] = merged
    return {frozenset(g) for g in group.values() if len(g) > 1}


def _groups(result: MatchResult) -> set[frozenset]:
    return {frozenset(c) for c in result.clusters() if len(c) > 1}


def _brute_histogram(datasets: list[np.ndarray], bins: int) -> np.ndarray:
    sims = [c[0] for c in _brute_candidates(datasets, 0.0)]
    return np.bincount(np.minimum((np.array(sims) * bins).astype(int), bins - 1), minlength=bins)


# --- Dice -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [128, 64, 24, 12])
def test_dice_equals_anonlink_bit_for_bit(nbytes: int) -> None:
    """compute_dice gives exactly anonlink's accelerated Dice on every pair, for any width
    (including widths that are not whole 8-byte words) and for empty encodings."""
    rng = np.random.default_rng(nbytes)
    a = np.packbits(rng.random((40, nbytes * 8)) < rng.uniform(0.05, 0.6, (40, 1)), axis=1)
    b = np.packbits(rng.random((35, nbytes * 8)) < rng.uniform(0.05, 0.6, (35, 1)), axis=1)
    b[0] = 0  # an empty encoding scores 0 against everything
    sims, (rows_a, rows_b) = dice_coefficient_accelerated((_bitarrays(a), _bitarrays(b)), 0.0)
    rows_a, rows_b = np.frombuffer(rows_a, dtype=np.uint32), np.frombuffer(rows_b, dtype=np.uint32)
    assert len(sims) == 40 * 35
    np.testing.assert_array_equal(compute_dice(a, b, rows_a, rows_b), np.frombuffer(sims))


def test_dice_equals_anonlink_on_clkhash_encodings(people: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Same check on realistic clkhash encodings, where match and non-match similarities differ."""
    a, b = people[0][0], people[0][1]
    sims, (rows_a, rows_b) = dice_coefficient_accelerated((_bitarrays(a), _bitarrays(b)), 0.0)
    rows_a, rows_b = np.frombuffer(rows_a, dtype=np.uint32), np.frombuffer(rows_b, dtype=np.uint32)
    np.testing.assert_array_equal(compute_dice(a, b, rows_a, rows_b), np.frombuffer(sims))


def test_two_empty_encodings_score_zero() -> None:
    """0/0 is defined as 0 (anonlink skips such records at any positive threshold)."""
    empty = np.zeros((1, 16), dtype=np.uint8)
    assert compute_dice(empty, empty, np.array([0]), np.array([0])).tolist() == [0.0]


# --- matching against the reference ----------------------------------------------------------------


@pytest.mark.parametrize("agencies", [2, 3])
def test_all_pairs_match_equals_brute_force(people: tuple[list[np.ndarray], list[np.ndarray]], agencies: int) -> None:
    """Without blocking, clusters equal brute-force Dice + greedy on the same encodings."""
    datasets = people[0][:agencies]
    result = match_clks(datasets, 0.8, blocking=None, workers=2)
    candidates = _brute_candidates(datasets, 0.8)
    assert result.stats.candidate_pairs == len(candidates)
    assert _groups(result) == _brute_greedy(candidates)


def test_blocked_match_with_every_pair_a_candidate_equals_brute_force(
    people: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    """With blocking that misses no pair, the blocked path (numpy Dice, first-band dedup, solver)
    gives the brute-force clusters, and each candidate pair is counted once."""
    datasets = people[0]
    result = match_clks(datasets, 0.75, blocking=EVERY_PAIR, workers=2)
    candidates = _brute_candidates(datasets, 0.75)
    assert result.stats.candidate_pairs == len(candidates)
    assert result.stats.comparisons > 3 * 300 * 300  # pairs meet in many bands...
    assert _groups(result) == _brute_greedy(candidates)  # ...but are solved once


def test_pairs_kept_once_per_band_below_repeats_below_are_solved_once(
    people: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    """Without a histogram, the comparison keeps pairs below ``REPEATS_BELOW`` from every band that
    finds them (no earlier-band check): the round's candidates are still every brute-force pair once,
    known distinct, and its clusters the brute-force ones."""
    from coordinator.linkage.compare import REPEATS_BELOW, compare_datasets

    datasets = people[0]
    found, *_ = compare_datasets(tuple(datasets), 0.5, EVERY_PAIR, 1, None, None, repeats_below=REPEATS_BELOW)
    candidates = _brute_candidates(datasets, 0.5)
    below = sum(1 for c in candidates if c[0] < REPEATS_BELOW)
    assert found.may_repeat and found.pairs > len(candidates) and below > 100  # repeats were kept
    result = match_clks(datasets, 0.5, blocking=EVERY_PAIR, workers=2, histogram_bins=None, keep_candidates=True)
    assert result.candidates is not None and result.candidates_distinct
    sims, (d_a, d_b), (r_a, r_b) = result.candidates
    firsts = zip(d_a.tolist(), r_a.tolist(), strict=True)
    seconds = zip(d_b.tolist(), r_b.tolist(), strict=True)
    got = list(zip(sims.tolist(), firsts, seconds, strict=True))
    assert got == candidates
    assert _groups(result) == _brute_greedy(candidates)


def test_histograms_count_each_pair_once(people: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """All-pairs histograms equal the brute-force histogram; blocked ones do from 0.5 up, where
    pairs found in several bands are deduplicated (below 0.5 they may count once per band)."""
    datasets = people[0][:2]
    expected = _brute_histogram(datasets, 50)
    all_pairs = similarity_histogram(datasets, blocking=None, bins=50)
    assert all_pairs.counts == tuple(expected.tolist()) and not all_pairs.blocked
    assert match_clks(datasets, 0.8, blocking=None, histogram_bins=50).histogram == all_pairs
    blocked = similarity_histogram(datasets, blocking=EVERY_PAIR, bins=50)
    assert blocked.blocked
    assert blocked.counts[25:] == tuple(expected[25:].tolist())
    assert all(got >= want for got, want in zip(blocked.counts[:25], expected[:25].tolist(), strict=True))


def test_a_rounds_histogram_is_exact_from_its_floor_and_empty_below(
    people: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    """An automatic round's histogram (its kept pairs', not counted while comparing) equals the
    brute-force histogram of every pair from the floor's bin up, blocked or not, and is empty below."""
    from coordinator.linkage.auto import CALIBRATION_FLOOR, auto_match

    datasets = people[0]
    expected = sum(_brute_histogram([datasets[a], datasets[b]], 100)
                   for a in range(len(datasets)) for b in range(a + 1, len(datasets)))
    first = int(np.ceil(CALIBRATION_FLOOR * 100 - 1e-9))
    for blocking in (None, EVERY_PAIR):
        result, _, _ = auto_match(datasets, blocking=blocking, workers=1, bootstrap=0)
        histogram = result.histogram
        assert histogram is not None and histogram.floor == CALIBRATION_FLOOR
        assert histogram.blocked == (blocking is not None)
        assert histogram.counts[first:] == tuple(expected[first:].tolist()) and not any(histogram.counts[:first])


def test_every_record_is_in_exactly_one_cluster(people: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Invariants: each (dataset, row) appears once; no cluster holds two rows of one dataset;
    labels number clusters in order of their first member."""
    datasets = people[0]
    result = match_clks(datasets, 0.8)
    clusters = result.clusters()
    members = [m for c in clusters for m in c]
    assert len(members) == len(set(members)) == 900 == sum(len(x) for x in result.labels)
    assert len(clusters) == result.n_clusters == result.stats.clusters
    assert all(len({d for d, _ in c}) == len(c) for c in clusters)
    assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)
    assert result.stats.linked_records == sum(len(c) for c in clusters if len(c) > 1)


def test_results_do_not_depend_on_worker_count(people: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """One thread or two: the same clusters, labels and histogram."""
    one = match_clks(people[0], 0.8, workers=1)
    two = match_clks(people[0], 0.8, workers=2)
    assert all(np.array_equal(x, y) for x, y in zip(one.labels, two.labels, strict=True))
    assert one.histogram == two.histogram
    assert one.stats.comparisons == two.stats.comparisons


def test_blocking_loses_few_pairs_on_corrupted_data(people: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Default blocking finds nearly every all-pairs candidate on realistic typo-ridden data,
    while comparing far fewer pairs (measured loss ~0.1% at 4 x 100k; 1% is the alarm here)."""
    report = measure_blocking_recall(people[0], 0.8)
    assert report.all_pairs > 200
    assert report.recall_loss <= 0.01
    assert report.found <= report.all_pairs
    assert report.blocked_comparisons < report.all_pairs_comparisons / 5
    sampled = measure_blocking_recall(people[0], 0.8, sample_rows=100, seed=1)
    assert sampled.sampled and sampled.records == (100, 100, 100)


def test_blocked_quality_is_close_to_all_pairs(
    benchmark: ModuleType, people: tuple[list[np.ndarray], list[np.ndarray]]
) -> None:
    """F1 against the known truth: blocked within 0.005 of all-pairs."""
    datasets, entities = people
    blocked = benchmark.linkage_quality(match_clks(datasets, 0.8).labels, entities)
    reference = benchmark.linkage_quality(match_clks(datasets, 0.8, blocking=None).labels, entities)
    assert reference["f1"] > 0.8
    assert abs(blocked["f1"] - reference["f1"]) <= 0.005


def test_skipped_buckets_are_reported_in_match_stats() -> None:
    """Many identical encodings make a bucket no split can shrink: it is skipped, counted, and the
    other records still match."""
    rng = np.random.default_rng(9)
    twin = np.packbits(rng.random((1, 1024)) < 0.3, axis=1)
    others = np.packbits(rng.random((40, 1024)) < 0.3, axis=1)
    a = np.concatenate([np.repeat(twin, 40, axis=0), others])
    b = np.concatenate([np.repeat(twin, 30, axis=0), others])
    result = match_clks([a, b], 0.9, blocking=BlockingConfig(bands=8, max_bucket_pairs=500))
    assert result.stats.blocking is not None
    assert result.stats.blocking.buckets_skipped == 8
    assert result.stats.blocking.pairs_skipped == 8 * 40 * 30
    assert {frozenset({(0, 40 + i), (1, 30 + i)}) for i in range(40)} <= _groups(result)


def test_progress_reports_every_unit() -> None:
    """progress starts at (0, total) and ends at (total, total), one call per finished unit."""
    rng = np.random.default_rng(10)
    data = [np.packbits(rng.random((20, 256)) < 0.3, axis=1) for _ in range(2)]
    calls: list[tuple[int, int]] = []
    match_clks(data, 0.8, blocking=BlockingConfig(bands=5, bits_per_band=4), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(6)]


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datasets", "threshold", "message"),
    [
        ([np.zeros((3, 16), np.uint8)], 0.8, "at least 2 datasets, got 1"),
        ([np.zeros((3, 16), np.uint8), np.zeros((3, 16), np.int64)], 0.8, "dataset 1: expected a 2-D uint8"),
        ([np.zeros((3, 16), np.uint8), np.zeros(16, np.uint8)], 0.8, "dataset 1: expected a 2-D uint8"),
        ([np.zeros((3, 16), np.uint8), [[0] * 16]], 0.8, "dataset 1: expected .* got list"),
        ([np.zeros((3, 16), np.uint8), np.zeros((3, 8), np.uint8)], 0.8, "dataset 1: encodings have 8 bytes"),
        ([np.zeros((3, 0), np.uint8), np.zeros((3, 0), np.uint8)], 0.8, "dataset 0: encodings have zero bytes"),
        ([np.zeros((3, 16), np.uint8)] * 2, 0.0, r"threshold must be in \(0, 1\]"),
        ([np.zeros((3, 16), np.uint8)] * 2, 1.5, r"threshold must be in \(0, 1\]"),
    ],
)
def test_bad_input_is_refused_with_the_dataset_named(datasets: list, threshold: float, message: str) -> None:
    """Each malformed input raises MatchError (PPL401) naming the dataset, never a crash later."""
    with pytest.raises(MatchError, match=message) as caught:
        match_clks(datasets, threshold)
    assert caught.value.code == 401


def test_blocking_too_wide_for_the_encodings_is_a_match_error() -> None:
    """Encodings of 16 bits cannot carry a 29-bit band key: MatchError, not a ValueError deep inside."""
    with pytest.raises(MatchError, match="bit positions per band"):
        match_clks([np.zeros((3, 2), np.uint8)] * 2, 0.8)


def test_empty_datasets_give_empty_clusters() -> None:
    """No records, no clusters; one empty dataset leaves the others as singletons."""
    empty = np.zeros((0, 128), np.uint8)
    some = np.packbits(np.random.default_rng(0).random((4, 1024)) < 0.3, axis=1)
    assert match_clks([empty, empty], 0.8).n_clusters == 0
    result = match_clks([empty, some], 0.8, blocking=None)
    assert result.clusters() == [[(1, r)] for r in range(4)]


def test_histogram_model_validates_counts() -> None:
    """Negative or too few bins are refused at the boundary."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SimilarityHistogram(counts=(1, -1), blocked=True)
    with pytest.raises(ValidationError):
        SimilarityHistogram(counts=(1,), blocked=True)


# --- benchmark ------------------------------------------------------------------------------------


def test_benchmark_tiny_run_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark runs end to end at n=200 and prints one valid JSON line per run plus a table."""
    module = _load_benchmark()
    argv = ["--agencies", "2", "--records", "200", "--seed", "3", "--no-isolate", "--cache-dir", str(tmp_path)]
    assert module.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["run"] for r in rows] == ["pplink-blocked", "anonlink-all-pairs"]
    for row in rows:
        assert row["records"] == [200, 200] and 0.0 <= row["f1"] <= 1.0 and row["seconds"] >= 0
        assert row["versions"]["anonlink"] == "0.15.3"
    assert 0.0 <= rows[0]["blocking_recall_loss"] <= 1.0
    assert any(line.startswith("pplink-blocked") for line in lines if not line.startswith("{"))
    assert list(tmp_path.glob("encodings-*.npz"))  # the cache lives where it was told, not in the repo


def test_benchmark_runs_the_automatic_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--threshold auto`` runs auto_match and prints its chosen threshold and every phase's time."""
    module = _load_benchmark()
    argv = ["--agencies", "3", "--records", "300", "--threshold", "auto", "--no-isolate", "--cache-dir", str(tmp_path)]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["run"] for r in rows] == ["pplink-auto", "anonlink-all-pairs"]
    auto, peer = rows
    assert auto["threshold_policy"] == "auto" and peer["threshold"] == auto["threshold"]  # peers at its choice
    assert {"floor_comparing", "floor_solve", "pair_solves", "attach_duplicates"} <= set(auto["auto_phases"])
    assert "auto phases (s):" in out and "automatic threshold: chose" in out
