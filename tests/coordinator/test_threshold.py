"""Tests for coordinator.linkage.threshold: valley finding, its fallbacks, and the text rendering."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from coordinator.linkage.match import SimilarityHistogram, match_clks
from coordinator.linkage.threshold import (
    DEFAULT_THRESHOLD,
    analyse_threshold,
    render_histogram,
    suggest_threshold,
)

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "match.py"


def _expected(valley: float, bins: int = 100) -> np.ndarray:
    """Many non-matches near 0.45 and few matches near 0.93, both shifted so that the curves
    cross near ``valley``."""
    centres = (np.arange(bins) + 0.5) / bins
    shift = valley - 0.75
    non_match = 3e6 * np.exp(-0.5 * ((centres - 0.45 - shift) / 0.06) ** 2)
    match = 4e3 * np.exp(-0.5 * ((centres - 0.93 - shift) / 0.04) ** 2)
    return non_match + match


def _mixture(rng: np.random.Generator, valley: float) -> np.ndarray:
    """The expected counts with Poisson noise."""
    return rng.poisson(_expected(valley))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("valley", [0.68, 0.75, 0.82])
def test_valley_is_found_despite_noise(seed: int, valley: float) -> None:
    """Invariant: on a noisy bimodal histogram the suggestion lies in the valley, near where the
    two modes cross (the true minimum of the expected counts), not at a noise dip."""
    counts = _mixture(np.random.default_rng(seed), valley)
    expected = _expected(valley)
    true_valley = (40 + int(np.argmin(expected[40:99])) + 0.5) / 100
    suggestion = analyse_threshold(SimilarityHistogram(counts=tuple(counts.tolist()), blocked=True))
    assert suggestion.from_valley, suggestion.reason
    assert abs(suggestion.threshold - true_valley) <= 0.03
    assert suggestion.modes[0] < suggestion.threshold < suggestion.modes[1]


def test_mode_at_one_counts_as_the_match_mode() -> None:
    """Identical encodings pile up in the top bin: that edge mode still bounds the valley."""
    counts = [0] * 34 + [100, 1000, 5000, 1000, 100] + [10] * 30 + [2] * 30 + [300]
    assert len(counts) == 100
    suggestion = analyse_threshold(counts)
    assert suggestion.from_valley
    assert suggestion.modes[1] == 0.995
    assert 0.65 < suggestion.threshold < 0.99


def test_unimodal_histogram_falls_back_with_reason() -> None:
    """One mode (no overlap between agencies) gives the documented default and says why."""
    centres = (np.arange(100) + 0.5) / 100
    counts = np.round(1e5 * np.exp(-0.5 * ((centres - 0.45) / 0.06) ** 2)).astype(int)
    suggestion = analyse_threshold(counts.tolist())
    assert suggestion.threshold == DEFAULT_THRESHOLD and not suggestion.from_valley
    assert suggestion.reason.startswith("one mode only (near 0.45)")
    assert suggest_threshold(counts.tolist()) == DEFAULT_THRESHOLD


def test_empty_histogram_falls_back_with_reason() -> None:
    """No pairs at all: the default, and a reason that says so."""
    suggestion = analyse_threshold(SimilarityHistogram(counts=(0,) * 50, blocked=True))
    assert suggestion.threshold == DEFAULT_THRESHOLD
    assert suggestion.reason.startswith("no candidate pairs")


def test_valley_below_half_is_not_trusted() -> None:
    """Two modes low down (both non-match structure) must not suggest linking at Dice < 0.5."""
    counts = [0] * 10 + [50, 500, 50] + [1] * 10 + [50, 500, 50] + [0] * 65
    suggestion = analyse_threshold(counts)
    assert suggestion.threshold == DEFAULT_THRESHOLD and not suggestion.from_valley
    assert "below 0.5" in suggestion.reason


def test_nearby_bumps_are_one_mode() -> None:
    """Two bumps closer than 0.1 are one mode, not a match/non-match pair."""
    counts = [0] * 40 + [100, 1000, 100, 5, 100, 1000, 100] + [0] * 53
    assert not analyse_threshold(counts).from_valley


@pytest.mark.parametrize("counts", [[], [5], [1, -1, 3]])
def test_invalid_counts_are_refused(counts: list[int]) -> None:
    """Fewer than two bins or a negative count is a caller error, not a silent default."""
    with pytest.raises(ValueError, match="at least 2 non-negative"):
        suggest_threshold(counts)


def test_suggestion_on_real_encodings_separates_matches() -> None:
    """End to end on clkhash encodings of people with typos: the suggestion sits in the valley,
    and matching at it is about as good as at 0.8."""
    spec = importlib.util.spec_from_file_location("pplink_benchmark_match_t", BENCHMARK)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    datasets, entities = benchmark.make_encodings(2, 1500, seed=5)
    histogram = match_clks(datasets, 0.8, blocking=None).histogram
    assert histogram is not None
    suggestion = analyse_threshold(histogram)
    assert suggestion.from_valley, suggestion.reason
    assert 0.7 <= suggestion.threshold <= 0.9
    at_suggestion = benchmark.linkage_quality(match_clks(datasets, suggestion.threshold).labels, entities)
    at_default = benchmark.linkage_quality(match_clks(datasets, 0.8).labels, entities)
    assert at_suggestion["f1"] >= at_default["f1"] - 0.02


# --- rendering ------------------------------------------------------------------------------------


def test_render_marks_the_suggestion_once_and_fits_rows() -> None:
    """The row holding the threshold is marked exactly once; at most `rows` rows plus a header."""
    counts = _mixture(np.random.default_rng(0), 0.75)
    histogram = SimilarityHistogram(counts=tuple(counts.tolist()), blocked=True)
    text = render_histogram(histogram, suggestion=0.77, rows=20, width=30)
    lines = text.splitlines()
    assert lines[0].startswith(f"Dice similarity of {int(counts.sum()):,} candidate pairs")
    assert len(lines) <= 21
    marked = [line for line in lines if "suggested threshold 0.770" in line]
    assert len(marked) == 1
    lo, hi = (float(x) for x in marked[0].split(" |")[0].split("-"))
    assert lo <= 0.77 < hi
    assert max(len(line.split("|")[1].split()[0]) for line in lines[1:] if "#" in line) == 30


def test_render_marks_a_threshold_of_one_in_the_last_row() -> None:
    """Threshold 1.0 is the top edge: it belongs to the last row, not to no row."""
    text = render_histogram([0, 1, 2, 3], suggestion=1.0, rows=4)
    assert text.splitlines()[-1].endswith("<- suggested threshold 1.000")


def test_render_empty_histogram_says_so() -> None:
    """Nothing to draw is stated, not an empty string."""
    assert render_histogram([0, 0, 0]).endswith("(no pairs)")


def test_render_counts_add_up() -> None:
    """Merged rows keep every pair: the printed counts sum to the total."""
    counts = list(range(100))
    lines = render_histogram(counts, rows=7).splitlines()[1:]
    assert sum(int(line.split()[-1].replace(",", "")) for line in lines) == sum(counts)
