"""The calibration's correction for blocking: capture rates by similarity, and a fit told about them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.calibration import calibrate, score_histogram
from coordinator.linkage.capture import capture_by_score


def test_a_fit_told_how_blocking_thins_the_pairs_estimates_the_thinned_round() -> None:
    """Invariant: when blocking finds low-similarity pairs less often (most false links sit there), a fit
    that knows the capture rates estimates the precision of the linked pairs to within 0.015, and closer
    than a fit that does not."""
    rng = np.random.default_rng(7)
    strangers = 0.55 + rng.exponential(1 / 14, 6000)
    scores = np.concatenate([np.ones(3000), rng.beta(14, 2, 6000), strangers])
    true = np.concatenate([np.ones(9000, dtype=bool), np.zeros(6000, dtype=bool)])
    keep = (scores >= 0.55) & (scores < 1.0001)
    scores, true = scores[keep], true[keep]
    rate = lambda s: np.clip((s - 0.5) * 3.0, 0.05, 1.0)  # noqa: E731 - the blocking's capture curve
    found = rng.random(len(scores)) < rate(scores)
    scores, true = scores[found], true[found]
    bins = 200
    capture = np.ones(bins)
    capture[110:] = rate((np.arange(110, bins) + 0.5) / bins)
    histogram = score_histogram(scores, 0.55)
    threshold = 0.65
    truth = true[scores >= threshold].mean()
    told = calibrate(replace(histogram, capture=capture), threshold=threshold, bootstrap=0).estimate.precision
    untold = calibrate(histogram, threshold=threshold, bootstrap=0).estimate.precision
    assert abs(told - truth) < 0.015
    assert abs(told - truth) < abs(untold - truth)


def test_capture_rates_are_rates_rising_with_similarity() -> None:
    """Invariant: measured on encodings with near-duplicates planted across two agencies, every rate lies
    in [0.02, 1], rates do not fall as similarity rises, bins below the floor are 1, and the top bins
    (identical encodings always share every band) are 1."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(600, 128), dtype=np.uint8) & rng.integers(0, 256, size=(600, 128), dtype=np.uint8)
    flips = rng.random((600, 128 * 8)) < np.linspace(0.0, 0.3, 600)[:, None]
    b = np.packbits(np.unpackbits(a, axis=1) ^ flips, axis=1)
    rates = capture_by_score([a, b], 0.55, BlockingConfig(), sample_rows=600, workers=1)
    assert rates.shape == (200,) and ((rates >= 0.02) & (rates <= 1.0)).all()
    assert (np.diff(rates[110:]) >= -1e-12).all() and (rates[:110] == 1.0).all()
    assert rates[-1] == 1.0
