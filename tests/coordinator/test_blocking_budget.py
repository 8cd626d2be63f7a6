"""Tests for coordinator.linkage.blocking_budget: the comparison estimate and the budget's choice of blocking."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage.blocking import BlockingConfig, _pack_bits, bit_frequencies, choose_band_bits
from coordinator.linkage.blocking_budget import (
    ALL_PAIRS_LIMIT,
    LADDER,
    BlockingChoice,
    _sample,
    choose_blocking,
    comparison_budget,
    estimate_comparisons,
)
from coordinator.linkage.match import match_clks
from coordinator.linkage.match_round import blocking_for, round_blocking

#: A short ladder whose settings collide often on small data (1024-bit encodings, 30% of bits set).
SMALL_LADDER = ((12, 8), (10, 12), (8, 16), (6, 24))


def _agencies(rows: int, agencies: int = 3, seed: int = 0) -> list[np.ndarray]:
    """The same people in every agency, each copy with ~4% of its bits flipped (near-duplicates collide)."""
    rng = np.random.default_rng(seed)
    people = rng.random((rows, 1024)) < 0.3
    return [np.packbits(people ^ (rng.random(people.shape) < 0.04), axis=1) for _ in range(agencies)]


def _counted(datasets: list[np.ndarray], config: BlockingConfig) -> int:
    """The comparisons a round with ``config`` makes (scored pairs, once per band that finds them)."""
    return match_clks(datasets, 0.99, blocking=config, workers=1, histogram_bins=None).stats.comparisons


@pytest.mark.parametrize(("bits", "bands"), SMALL_LADDER)
def test_estimate_on_every_row_is_the_rounds_comparison_count(bits: int, bands: int) -> None:
    """Invariant: with no sampling and the round's own bit frequencies, the estimate counts exactly the pairs
    the round compares (no bucket is big enough to be split here)."""
    data = _agencies(300)
    config = BlockingConfig(bits_per_band=bits, bands=bands)
    estimate = estimate_comparisons(data, config, sample=data, frequencies=bit_frequencies(data, seed=config.seed))
    assert estimate == _counted(data, config) > 0


def _numpy_estimate(datasets: list[np.ndarray], config: BlockingConfig, sample: list[np.ndarray],
                    frequencies: np.ndarray) -> float:
    """The estimate as first computed: every band's codes sorted at once, bucket sums by ``bincount``."""
    positions = choose_band_bits(frequencies, config)[:, : config.bits_per_band]
    weights = np.array([len(d) / len(s) if len(s) else 0.0 for d, s in zip(datasets, sample, strict=True)])
    owner_bits = max(1, (len(sample) - 1).bit_length())
    band_code = (np.arange(config.bands, dtype=np.uint64) << np.uint64(32))[None, :]
    codes = np.sort(np.concatenate([
        (((_pack_bits(s, positions, np.uint32).astype(np.uint64) | band_code) << np.uint64(owner_bits))
         | np.uint64(d)).ravel()
        for d, s in enumerate(sample) if len(s)]))
    bucket = codes >> np.uint64(owner_bits)
    group = np.concatenate([[0], np.cumsum(bucket[1:] != bucket[:-1])])
    scaled = weights[(codes & np.uint64((1 << owner_bits) - 1)).astype(np.int64)]
    weighted = np.bincount(group, weights=scaled)
    cell = np.concatenate([[0], np.cumsum(codes[1:] != codes[:-1])])
    per_cell = np.bincount(cell, weights=scaled)
    squares = np.bincount(group[np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1])],
                          weights=per_cell * per_cell, minlength=len(weighted))
    return float(((weighted * weighted - squares) / 2).sum())


@pytest.mark.parametrize(("bits", "bands"), [*SMALL_LADDER, (21, 4), (30, 2)])
def test_compiled_estimate_is_the_numpy_estimate_to_the_bit(bits: int, bands: int) -> None:
    """The compiled per-band sort and walk give the same float as the one numpy sort and ``bincount``,
    with sampling weights that are not whole numbers and an agency whose sample is empty."""
    data = _agencies(700, agencies=4, seed=3)
    data = [data[0], data[1][:523], data[2][:0], data[3][:301]]
    config = BlockingConfig(bits_per_band=bits, bands=bands)
    sample = _sample(data, 250, config.seed)
    frequencies = bit_frequencies(sample, seed=config.seed)
    expected = _numpy_estimate(data, config, sample, frequencies)
    assert expected > 0
    assert estimate_comparisons(data, config, sample=sample, frequencies=frequencies) == expected


