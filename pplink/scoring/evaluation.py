"""Model evaluation figures: exact ones (the label owner's own view) and ones derived from DP counts.

Two kinds of input, the same figures:

* **Exact**, from scores and labels the label owner holds (:func:`auc`, :func:`top_share_metrics`):
  they never leave the label owner.
* **Released**, from the noisy (score bin x outcome) counts the release engine published
  (:func:`auc_from_histogram`, :func:`top_share_from_histogram`, :func:`calibration_from_histogram`)
  and from noisy confusion counts (:func:`error_rates`). Everything here is post-processing of DP
  releases, so it costs no further privacy. A suppressed cell (its noisy count fell below the
  agreement's minimum cell size) counts as empty in the histogram figures: most suppressed cells
  are the sparse tails of the score range, and counting them as half the minimum biased the AUC
  by several points in our trials, against under one point for empty. An error rate that needs
  a suppressed cell is NaN (shown as suppressed), never a guess.

Pure functions over numpy arrays and plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CalibrationRow",
    "ErrorRates",
    "TopShare",
    "auc",
    "auc_from_histogram",
    "bin_scores",
    "calibration_from_histogram",
    "error_rates",
    "fill_suppressed",
    "merge_calibration",
    "sigmoid",
    "top_share_from_histogram",
    "top_share_metrics",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, computed without overflow.

    >>> sigmoid(np.array([0.0, 1000.0, -1000.0])).tolist()
    [0.5, 1.0, 0.0]
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half.

    Returns NaN when there are no positives or no negatives.

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    >>> auc(np.array([1.0, 1.0]), np.array([0, 1]))
    0.5
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over ties (Mann-Whitney U).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class TopShare:
    """Precision and recall when the highest-scoring ``flagged_share`` of people are flagged.

    Attributes:
        threshold: the score at or above which a person is flagged.
        flagged_share: the share actually flagged (ties and bin edges make it differ from the asked share).
        precision: flagged people with the outcome / flagged people (NaN if none flagged).
        recall: flagged people with the outcome / people with the outcome (NaN if none have it).
    """

    threshold: float
    flagged_share: float
    precision: float
    recall: float


def top_share_metrics(scores: np.ndarray, labels: np.ndarray, share: float) -> TopShare:
    """Exact precision and recall at the top ``share`` of scores.

    >>> t = top_share_metrics(np.array([0.9, 0.8, 0.3, 0.2, 0.1]), np.array([1, 0, 1, 0, 0]), 0.4)
    >>> t.threshold, t.flagged_share, t.precision, t.recall
    (0.8, 0.4, 0.5, 0.5)
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.size == 0:
        return TopShare(math.nan, 0.0, math.nan, math.nan)
    k = max(1, int(math.ceil(share * scores.size)))
    threshold = float(np.sort(scores)[::-1][k - 1])
    flagged = scores >= threshold
    n_flagged, n_pos = int(flagged.sum()), int(labels.sum())
    tp = int((flagged & labels).sum())
    return TopShare(threshold, n_flagged / scores.size, tp / n_flagged if n_flagged else math.nan,
                    tp / n_pos if n_pos else math.nan)


