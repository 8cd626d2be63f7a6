"""The published estimates of a round: post-processing of its ``link-scores`` release, never of exact data.

A round's exact calibration (:mod:`coordinator.linkage.calibration`) chooses its threshold and stays
on the coordinator. What leaves it (the report, the notice, ``pplink eval linkage``) is computed here
from the ledger entry of the round's ``link-scores`` release (:mod:`coordinator.release.calibration`)
and the round's public threshold alone: the noisy bin counts are refitted with the same mixture, and
the intervals come from a bootstrap that redraws both the pairs and the DP noise (the entry's own
mechanism and scale), so they include the noise. The functions take a ledger entry, not a histogram:
they cannot read the exact counts.
"""

from __future__ import annotations

import math

import numpy as np

from coordinator.linkage.calibration import Estimate, estimate_at, floor_median
from coordinator.linkage.mixture import (
    MixtureFit,
    ScoreHistogram,
    expected_counts,
    fit_mixture,
)
from pplink.accounting import Mechanism, QueryKind
from pplink.ledger import LedgerEntry
from pplink.link_scores import parse_link_score_subject

__all__ = ["dp_estimate", "noisy_histogram"]


def noisy_histogram(entry: LedgerEntry) -> ScoreHistogram:
    """The released bin counts as a histogram over [0, 1] (bins below the floor empty).

    A suppressed bin (below the agreement's ``min_cell_size``) counts as zero here; :func:`dp_estimate`
    then fills it from the fit (:func:`_impute`). A negative count (no suppression) counts as zero.

    Raises:
        ValueError: the entry is not a ``link-scores`` release.
    """
    if entry.query.kind is not QueryKind.LINK_SCORES:
        raise ValueError(f"a {entry.query.kind.value} entry is not a link-scores release")
    floor, bins = parse_link_score_subject(entry.query.subject)
    values = [0 if cell.value is None else max(cell.value, 0) for cell in entry.cells]
    counts = np.zeros(bins)
    counts[bins - len(values):] = values
    return ScoreHistogram(counts=counts, floor=floor, noise=_noise_variance(entry))


def _noise_variance(entry: LedgerEntry) -> float:
    """The variance of the noise the entry's mechanism added to each count."""
    return 2 * entry.scale**2 if entry.mechanism is Mechanism.LAPLACE else entry.scale**2


def _suppressed(entry: LedgerEntry, bins: int) -> np.ndarray:
    """Which of the histogram's bins were suppressed."""
    mask = np.zeros(bins, dtype=bool)
    mask[bins - len(entry.cells):] = [cell.value is None for cell in entry.cells]
    return mask


#: Rounds of filling suppressed bins from the fit and refitting (the counts settle within two or three).
_IMPUTE_ROUNDS = 3


def _impute(histogram: ScoreHistogram, suppressed: np.ndarray, limit: float, *,
            start: tuple[float, ...] | None = None, rounds: int = _IMPUTE_ROUNDS) -> tuple[ScoreHistogram, MixtureFit]:
    """Fit, treating each suppressed bin as censored (its count is below ``limit``).

    Each suppressed bin is filled with what the fit expects there, capped just below the limit, and
    the fit repeated. Counting a suppressed bin as zero would hide the thin tails the estimates depend on (false links
    high up, true links low down); counting it as half the limit put 200 phantom pairs into a round of
    500 (FEBRL1, 2 agencies), most of them read as false links.
    """
    fit = fit_mixture(histogram, start=start)
    if not suppressed.any() or limit <= 0:
        return histogram, fit
    counts = histogram.counts.copy()
    for _ in range(rounds):
        expected = expected_counts(fit, histogram)
        counts[suppressed] = np.minimum(expected[suppressed], max(limit - 1.0, 0.0))
        histogram = ScoreHistogram(counts=counts.copy(), floor=histogram.floor, noise=histogram.noise)
        fit = fit_mixture(histogram, start=start)
    return histogram, fit


def _noise(entry: LedgerEntry, rng: np.random.Generator, size: int) -> np.ndarray:
    """Noise of the entry's mechanism and scale (continuous stand-ins for OpenDP's discrete draws)."""
    if entry.mechanism is Mechanism.LAPLACE:
        return rng.laplace(0.0, entry.scale, size)
    return rng.normal(0.0, entry.scale, size)


