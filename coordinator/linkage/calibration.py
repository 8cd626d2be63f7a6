"""Unsupervised calibration of a round: how good is a threshold, estimated from the scores alone.

The data are the Dice similarities of the record pairs a one-to-one solve links at a low floor
(every cross-agency pair inside a cluster). Those pairs are a mixture: true links, high and spread
down by recording errors, and false links, each record's best stranger, piled up just above the
floor. Two components are fitted to the binned scores by maximum likelihood (as Splink fits its m
and u probabilities without labels, and as the PPRL mixture-model literature fits match and
non-match score densities): true links as exact matches plus a beta density, false links as a
density decaying from the floor, both truncated to the floor. A false-link component is kept only
when it beats true links alone by BIC. From the fit, at every threshold ``t``:

* expected true links at or above ``t``: the bin counts times each bin's posterior match probability;
* precision: that over the links at or above ``t``;
* recall: that over all true links at or above the floor (a multi-party round passes the sum of its
  agency pairs' own counts, which its split clusters do not hide);
* missed links: the difference.

Two corrections, both without truth. A round past ``ALL_PAIRS_LIMIT`` compares only what LSH
blocking offers, which thins the pairs most near the floor, where false links live; the fit is
given the blocking's capture rate per bin, measured on a sample of the round's own encodings
(:mod:`coordinator.linkage.capture`), and counts the true links blocking never offered as missed.
And the estimate the round reports is of its final clusters (:func:`estimate_links`): merging
split clusters and attaching an agency's duplicates add true pairs the floor solve never held
(the duplicates' also join the recall's denominator). Its recall is ``tp / (tp + missed)``, the
missed true links counted from what the round saw (:mod:`coordinator.linkage.missed`): the fit's
count alone fell below the true pairs the final clusters hold and capped the recall at 1.0 where
0.989 was true. The threshold is chosen on the fit from the
floor; the reported precision is the median of that fit and fits from two higher floors (0.575,
0.6), which bracketed the truth where the floor's fit alone was 0.006-0.019 low.

Measured against the truth by ``benchmarks/quality.py`` (UK-style, households, FEBRL 1-4, synth).

Intervals come from a parametric bootstrap (resample the histogram, refit). The threshold maximises
estimated F1, or is the lowest that meets a precision floor. Pure functions of a histogram: no
record, encoding or truth is needed.

Example:
    >>> rng = np.random.default_rng(0)  # 2,000 true links (half exact), ~300 false ones near the floor
    >>> strangers = 0.55 + rng.exponential(1 / 15, 300)
    >>> scores = np.concatenate([np.ones(1000), rng.beta(12, 2, 1000), strangers[strangers < 1]])
    >>> fit = fit_mixture(score_histogram(scores, floor=0.55))
    >>> 1850 < fit.matches < 2150
    True
"""


from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from coordinator.linkage.mixture import (
    BINS,
    MixtureFit,
    ScoreHistogram,
    fit_mixture,
    fit_mixtures,
    score_histogram,
)
from pplink.models import PplinkModel

__all__ = [
    "BINS",
    "Calibration",
    "Estimate",
    "MixtureFit",
    "ScoreHistogram",
    "bootstrap_samples",
    "calibrate",
    "choose_threshold",
    "estimate_at",
    "estimate_links",
    "floor_median",
    "fit_mixture",
    "later_fits",
    "score_histogram",
]

_EPS = 1e-12


class Estimate(PplinkModel):
    """Estimated quality of the links at or above a threshold (no truth used).

    Attributes:
        threshold: the threshold.
        links: linked pairs at or above it (observed).
        precision: estimated share of them that are true.
        recall: estimated share of all true links they hold.
        f1: from the two.
        missed: estimated true links not linked.
        precision_interval: 95% bootstrap interval of the precision, if computed.
        recall_interval: 95% bootstrap interval of the recall, if computed.
        missed_interval: 95% bootstrap interval of the missed links, if computed.
    """

    threshold: float
    links: int
    precision: float
    recall: float
    f1: float
    missed: float
    precision_interval: tuple[float, float] | None = None
    recall_interval: tuple[float, float] | None = None
    missed_interval: tuple[float, float] | None = None