def bin_scores(logits: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The bin of each logit: 0 below ``edges[0]``, ``i`` in ``[edges[i-1], edges[i])``, ``len(edges)`` above.

    >>> bin_scores(np.array([-9.0, -1.0, 0.0, 9.0]), [-1.0, 0.0, 1.0]).tolist()
    [0, 1, 2, 3]
    """
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(logits, dtype=np.float64), side="right")


def fill_suppressed(values: Sequence[int | None]) -> np.ndarray:
    """Released counts as floats for the histogram figures: suppressed (None) and negative become 0.

    >>> fill_suppressed([12, None, -3]).tolist()
    [12.0, 0.0, 0.0]
    """
    return np.array([0.0 if v is None else max(0.0, float(v)) for v in values], dtype=np.float64)


def auc_from_histogram(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from counts per score bin (bins in increasing score order); people in one bin tie.

    >>> auc_from_histogram(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    1.0
    >>> auc_from_histogram(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    0.5
    """
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return math.nan
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(((pos * (neg_below + neg / 2.0)).sum()) / (total_pos * total_neg))


def top_share_from_histogram(
    positives: np.ndarray, negatives: np.ndarray, edges: Sequence[float], share: float
) -> TopShare:
    """Precision and recall at the top ``share``, flagging whole bins from the top down.

    The threshold is the lower edge of the lowest flagged bin: the bin edge at which the flagged
    share of the (noisy) total first reaches ``share``.

    >>> t = top_share_from_histogram(np.array([1.0, 2.0, 3.0]), np.array([10.0, 3.0, 1.0]), [0.0, 1.0], 0.2)
    >>> t.threshold, round(t.flagged_share, 3), t.precision, t.recall
    (1.0, 0.2, 0.75, 0.5)
    """
    pos = [float(v) for v in positives]
    neg = [float(v) for v in negatives]
    total = sum(pos) + sum(neg)
    if total <= 0:
        return TopShare(math.nan, 0.0, math.nan, math.nan)
    flagged_pos = flagged_all = 0.0
    lowest = len(pos) - 1
    for b in range(len(pos) - 1, -1, -1):
        flagged_pos += pos[b]
        flagged_all += pos[b] + neg[b]
        lowest = b
        if flagged_all >= share * total:
            break
    threshold = float(edges[lowest - 1]) if lowest >= 1 else -math.inf
    return TopShare(threshold, flagged_all / total, flagged_pos / flagged_all if flagged_all else math.nan,
                    flagged_pos / sum(pos) if sum(pos) > 0 else math.nan)


@dataclass(frozen=True)
class CalibrationRow:
    """One score bin: its probability range, the people in it and the observed outcome rate."""

    low: float
    high: float
    people: float
    observed_rate: float


def calibration_from_histogram(positives: np.ndarray, negatives: np.ndarray,
                               edges: Sequence[float]) -> list[CalibrationRow]:
    """Observed outcome rate per score bin, to set beside the predicted probability range.

    >>> rows = calibration_from_histogram(np.array([1.0, 6.0]), np.array([9.0, 4.0]), [0.0])
    >>> [(r.low, r.high, r.people, r.observed_rate) for r in rows]
    [(0.0, 0.5, 10.0, 0.1), (0.5, 1.0, 10.0, 0.6)]
    """
    probs = [0.0, *(1.0 / (1.0 + math.exp(-e)) for e in edges), 1.0]
    rows = []
    for b, (p, n) in enumerate(zip(positives, negatives, strict=True)):
        people = float(p + n)
        rows.append(CalibrationRow(probs[b], probs[b + 1], people, float(p) / people if people > 0 else math.nan))
    return rows


def merge_calibration(rows: Sequence[CalibrationRow], min_people: float) -> list[CalibrationRow]:
    """Merge neighbouring score bins until each holds at least ``min_people`` (for display).

    Post-processing of released counts: with small holdouts, single bins are too noisy to read.
    A short remainder at the top joins the last merged row.

    >>> rows = calibration_from_histogram(np.array([1.0, 2.0, 6.0]), np.array([19.0, 8.0, 4.0]), [0.0, 1.0])
    >>> [(r.low, r.high, r.people, r.observed_rate) for r in merge_calibration(rows, 15)]
    [(0.0, 0.5, 20.0, 0.05), (0.5, 1.0, 20.0, 0.4)]
    """
    merged: list[CalibrationRow] = []
    low = people = positives = 0.0
    started = False
    for row in rows:
        if row.people <= 0:
            continue
        if not started:
            low, started = row.low, True
        people += row.people
        positives += row.observed_rate * row.people
        if people >= min_people:
            merged.append(CalibrationRow(low, row.high, people, positives / people))
            started, people, positives = False, 0.0, 0.0
    if started and people > 0:
        if merged:
            last = merged.pop()
            total = last.people + people
            merged.append(CalibrationRow(last.low, rows[-1].high, total,
                                         (last.observed_rate * last.people + positives) / total))
        else:
            merged.append(CalibrationRow(low, rows[-1].high, people, positives / people))
    return merged


@dataclass(frozen=True)
class ErrorRates:
    """False positive and false negative rates from (noisy) confusion counts.

    Attributes:
        fpr: fp / (fp + tn): people without the outcome who were flagged.
        fnr: fn / (fn + tp): people with the outcome who were missed.
        people: tp + fp + fn + tn.
    """

    fpr: float
    fnr: float
    people: float


def error_rates(counts: Mapping[str, float | None]) -> ErrorRates:
    """FPR and FNR from ``{"tp", "fp", "fn", "tn"}`` counts.

    A rate is NaN when a count it needs was suppressed (None) or its denominator is not positive;
    ``people`` is NaN when any count was suppressed.

    >>> error_rates({"tp": 30, "fp": 10, "fn": 10, "tn": 90})
    ErrorRates(fpr=0.1, fnr=0.25, people=140.0)
    >>> error_rates({"tp": None, "fp": 10, "fn": 12, "tn": 90}).fnr
    nan
    """
    values = {k: counts.get(k, 0.0) for k in ("tp", "fp", "fn", "tn")}

    def rate(num: str, other: str) -> float:
        a, b = values[num], values[other]
        if a is None or b is None:
            return math.nan
        a, b = max(0.0, float(a)), max(0.0, float(b))
        return a / (a + b) if a + b > 0 else math.nan

    known = [v for v in values.values() if v is not None]
    people = math.fsum(max(0.0, float(v)) for v in known) if len(known) == 4 else math.nan
    return ErrorRates(rate("fp", "tn"), rate("fn", "tp"), people)
