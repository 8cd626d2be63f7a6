"""Views derived from released cells: pure post-processing of what the ledger already holds.

Shared by the coordinator (printing a release), the notice and the report: deriving a rate from
released noisy counts costs no privacy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pplink.ledger import Cell

__all__ = ["LinkRate", "derive_link_rates"]


@dataclass(frozen=True)
class LinkRate:
    """The share of agency ``source``'s people (with attribute ``value``) also found at ``target``.

    ``rate`` is numerator / denominator of the released noisy counts, clipped to [0, 1] (then
    ``clipped`` is true: noise pushed the ratio outside, and the shown rate is a bound, not an
    estimate); None when the denominator was suppressed. When only the numerator was suppressed,
    ``rate`` is None and ``rate_below`` gives the bound ``min_cell_size / denominator`` the rate
    lies under.
    """

    source: str
    target: str
    value: str
    numerator: int | None
    denominator: int | None
    rate: float | None
    rate_below: float | None
    clipped: bool = False


def derive_link_rates(cells: Sequence[Cell], parties: Sequence[str], min_cell_size: int) -> list[LinkRate]:
    """Link rates (post-processing of the released noisy counts of a link-rate release).

    For each ordered pair of agencies (source, target) and attribute value: ``both(source,
    target) / at(source)``. A suppressed count makes the rate None; see :class:`LinkRate`.
    """
    value_of = {cell.key: cell.value for cell in cells}
    labels = [cell.key[2] for cell in cells if cell.key[0] == "at" and cell.key[1] == parties[0]]
    order = {p: i for i, p in enumerate(parties)}
    rates = []
    for source in parties:
        for target in parties:
            if source == target:
                continue
            pair = (source, target) if order[source] < order[target] else (target, source)
            for label in labels:
                num = value_of.get(("both", *pair, label))
                den = value_of.get(("at", source, label))
                rate = below = None
                clipped = False
                if den is not None and den > 0:
                    if num is not None:
                        rate = min(1.0, max(0.0, num / den))
                        clipped = rate != num / den
                    else:
                        below = min(1.0, min_cell_size / den)
                rates.append(LinkRate(source, target, label, num, den, rate, below, clipped))
    return rates