def _curves(histogram: ScoreHistogram, fit: MixtureFit) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bin ``k``: links, expected true links at or above bin ``k``, precision, recall."""
    counts = histogram.counts
    true = counts * np.asarray(fit.posterior)
    links = np.cumsum(counts[::-1])[::-1]
    tp = np.cumsum(true[::-1])[::-1]
    precision = np.where(links > 0, tp / np.maximum(links, _EPS), 1.0)
    recall = tp / fit.matches if fit.matches > 0 else np.zeros_like(tp)
    return links, tp, precision, np.minimum(recall, 1.0)


def estimate_at(histogram: ScoreHistogram, fit: MixtureFit, threshold: float) -> Estimate:
    """Estimated precision, recall and missed links at ``threshold`` (no intervals).

    Args:
        histogram: the linked-pair histogram.
        fit: its mixture fit.
        threshold: a threshold at or above the histogram's floor.

    Returns:
        The estimate.
    """
    bins = len(histogram.counts)
    k = min(max(int(math.floor(threshold * bins + 1e-9)), histogram.first), bins - 1)
    links, tp, precision, recall = _curves(histogram, fit)
    p, r = float(precision[k]), float(recall[k])
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return Estimate(threshold=threshold, links=int(links[k]), precision=p, recall=r, f1=f1,
                    missed=max(fit.matches - float(tp[k]), 0.0))


def estimate_links(calibration: Calibration, scores: np.ndarray, before_duplicates: np.ndarray | None = None,
                   missed: float | None = None) -> Calibration:
    """The calibration's estimate moved to the round's final links: every cross-agency pair in its clusters.

    The fit's posterior (per similarity bin) weighs each final pair; a pair below the floor (a
    merged or attached cluster can hold one) counts as a link the fit cannot vouch for. The
    denominators are the final pairs (precision) and the fit's true links (recall); the bootstrap
    intervals move with the estimate. Merging split clusters and attaching an agency's duplicates
    add true pairs the floor solve's one-to-one links never held: on the household set, about 900.

    Args:
        calibration: from :func:`calibrate`, at the round's threshold.
        scores: the Dice of every cross-agency pair sharing a final cluster.
        before_duplicates: the same before an agency's own duplicates were attached: the true pairs
            they add are pairs no one-to-one solve holds, so they join the recall's denominator too
            (without it, UK-style's estimated recall reached 1 where 0.985 was true).
        missed: the expected true links the final clusters lack, counted from what the round saw
            (:func:`coordinator.linkage.missed.missed_links`); the recall is then ``tp / (tp + missed)``
            and ``before_duplicates`` is not needed. ``None``: the fit's count of true links is the
            denominator (it can fall below the final true pairs, which capped the recall at 1).

    Returns:
        The calibration with its estimate at the final links.
    """
    estimate, fit = calibration.estimate, calibration.fit
    bins = len(fit.posterior)
    first = min(int(math.floor(calibration.floor * bins + 1e-9)), bins - 1)
    posterior = np.asarray(fit.posterior)

    def true_pairs(values: np.ndarray) -> float:
        at = np.minimum((np.asarray(values, dtype=np.float64) * bins).astype(np.int64), bins - 1)
        return float(np.where(at >= first, posterior[at], 0.0).sum())

    tp = true_pairs(scores)
    if missed is not None:
        matches = tp + max(missed, 0.0)
    else:
        gained = max(tp - true_pairs(before_duplicates), 0.0) if before_duplicates is not None else 0.0
        matches = fit.matches + gained
    precision = tp / len(scores) if len(scores) else 1.0
    recall = min(tp / matches, 1.0) if matches > 0 else 0.0
    missed = max(matches - tp, 0.0)

    def moved(interval: tuple[float, float] | None, by: float, top: float | None = 1.0) -> tuple[float, float] | None:
        if interval is None:
            return None
        low, high = interval[0] + by, interval[1] + by
        return (max(low, 0.0), high if top is None else min(high, top))

    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    final = estimate.model_copy(update={
        "links": len(scores), "precision": precision, "recall": recall, "f1": f1, "missed": missed,
        "precision_interval": moved(estimate.precision_interval, precision - estimate.precision),
        "recall_interval": moved(estimate.recall_interval, recall - estimate.recall),
        "missed_interval": moved(estimate.missed_interval, missed - estimate.missed, None),
    })
    return calibration.model_copy(update={"estimate": final})


def choose_threshold(
    histogram: ScoreHistogram,
    fit: MixtureFit,
    *,
    precision_floor: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> float:
    """The threshold (a bin edge) that maximises estimated F1, or the lowest meeting a precision floor.

    Args:
        histogram: the linked-pair histogram.
        fit: its mixture fit.
        precision_floor: if given, the lowest threshold whose estimated precision reaches it (the
            highest allowed threshold if none does).
        bounds: the agreed range the threshold must stay within.

    Returns:
        The threshold.
    """
    bins = len(histogram.counts)
    lo = max(histogram.first, int(math.ceil(bounds[0] * bins - 1e-9)))
    hi = min(bins - 1, int(math.floor(bounds[1] * bins + 1e-9)))
    if lo > hi:
        return float(min(max(histogram.floor, bounds[0]), bounds[1]))
    _, _, precision, recall = _curves(histogram, fit)
    ks = np.arange(lo, hi + 1)
    if precision_floor is not None:
        ok = ks[precision[ks] >= precision_floor]
        return round(float(ok[0] if len(ok) else hi) / bins, 6)
    p, r = precision[ks], recall[ks]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, _EPS), 0.0)
    return round(float(ks[int(np.argmax(f1))]) / bins, 6)


class Calibration(PplinkModel):
    """A round's calibration: the fit, the chosen threshold and the estimate there, with intervals.

    Attributes:
        method: ``"auto"`` (estimated F1), ``"precision_floor"`` or ``"fixed"``.
        threshold: the threshold used.
        floor: the solve's floor the estimate starts from.
        estimate: estimated precision, recall and missed links at the threshold, with intervals.
        fit: the mixture fit.
        bootstrap: bootstrap refits behind the intervals.
        counts: the histogram's bin counts (exact: the coordinator keeps them; only their
            ``link-scores`` release leaves it, see :mod:`coordinator.release.calibration`).
    """

    method: str
    threshold: float
    floor: float
    estimate: Estimate
    fit: MixtureFit
    bootstrap: int
    counts: tuple[float, ...] = ()

    @property
    def histogram(self) -> ScoreHistogram:
        """The linked-pair histogram the calibration was fitted to."""
        return ScoreHistogram(counts=np.asarray(self.counts, dtype=np.float64), floor=self.floor)


#: Floors above the solve's the fit is repeated from (at or below the threshold), for the median below.
_ALTERNATIVE_FLOORS = (0.575, 0.6)


def floor_median(histogram: ScoreHistogram, fit: MixtureFit, threshold: float) -> MixtureFit:
    """The fit whose precision at ``threshold`` is the median of fits from the floor and from higher floors.

    The false links' exponential decay fits the pairs just above the floor (each record's best
    stranger among very many) less well than the tail the threshold cuts: from the floor alone the
    precision came out 0.006-0.019 too low on households and synth, and the fits from 0.575 and 0.6
    sat on both sides of the truth (UK-style, households, synth, two secrets each; all-pairs
    histograms). Above its floor the chosen fit's posterior is used, below it the first fit's;
    the count of true links (the recall's denominator) stays the first fit's.
    """
    bins = len(histogram.counts)
    candidates = [(estimate_at(histogram, fit, threshold).precision, fit)]
    for floor in _ALTERNATIVE_FLOORS:
        if not histogram.floor < floor <= threshold:
            continue
        first = int(math.floor(floor * bins + 1e-9))
        higher = _from_floor(histogram, floor)
        if higher.total <= 0:
            continue
        other = fit_mixture(higher)
        posterior = np.asarray(fit.posterior).copy()
        posterior[first:] = np.asarray(other.posterior)[first:]
        spliced = fit.model_copy(update={"posterior": tuple(float(p) for p in posterior)})
        candidates.append((estimate_at(histogram, spliced, threshold).precision, spliced))
    candidates.sort(key=lambda pair: pair[0])
    return candidates[(len(candidates) - 1) // 2][1]


def _higher_histograms(histogram: ScoreHistogram) -> list[ScoreHistogram]:
    """``histogram`` from each of :data:`_ALTERNATIVE_FLOORS` above its floor (those holding pairs)."""
    return [h for h in (_from_floor(histogram, floor) for floor in _ALTERNATIVE_FLOORS if histogram.floor < floor)
            if h.total > 0]


def bootstrap_samples(histogram: ScoreHistogram, bootstrap: int, seed: int = 0) -> list[ScoreHistogram]:
    """The resampled histograms behind :func:`calibrate`'s intervals: ``bootstrap`` draws, in order, from ``seed``."""
    if bootstrap <= 0 or histogram.total <= 0:
        return []
    rng = np.random.default_rng(seed)
    probabilities = histogram.counts / histogram.total
    return [ScoreHistogram(rng.multinomial(histogram.total, probabilities).astype(np.float64),
                           histogram.floor, histogram.capture) for _ in range(bootstrap)]


def later_fits(histogram: ScoreHistogram, fit: MixtureFit, bootstrap: int = 20, seed: int = 0,
               ) -> list[tuple[ScoreHistogram, tuple[float, ...] | None]]:
    """The fits :func:`calibrate` makes after its first fit ``fit``: ``(histogram, start)`` of each.

    Its higher floors' fits (from the fixed starts; made whether or not the threshold needs them,
    as ``calibrate(..., workers=2)`` makes them) and its bootstrap refits (each from ``fit``'s
    parameters, which no later step changes). A caller that knows ``fit`` early can make them
    beside other fits (:func:`~coordinator.linkage.mixture.fit_mixtures`); ``calibrate`` then finds
    them among the recent fits.
    """
    return ([(h, None) for h in _higher_histograms(histogram)]
            + [(h, fit.parameters) for h in bootstrap_samples(histogram, bootstrap, seed)])


def _from_floor(histogram: ScoreHistogram, floor: float) -> ScoreHistogram:
    """``histogram`` with the bins below ``floor``'s emptied, from that floor."""
    counts = histogram.counts.copy()
    counts[: int(math.floor(floor * len(counts) + 1e-9))] = 0.0
    return ScoreHistogram(counts=counts, floor=floor, capture=histogram.capture, noise=histogram.noise)


def _shifted(interval: tuple[float, float], by: float, top: float | None) -> tuple[float, float]:
    low, high = interval[0] + by, interval[1] + by
    return max(low, 0.0), high if top is None else min(high, top)


def _interval(values: list[float]) -> tuple[float, float]:
    low, high = np.percentile(np.asarray(values), [2.5, 97.5])
    return float(low), float(high)


def calibrate(
    histogram: ScoreHistogram,
    *,
    threshold: float | None = None,
    precision_floor: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    bootstrap: int = 20,
    seed: int = 0,
    matches: float | None = None,
    higher_floors: bool = True,
    workers: int = 1,
    warm: Sequence[float] | None = None,
) -> Calibration:
    """Fit, choose (unless ``threshold`` is given) and estimate with bootstrap intervals.

    Args:
        histogram: the linked-pair histogram.
        threshold: a fixed threshold to estimate at; ``None`` chooses one.
        precision_floor: choose the lowest threshold meeting it, rather than the best F1.
        bounds: the agreed range the chosen threshold must stay within.
        bootstrap: refits on resampled histograms behind the intervals (0: no intervals).
        seed: seeds the resampling (the estimate is deterministic).
        matches: all true links, when known better than this histogram's fit knows them (a
            multi-party solve hides some: the sum of the agency pairs' own fits); the larger of it
            and the fit's own count is used; bootstrap refits scale it by their own change.
        higher_floors: take the median precision over fits from higher floors too (see
            :func:`floor_median`); an agency pair's own fit, read only for its count of true
            links, skips them.
        workers: above 1, the higher floors' fits are made beside the first one, whether or not a threshold
            needs them (the result does not depend on it).
        warm: a related fit's parameters for the fit to start from in place of the fixed starting
            points (:func:`~coordinator.linkage.mixture.warm_start`: an agency pair's fit starts from
            the round's). The higher floors' fits start from the fixed points.

    Returns:
        The calibration.

    Examples:
        >>> rng = np.random.default_rng(1)
        >>> strangers = 0.5 + rng.exponential(1 / 15, 500)
        >>> scores = np.concatenate([np.ones(1500), rng.beta(12, 2, 1500), strangers[strangers < 1]])
        >>> cal = calibrate(score_histogram(scores, floor=0.5), bootstrap=10)
        >>> 0.6 < cal.threshold < 0.85, cal.estimate.precision > 0.97
        (True, True)
    """
    if workers > 1 and higher_floors:
        # The higher floors' fits do not depend on the first fit: made now, their runs beside its
        # runs, the median below finds them among the recent fits (those a chosen threshold rules out are spare).
        # They start from the fixed points, not warm from the first fit: a higher floor cuts away most
        # false links, and from the first fit's point such a fit can settle in another optimum (on the
        # test mixtures of calibrate's example and test_capture the precision moved by 0.003-0.01).
        higher = _higher_histograms(histogram)
        fit = fit_mixtures([histogram, *higher], warms=[warm] + [None] * len(higher))[0]
    else:
        fit = fit_mixture(histogram, warm=warm)
    own_matches = fit.matches
    if matches is not None:
        # Never fewer than this histogram's own fit shows: the agency pairs' fits are each on fewer
        # pairs, and on households and synth their sum fell 2-4% below the round's own count (and
        # below the truth), which put the estimated recall near 1 where 0.97 was true.
        fit = fit.model_copy(update={"matches": max(matches, own_matches)})
    if threshold is None:
        method = "auto" if precision_floor is None else "precision_floor"
        chosen = choose_threshold(histogram, fit, precision_floor=precision_floor, bounds=bounds)
    else:
        method, chosen = "fixed", float(threshold)
    base = estimate_at(histogram, fit, chosen)
    if higher_floors:
        fit = floor_median(histogram, fit, chosen)
    estimate = estimate_at(histogram, fit, chosen)
    if bootstrap > 0 and histogram.total > 0:
        precisions, recalls, missed = [], [], []
        # Every resample is drawn first, in order, so the refits (independent) advance side by side.
        samples = bootstrap_samples(histogram, bootstrap, seed)
        refits = fit_mixtures(samples, starts=[fit.parameters] * len(samples))
        for resampled, refit in zip(samples, refits, strict=True):
            if matches is not None and own_matches > 0:
                refit = refit.model_copy(update={"matches": max(refit.matches * fit.matches / own_matches,
                                                                refit.matches)})
            again = estimate_at(resampled, refit, chosen)
            precisions.append(again.precision)
            recalls.append(again.recall)
            missed.append(again.missed)
        # The bootstrap refits the base fit; its spread moves with the estimate (see _floor_median).
        estimate = estimate.model_copy(update={
            "precision_interval": _shifted(_interval(precisions), estimate.precision - base.precision, 1.0),
            "recall_interval": _shifted(_interval(recalls), estimate.recall - base.recall, 1.0),
            "missed_interval": _shifted(_interval(missed), estimate.missed - base.missed, None),
        })
    return Calibration(method=method, threshold=chosen, floor=histogram.floor, estimate=estimate, fit=fit,
                       bootstrap=bootstrap, counts=tuple(float(c) for c in histogram.counts))