def _interval(values: list[float], estimate: float, top: float | None = 1.0) -> tuple[float, float]:
    """A 95% interval around ``estimate``: 1.96 bootstrap standard deviations, widened by the bootstrap's bias.

    The 2.5 and 97.5 percentiles of 30 refits are nearly their extremes, and the refits of a noisy
    fit lean to one side of it: those intervals held the exact estimate in about 7 releases of 8
    (12-13 of 16 at epsilon 1, 4 agencies). The bias term (the refits' mean off the estimate) widens
    the interval on both sides, as the direction of the noisy fit's own bias is unknown.
    """
    draws = np.asarray(values, dtype=np.float64)
    half = 1.96 * float(draws.std(ddof=1)) + abs(float(draws.mean()) - estimate)
    low, high = max(estimate - half, 0.0), estimate + half
    return low, high if top is None else min(high, top)


def _at(histogram: ScoreHistogram, fit: MixtureFit, threshold: float) -> Estimate:
    """The estimate at ``threshold`` over the counts the fit expects, not the noisy ones.

    A noisy count in a thin bin is mostly noise, clipped at zero (so biased up): weighed by its
    posterior, every such bin between the floor and the threshold added phantom true links to the
    recall's denominator (synth: 0.82 published against 0.97 true). The fit has already weighed each
    bin by its noise; its expected counts carry the signal without it. The observed total is kept.
    """
    smooth = ScoreHistogram(counts=expected_counts(fit, histogram), floor=histogram.floor, noise=histogram.noise)
    return estimate_at(smooth, fit, threshold)


def dp_estimate(entry: LedgerEntry, threshold: float, *, bootstrap: int = 30, seed: int = 0) -> Estimate:
    """Estimated precision, recall and missed links at ``threshold``, from a ``link-scores`` entry alone.

    Args:
        entry: the round's ``link-scores`` ledger entry (its noisy cells, mechanism and scale).
        threshold: the round's threshold (public: its manifest states it).
        bootstrap: refits behind the intervals; each resamples the pairs from the noisy histogram
            and adds fresh noise of the entry's scale, then applies the suppression rule again.
        seed: seeds the bootstrap (the estimate itself is deterministic).

    Returns:
        The estimate (``links`` is the noisy count at or above the threshold).
    """
    raw = noisy_histogram(entry)
    suppressed = _suppressed(entry, len(raw.counts))
    histogram, fit = _impute(raw, suppressed, entry.min_cell_size)
    # The exact estimate's precision is the median over fits from the floor and two higher floors
    # (:func:`~coordinator.linkage.calibration.floor_median`): a function of the counts alone, so
    # the published one takes it too (households: 0.9997 from the floor's fit alone, 0.9936 true).
    base = _at(histogram, fit, threshold)
    fit = floor_median(histogram, fit, threshold)
    estimate = _at(histogram, fit, threshold)
    if bootstrap <= 0 or histogram.total <= 0:
        return estimate
    rng = np.random.default_rng(seed)
    first = histogram.first
    total = int(round(histogram.total))
    probabilities = histogram.counts / histogram.total
    precisions, recalls, missed = [], [], []
    for _ in range(bootstrap):
        counts = rng.multinomial(total, probabilities).astype(np.float64)
        counts[first:] = np.rint(counts[first:] + _noise(entry, rng, len(counts) - first))
        again_suppressed = np.zeros(len(counts), dtype=bool)
        again_suppressed[first:] = counts[first:] < entry.min_cell_size
        counts = np.where(again_suppressed, 0.0, np.maximum(counts, 0.0))
        # From the fit's own optimum, one filling round: a refit from every starting point took
        # about 4 s a draw.
        resampled, refit = _impute(ScoreHistogram(counts=counts, floor=histogram.floor, noise=histogram.noise),
                                   again_suppressed,
                                   entry.min_cell_size, start=fit.parameters, rounds=1)
        again = _at(resampled, refit, threshold)
        # Centred on the published estimate: the refits skip the higher floors (a refit each), so
        # their spread is shifted by what the median moved the estimate.
        precisions.append(again.precision + estimate.precision - base.precision)
        recalls.append(again.recall + estimate.recall - base.recall)
        missed.append(again.missed + estimate.missed - base.missed)
    if not all(math.isfinite(v) for v in precisions + recalls + missed):
        return estimate
    return estimate.model_copy(update={"precision_interval": _interval(precisions, estimate.precision),
                                       "recall_interval": _interval(recalls, estimate.recall),
                                       "missed_interval": _interval(missed, estimate.missed, None)})
