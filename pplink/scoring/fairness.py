"""Error rates by group from noisy confusion counts, each with an interval that counts the DP noise too.

For a rate ``p = a / (a + c)`` over ``n = a + c`` people, the interval is ``p +- z * se`` with
``se^2 = p (1 - p) / n`` (sampling) ``+ ((1 - p)^2 + p^2) sigma^2 / n^2`` (the noise on the two
counts, by the delta method), clipped to [0, 1]. Suppressed or empty counts give no rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["GroupRates", "Rate", "group_rates", "rate_with_interval"]

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """A rate and its 95% interval (NaN when it cannot be computed)."""

    value: float
    low: float
    high: float

    def text(self) -> str:
        """``0.123 [0.100, 0.150]`` or ``-``."""
        if math.isnan(self.value):
            return "-"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def rate_with_interval(numerator: float | None, other: float | None, noise_sd: float) -> Rate:
    """``numerator / (numerator + other)`` with a 95% interval for sampling and DP noise.

    >>> r = rate_with_interval(10, 90, 0.0)
    >>> round(r.value, 3), round(r.low, 3), round(r.high, 3)
    (0.1, 0.041, 0.159)
    >>> rate_with_interval(None, 5, 1.0).text()
    '-'
    """
    if numerator is None or other is None:
        return Rate(math.nan, math.nan, math.nan)
    a, c = max(0.0, float(numerator)), max(0.0, float(other))
    n = a + c
    if n <= 0:
        return Rate(math.nan, math.nan, math.nan)
    p = a / n
    se = math.sqrt(p * (1 - p) / n + ((1 - p) ** 2 + p**2) * noise_sd**2 / n**2)
    return Rate(p, max(0.0, p - _Z95 * se), min(1.0, p + _Z95 * se))


@dataclass(frozen=True)
class GroupRates:
    """FPR, FNR and selection rate of one group, from noisy tp/fp/fn/tn."""

    fpr: Rate
    fnr: Rate
    selection: Rate
    people: float


def group_rates(counts: Mapping[str, float | None], noise_sd: float) -> GroupRates:
    """FPR ``fp / (fp + tn)``, FNR ``fn / (fn + tp)``, selection ``(tp + fp) / all``, with intervals.

    >>> g = group_rates({"tp": 30, "fp": 10, "fn": 10, "tn": 90}, 0.0)
    >>> g.fpr.value, g.fnr.value, round(g.selection.value, 4)
    (0.1, 0.25, 0.2857)
    """
    tp, fp, fn, tn = (counts.get(k) for k in ("tp", "fp", "fn", "tn"))
    known = [v for v in (tp, fp, fn, tn) if v is not None]
    people = math.fsum(max(0.0, float(v)) for v in known) if len(known) == 4 else math.nan
    flagged = None if tp is None or fp is None else max(0.0, float(tp)) + max(0.0, float(fp))
    unflagged = None if fn is None or tn is None else max(0.0, float(fn)) + max(0.0, float(tn))
    # Two counts make each side of the selection rate, so their noise adds.
    return GroupRates(rate_with_interval(fp, tn, noise_sd), rate_with_interval(fn, tp, noise_sd),
                      rate_with_interval(flagged, unflagged, noise_sd * math.sqrt(2.0)), people)
