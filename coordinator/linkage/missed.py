"""The true links a round did not hand out, counted from what it saw rather than from a fitted total.

The recall's denominator used to be the fit's count of true links at or above the floor (the sum of
the agency pairs' fits). The final clusters, though, hold true pairs no one-to-one count holds
(merged split clusters, transitive pairs of multi-party clusters, attached duplicates), so the
estimated true pairs handed out exceeded that count and the recall was capped at 1.0 where 0.989 was
true (UK-style and synth); and the links the round lost were never counted. Here the missed true
links are two parts, and the recall is ``tp / (tp + missed)``:

* **seen, not handed out**: per similarity bin, the true links the floor solves hold (the bin's
  count times its posterior match probability; with three or more agencies the larger of the
  round's and the sum of each agency pair's own solve, which shows split clusters' pairs) less the
  final pairs' true links in that bin: mostly true links between the floor and the threshold.
  (Weighing each floor pair the final clusters lack by its bin's posterior was tried: those pairs
  are mostly strangers the final solve passed over, and the count came out 2-4 times the truth.)
* **lost to blocking**: each bin's expected true links over the blocking capture rate, less those
  found (zero when all pairs were compared), counted only beyond the first part: the total is the
  larger of the two counts of all true links, the per-bin union above and the capture-corrected
  fit. The capture rate is measured on all pairs near the floor, nearly all strangers, and true
  links at the same similarity collide more often, so adding the two overcounted (households, 3,000
  families: 956 missed links against 475 true); the union alone, with no blocking term, counted
  104 there, as the blocked pairs near the floor never reach the histogram.

True links below the floor are not counted: the fitted density's mass there was tried and was
unstable (FEBRL1 under one secret: 47 phantom links of 500, recall 0.914 where 1.0 was true), while
true pairs below the floor were 0.1-0.15% of all on the UK-style and household sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.linkage.mixture import MixtureFit, ScoreHistogram

__all__ = ["MissedLinks", "missed_links"]


class MissedLinks:
    """The expected true links a round did not hand out, by cause (see the module docstring).

    Attributes:
        seen: linked by some floor solve, not in the final clusters.
        blocking: true links blocking never offered.
    """

    __slots__ = ("blocking", "seen")

    def __init__(self, seen: float, blocking: float) -> None:
        self.seen, self.blocking = seen, blocking

    @property
    def total(self) -> float:
        """All of them."""
        return self.seen + self.blocking


def _binned(scores: np.ndarray, bins: int) -> np.ndarray:
    at = np.minimum((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), bins - 1)
    return np.bincount(at, minlength=bins).astype(np.float64)


def missed_links(
    final_scores: np.ndarray,
    fit: MixtureFit,
    histogram: ScoreHistogram,
    pair_fits: Sequence[tuple[ScoreHistogram, MixtureFit]] = (),
) -> MissedLinks:
    """Expected true links not in the final clusters.

    Args:
        final_scores: the Dice of every cross-agency pair sharing a final cluster.
        fit: the round's mixture fit (its posterior per bin, its true-link shape).
        histogram: the floor solve's histogram (its floor and the blocking capture rates).
        pair_fits: each agency pair's own floor solve's histogram and fit (three or more agencies).

    Returns:
        The missed links by cause.
    """
    posterior = np.asarray(fit.posterior)
    bins = len(posterior)
    first = histogram.first
    seen_true = histogram.counts * posterior
    if pair_fits:
        by_pairs = sum((h.counts * np.asarray(f.posterior) for h, f in pair_fits), np.zeros(bins))
        seen_true = np.maximum(seen_true, by_pairs)
    final_true = _binned(final_scores, bins) * posterior
    union = float(np.maximum(seen_true[first:], final_true[first:]).sum())
    capture = histogram.capture
    # The fit's own count: the true links blocking never offered added over each bin's capture rate.
    counted = float((seen_true / capture).sum()) if capture is not None else float(seen_true.sum())
    seen = union - float(final_true[first:].sum())
    blocking = max(counted - union, 0.0)
    return MissedLinks(seen=seen, blocking=blocking)