def test_estimate_on_a_sample_is_close_to_the_count() -> None:
    """Invariant: a quarter of the rows, scaled by the sampling fractions, estimates the full count within 15%."""
    data = _agencies(1600, seed=1)
    config = BlockingConfig(bits_per_band=8, bands=16)
    estimate = estimate_comparisons(data, config, sample_rows=400)
    assert estimate == pytest.approx(_counted(data, config), rel=0.15)


def test_choice_is_the_densest_setting_within_the_budget() -> None:
    """Invariant: the chosen setting's estimate fits the budget and the next denser one's does not."""
    data = _agencies(400, seed=2)
    everything = choose_blocking(data, budget=10**12, ladder=SMALL_LADDER)
    estimates = [everything.estimates[f"{b}x{n}"] for b, n in SMALL_LADDER]
    assert estimates == sorted(estimates)  # denser settings compare more
    budget = (estimates[1] + estimates[2]) // 2
    choice = choose_blocking(data, budget=budget, ladder=SMALL_LADDER)
    assert (choice.bits_per_band, choice.bands) == SMALL_LADDER[1]
    assert choice.method == "budget" and choice.estimated_comparisons == estimates[1] <= budget
    assert choice.estimates[f"{SMALL_LADDER[2][0]}x{SMALL_LADDER[2][1]}"] > budget
    assert len(choice.estimates) == 3  # the search stops at the first setting over budget
    config = choice.config()
    assert config is not None and (config.bits_per_band, config.bands) == SMALL_LADDER[1]


def test_choice_is_never_sparser_than_the_first_setting() -> None:
    """Invariant: a budget that not even the sparsest setting fits still gets the sparsest (today's 96 x 21)."""
    choice = choose_blocking(_agencies(200), budget=1)
    assert (choice.bits_per_band, choice.bands) == LADDER[0] == (21, 96)
    assert choice.estimated_comparisons is not None and choice.estimated_comparisons > 1


def test_choice_is_deterministic() -> None:
    """Invariant: the same data give the same sample, estimates and choice."""
    data = _agencies(500, seed=3)
    first = choose_blocking(data, budget=50_000, ladder=SMALL_LADDER, sample_rows=200)
    assert choose_blocking(data, budget=50_000, ladder=SMALL_LADDER, sample_rows=200) == first


def test_affordable_rounds_compare_all_pairs() -> None:
    """Invariant: up to ALL_PAIRS_LIMIT no blocking is chosen, with or without the encodings."""
    data = _agencies(50)
    choice = choose_blocking(data)
    assert choice == BlockingChoice(method="all-pairs", all_pairs=3 * 50 * 50) and choice.config() is None
    assert blocking_for([50, 50, 50], data) is None
    assert round_blocking(data)[0] is None


def test_budget_is_the_all_pairs_limit_then_grows_per_record() -> None:
    """Invariant: a blocked round may spend what an all-pairs round at the limit spends, and more only per record."""
    assert comparison_budget([20_000] * 4) == ALL_PAIRS_LIMIT
    assert comparison_budget([10**7] * 4) > comparison_budget([10**6] * 4) > ALL_PAIRS_LIMIT


def test_an_explicit_setting_wins() -> None:
    """Invariant: a given setting (or None for all pairs) is used as given and recorded as such."""
    data = _agencies(50)
    given = BlockingConfig(bits_per_band=18, bands=64)
    config, choice = round_blocking(data, given)
    assert config is given and choice.method == "given" and (choice.bits_per_band, choice.bands) == (18, 64)
    config, choice = round_blocking(data, None)
    assert config is None and choice.method == "all-pairs"


def test_blocking_for_without_encodings_keeps_the_default() -> None:
    """Invariant: past the limit, a caller that passes only sizes gets 96 x 21 (no estimate can be made)."""
    assert blocking_for([100_000] * 4) == BlockingConfig()
