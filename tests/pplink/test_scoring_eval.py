"""Evaluation figures agree with reference implementations and with each other."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from pplink.scoring.evaluation import (
    auc,
    auc_from_histogram,
    bin_scores,
    calibration_from_histogram,
    error_rates,
    top_share_from_histogram,
    top_share_metrics,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=60))
def test_auc_matches_scikit_learn_with_ties(pairs: list[tuple[int, bool]]) -> None:
    """Invariant: our Mann-Whitney AUC equals scikit-learn's roc_auc_score, ties included."""
    scores = np.array([p[0] for p in pairs], dtype=float)
    labels = np.array([p[1] for p in pairs])
    if labels.all() or not labels.any():
        assert math.isnan(auc(scores, labels))
        return
    assert math.isclose(auc(scores, labels), roc_auc_score(labels, scores), abs_tol=1e-12)


def test_histogram_auc_equals_exact_auc_of_binned_scores() -> None:
    """AUC from (bin, outcome) counts is exactly the AUC of the scores replaced by their bin."""
    rng = np.random.default_rng(727)
    logits = rng.normal(-1.5, 1.0, 3000)
    labels = rng.random(3000) < 1 / (1 + np.exp(-logits))
    edges = [-4.0 + 0.25 * i for i in range(25)]
    bins = bin_scores(logits, edges)
    pos = np.bincount(bins[labels], minlength=26)
    neg = np.bincount(bins[~labels], minlength=26)
    assert math.isclose(auc_from_histogram(pos, neg), auc(bins.astype(float), labels), abs_tol=1e-12)
    # Fine public bins lose little against the exact scores.
    assert abs(auc_from_histogram(pos, neg) - auc(logits, labels)) < 0.01
    # Whole-bin flagging from the histogram agrees with flagging by the bin-edge threshold.
    top = top_share_from_histogram(pos, neg, edges, 0.1)
    flagged = logits >= top.threshold
    assert math.isclose(top.flagged_share, flagged.mean())
    assert math.isclose(top.precision, labels[flagged].mean())
    assert math.isclose(top.recall, flagged[labels].mean())
    # Calibration rows cover everyone once, and the observed rates are the positives' share.
    rows = calibration_from_histogram(pos, neg, edges)
    assert sum(r.people for r in rows) == 3000 and rows[0].low == 0.0 and rows[-1].high == 1.0


def test_exact_top_share_flags_the_highest_scores() -> None:
    """The top 20% of ten scores is the two highest; precision and recall follow from their labels."""
    scores = np.arange(10, dtype=float)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    top = top_share_metrics(scores, labels, 0.2)
    assert (top.threshold, top.flagged_share, top.precision, top.recall) == (8.0, 0.2, 0.5, 0.5)


def test_error_rates_never_guess_a_suppressed_count() -> None:
    """A rate needing a suppressed count is NaN; the other rate is still given."""
    rates = error_rates({"tp": 40, "fp": None, "fn": 10, "tn": 500})
    assert math.isnan(rates.fpr) and rates.fnr == 0.2 and math.isnan(rates.people)
