"""Noisy sufficient statistics: the per-person bound holds by construction, and the holdout never moves others."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pplink.scoring.fairness import group_rates, rate_with_interval
from pplink.scoring.suffstats import (
    SuffStatsSettings,
    encode_block,
    in_holdout,
    noise_plan,
    person_bound,
    solve_model,
    upper_pairs,
)

AGENCIES = ("owner", "a", "b", "c")
WIDTHS = (2, 2, 3, 1)


def _population(rng: np.random.Generator, n: int, settings: SuffStatsSettings) -> tuple[np.ndarray, np.ndarray]:
    """Rows over every agency's block (grid units), with extreme, missing and absent values mixed in."""
    blocks = []
    for width in WIDTHS:
        raw = rng.normal(0, 3, size=(n, width))
        extreme = rng.random((n, width)) < 0.05
        raw[extreme] = rng.choice([1e12, -1e12, np.inf, -np.inf, np.nan], size=int(extreme.sum()))
        block = encode_block("x", [f"f{j}" for j in range(width)], raw, settings)
        absent = rng.random(n) < 0.3  # not held by this agency: the whole block is zero
        block[absent] = 0
        blocks.append(block)
    x = np.hstack(blocks)
    y = rng.integers(0, 2, size=n)
    return x, y


def _stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = x.shape[1]
    gram = np.array([x[:, i] @ x[:, j] for i, j in upper_pairs(d)], dtype=np.int64)
    return gram, x.T @ (2 * y - 1)


@pytest.mark.parametrize("feature_norm", [0.5, 0.75, 2.0])
def test_removing_any_one_person_moves_g_and_b_by_at_most_their_stated_sensitivity(feature_norm: float) -> None:
    """Invariant: for every one of 400 people (5% extreme or non-finite values), G without them differs
    from G with them by at most C^2 in L2 over the released upper triangle, and b by at most C/2, in units."""
    settings = SuffStatsSettings(feature_norm=feature_norm)
    rng = np.random.default_rng(7)
    x, y = _population(rng, 400, settings)
    gram, b = _stats(x, y)
    c = person_bound(settings, len(AGENCIES))
    gram_bound = c * c * settings.grid**2
    b_bound = 0.5 * c * 2 * settings.grid
    plan = noise_plan(settings, len(AGENCIES), 1e-6, x.shape[1])
    assert plan.gram_sensitivity >= gram_bound and plan.b_sensitivity >= b_bound
    worst_g = worst_b = 0.0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        g2, b2 = _stats(x[keep], y[keep])
        worst_g = max(worst_g, float(np.linalg.norm(gram - g2)))
        worst_b = max(worst_b, float(np.linalg.norm(b - b2)))
    assert worst_g <= gram_bound + 1e-9 and worst_b <= b_bound + 1e-9
    # The bound is not slack by orders of magnitude: someone comes within a factor 3 of it.
    assert worst_g > gram_bound / 3


def test_encoded_blocks_are_bounded_and_on_the_grid_whatever_the_input() -> None:
    """Every encoded row has feature norm <= feature_norm and integer grid units, with an indicator of 1."""
    settings = SuffStatsSettings(feature_scales={"x.f0": (5.0, 0.001)})
    rng = np.random.default_rng(3)
    raw = np.concatenate([rng.normal(0, 1e6, size=(500, 3)), np.full((1, 3), np.nan), np.full((1, 3), np.inf)])
    block = encode_block("x", ["f0", "f1", "f2"], raw, settings)
    assert block.dtype == np.int64 and (block[:, -1] == settings.grid).all()
    assert (np.linalg.norm(block[:, :-1] / settings.grid, axis=1) <= settings.feature_norm + 1e-12).all()


def test_the_holdout_of_a_person_depends_on_their_pseudonym_alone() -> None:
    """Adding or removing people never moves anyone else between training and holdout; the share is right."""
    rng = np.random.default_rng(1)
    key = bytes(range(32))
    ids = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(4000)]
    first = {e: in_holdout(key, e, 0.2) for e in ids}
    subset = ids[::3]
    assert all(in_holdout(key, e, 0.2) == first[e] for e in subset)
    assert 0.17 < sum(first.values()) / len(ids) < 0.23
    # Another key gives another split (the key is the label owner's secret).
    assert [in_holdout(bytes(32), e, 0.2) for e in ids] != [first[e] for e in ids]


def test_the_solved_model_recovers_a_linear_signal_from_noisy_statistics() -> None:
    """With statistics noised at the plan's scale for 20,000 people, the fitted direction correlates with the truth."""
    settings = SuffStatsSettings()
    rng = np.random.default_rng(5)
    n, d = 20000, 6
    x = np.trunc(np.clip(rng.normal(0, 0.3, size=(n, d)), -0.75, 0.75) * 16).astype(np.int64)
    x[:, -1] = 16
    truth = np.array([0.3, -0.2, 0.1, 0.0, 0.25, -0.3])
    y = (rng.random(n) < np.clip(0.5 + (x / 16) @ truth, 0, 1)).astype(np.int64)
    gram = x.T @ x
    b = x.T @ (2 * y - 1)
    plan = noise_plan(settings, 2, 1e-6, d)
    noisy = np.triu(gram + np.rint(rng.normal(0, plan.gram_scale, (d, d))).astype(np.int64))
    noisy = noisy + np.triu(noisy, 1).T
    w = solve_model(noisy, b + np.rint(rng.normal(0, plan.b_scale, d)).astype(np.int64), plan, settings)
    assert np.corrcoef(w[:-1], truth[:-1])[0, 1] > 0.9


def test_rates_come_with_intervals_that_widen_with_the_noise() -> None:
    """Invariant: the interval contains the rate, and more DP noise never narrows it; suppressed counts give none."""
    quiet, noisy = rate_with_interval(20, 80, 0.0), rate_with_interval(20, 80, 10.0)
    assert quiet.low < quiet.value < quiet.high and noisy.high - noisy.low > quiet.high - quiet.low
    assert math.isnan(group_rates({"tp": None, "fp": 1, "fn": 2, "tn": 3}, 1.0).fnr.value)
