"""Suggest a Dice threshold from the similarity histogram, and draw the histogram as text.

Candidate-pair similarities are bimodal: a large non-match mode (blocked candidates sit around
0.4-0.6, all pairs lower) and a small match mode near 0.9-1.0. The suggestion is the lowest point
of the valley between the two dominant modes, found on log counts (the modes differ by orders of
magnitude) after Gaussian smoothing (single bins are noisy).

When there is no such valley the suggestion falls back to :data:`DEFAULT_THRESHOLD` and says why:

* no pairs at all;
* a single mode (every candidate looks alike: too few records, or no overlap between agencies);
* a "valley" below :data:`MIN_VALLEY`, which would link pairs that share little more than chance.

0.8 is the agreement's default threshold; on FEBRL4 with clkhash and anonlink's greedy solver it
gives precision 1.000 and recall 0.992 (``shared/FACTS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from coordinator.linkage.match import SimilarityHistogram
from pplink.models import PplinkModel

__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_VALLEY",
    "ThresholdSuggestion",
    "analyse_threshold",
    "render_histogram",
    "suggest_threshold",
]

#: Suggested when the histogram has no usable valley.
DEFAULT_THRESHOLD = 0.8
#: A valley below this is not taken as the match / non-match boundary.
MIN_VALLEY = 0.5
#: Smoothing width, in similarity units (1.5 bins of a 100-bin histogram).
_SMOOTHING = 0.015
#: A mode counts only if it stands this far (natural log of counts, so a factor of 1.65) above
#: the higher of the valleys beside it.
_MIN_PROMINENCE = 0.5
#: Two modes closer than this are one mode.
_MIN_SEPARATION = 0.1


class ThresholdSuggestion(PplinkModel):
    """A suggested threshold and how it was found.

    Attributes:
        threshold: the suggested Dice threshold.
        from_valley: True when it is the valley between two modes, False for the fallback.
        reason: one sentence saying how it was chosen (printed by the CLI).
        modes: similarities of the two dominant modes (lower first) when found.
    """

    threshold: float
    from_valley: bool
    reason: str
    modes: tuple[float, ...] = ()


def _counts(histogram: SimilarityHistogram | Sequence[int]) -> np.ndarray:
    counts = histogram.counts if isinstance(histogram, SimilarityHistogram) else histogram
    out = np.asarray(counts, dtype=np.float64)
    if out.ndim != 1 or len(out) < 2 or (out < 0).any():
        raise ValueError("a histogram needs at least 2 non-negative bin counts")
    return out


def _smooth(values: np.ndarray, sigma_bins: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma_bins))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_bins) ** 2)
    padded = np.pad(values, radius, mode="edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def _peaks(values: np.ndarray) -> list[tuple[int, float]]:
    """Local maxima (middle of a plateau) and their topographic prominence."""
    n = len(values)
    peaks = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        left_lower = i == 0 or values[i - 1] < values[i]
        right_lower = j == n - 1 or values[j + 1] < values[i]
        if left_lower and right_lower:
            peaks.append((i + j) // 2)
        i = j + 1
    out = []
    for p in peaks:
        height = values[p]
        # Each side's base: the lowest point before higher ground. A side that runs into the
        # edge of [0, 1] first has no base (a mode at 1.0 is a real mode: identical encodings).
        bases = []
        for step in (-1, 1):
            k, low = p, height
            while 0 <= k + step < n and values[k + step] <= height:
                k += step
                low = min(low, values[k])
            if 0 <= k + step < n:
                bases.append(low)
        base = max(bases) if bases else float(values.min())
        out.append((p, float(height - base)))
    return out


def analyse_threshold(histogram: SimilarityHistogram | Sequence[int]) -> ThresholdSuggestion:
    """Find the valley between the non-match and match modes of a similarity histogram.

    Args:
        histogram: a :class:`~coordinator.linkage.match.SimilarityHistogram`, or its bin counts over [0, 1].

    Returns:
        The suggestion with its reason.

    Raises:
        ValueError: fewer than 2 bins, or a negative count.

    Examples:
        >>> counts = [0] * 30 + [50, 400, 2000, 400, 50] + [5] * 10 + [1] * 40 + [3, 20, 60, 90, 60, 20, 3] + [0] * 8
        >>> analyse_threshold(counts).threshold  # the middle of the flat run of 1s
        0.655
        >>> analyse_threshold([0] * 100).reason
        'no candidate pairs: using the default threshold 0.8'
    """
    counts = _counts(histogram)
    bins = len(counts)
    width = 1.0 / bins
    if counts.sum() == 0:
        return ThresholdSuggestion(
            threshold=DEFAULT_THRESHOLD,
            from_valley=False,
            reason=f"no candidate pairs: using the default threshold {DEFAULT_THRESHOLD}",
        )
    smooth = _smooth(np.log1p(counts), max(_SMOOTHING * bins, 0.5))
    peaks = sorted(_peaks(smooth), key=lambda peak: -peak[1])
    modes = [p for p, prominence in peaks if prominence >= _MIN_PROMINENCE]
    modes = modes[:1] + [p for p in modes[1:] if abs(p - modes[0]) * width >= _MIN_SEPARATION][:1]
    if len(modes) < 2:
        where = (modes[0] + 0.5) * width if modes else (int(np.argmax(smooth)) + 0.5) * width
        return ThresholdSuggestion(
            threshold=DEFAULT_THRESHOLD,
            from_valley=False,
            reason=(
                f"one mode only (near {where:.2f}), no valley between matches and non-matches: "
                f"using the default threshold {DEFAULT_THRESHOLD}"
            ),
            modes=(round(where, 6),),
        )
    low, high = sorted(modes)
    segment = smooth[low : high + 1]
    minima = np.flatnonzero(segment == segment.min())
    # The middle of the lowest run (a flat valley of empty bins has no single lowest bin).
    valley = low + int(minima[len(minima) // 2])
    threshold = round((valley + 0.5) * width, 6)
    mode_values = (round((low + 0.5) * width, 6), round((high + 0.5) * width, 6))
    if threshold < MIN_VALLEY:
        return ThresholdSuggestion(
            threshold=DEFAULT_THRESHOLD,
            from_valley=False,
            reason=(
                f"the valley between the two modes is at {threshold:.3f}, below {MIN_VALLEY}: "
                f"using the default threshold {DEFAULT_THRESHOLD}"
            ),
            modes=mode_values,
        )
    return ThresholdSuggestion(
        threshold=threshold,
        from_valley=True,
        reason=(
            f"valley between the non-match mode near {mode_values[0]:.2f} "
            f"and the match mode near {mode_values[1]:.2f}"
        ),
        modes=mode_values,
    )


def suggest_threshold(histogram: SimilarityHistogram | Sequence[int]) -> float:
    """Suggest a Dice threshold: the valley between the two modes, else the default.

    See :func:`analyse_threshold` for the reason behind the number.

    Args:
        histogram: a :class:`~coordinator.linkage.match.SimilarityHistogram`, or its bin counts over [0, 1].

    Returns:
        The suggested threshold.

    Raises:
        ValueError: fewer than 2 bins, or a negative count.

    Examples:
        >>> suggest_threshold([0] * 10)
        0.8
    """
    return analyse_threshold(histogram).threshold


def render_histogram(
    histogram: SimilarityHistogram | Sequence[int],
    *,
    suggestion: float | None = None,
    rows: int = 25,
    width: int = 40,
) -> str:
    """Draw the histogram as text, one row per similarity range, bars on a log scale.

    The row that holds ``suggestion`` is marked. Rows run from the first non-empty bin (rounded
    down to a multiple of 0.05) to 1.0; adjacent bins are merged to fit in ``rows`` rows.

    Args:
        histogram: a :class:`~coordinator.linkage.match.SimilarityHistogram`, or its bin counts over [0, 1].
        suggestion: a threshold to mark, if any.
        rows: most rows to draw.
        width: longest bar, in characters.

    Returns:
        The drawing, lines joined by newlines, without a trailing newline.

    Raises:
        ValueError: fewer than 2 bins, a negative count, or ``rows``/``width`` below 1.

    Examples:
        >>> print(render_histogram([0, 0, 1, 10], suggestion=0.7, rows=2, width=10))
        Dice similarity of 11 pairs (bars on a log scale)
        0.50-0.75 | ###         1 <- suggested threshold 0.700
        0.75-1.00 | ########## 10
    """
    counts = _counts(histogram).astype(np.int64)
    if rows < 1 or width < 1:
        raise ValueError("rows and width must be at least 1")
    bins = len(counts)
    blocked = isinstance(histogram, SimilarityHistogram) and histogram.blocked
    kind = "candidate pairs" if blocked else "pairs"
    header = f"Dice similarity of {int(counts.sum()):,} {kind} (bars on a log scale)"
    nonzero = np.flatnonzero(counts)
    if len(nonzero) == 0:
        return header + "\n(no pairs)"
    first = int(math.floor(nonzero[0] / bins / 0.05 + 1e-9) * 0.05 * bins)
    per_row = max(1, math.ceil((bins - first) / rows))
    starts = list(range(first, bins, per_row))
    totals = [int(counts[s : s + per_row].sum()) for s in starts]
    scale = math.log1p(max(totals))
    label_width = len(f"{max(totals):,}")
    lines = [header]
    for start, total in zip(starts, totals, strict=True):
        lo, hi = start / bins, min(start + per_row, bins) / bins
        bar = "#" * round(width * math.log1p(total) / scale) if scale else ""
        line = f"{lo:.2f}-{hi:.2f} | {bar:<{width}} {total:>{label_width},}"
        last = start + per_row >= bins
        if suggestion is not None and (lo <= suggestion < hi or (last and suggestion == hi)):
            line += f" <- suggested threshold {suggestion:.3f}"
        lines.append(line)
    return "\n".join(lines)
