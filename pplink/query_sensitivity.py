"""How far one person can move each query kind's released vector: the query table's sensitivity rules.

Each ``*_rule`` takes ``(n_parties, subject, cells)`` and returns the
:class:`~pplink.accounting.Sensitivity` of one privacy unit; :data:`pplink.queries.QUERY_SPECS`
names one per kind. Rules that depend on a parameter (a fixed-point unit, a clipping bound, the
CKKS slack) read it from the entry's subject, so the auditor re-derives them exactly instead of
believing a number the coordinator wrote.
"""

from __future__ import annotations

import math
import re

from pplink.accounting import Sensitivity
from pplink.link_scores import Keys, link_score_sensitivity
from pplink.query_keys import presence_agencies

__all__ = [
    "CKKS_SLACK",
    "confusion_rule",
    "link_rate_rule",
    "link_rate_sensitivity",
    "link_scores_rule",
    "one_unit",
    "release_sensitivity",
    "release_values",
    "residuals_rule",
    "sufficient_statistics_rule",
]


def one_unit(_n: int, _subject: str, _cells: Keys) -> Sensitivity:
    """A person is in one cell, once: counts by combination, attribute, score bin; one FedAvg update."""
    return Sensitivity(l1=1, l2=1)


def _ceil_sqrt(value: int) -> int:
    return math.isqrt(value - 1) + 1


def link_rate_sensitivity(n_parties: int) -> Sensitivity:
    """A person at k agencies adds 1 to k ``at`` cells and k(k-1)/2 ``both`` cells: L1 = N(N+1)/2.

    L2 = sqrt(N(N+1)/2) rounded up (OpenDP's integer L2 metric takes integer distances).

    >>> link_rate_sensitivity(2), link_rate_sensitivity(4)
    (Sensitivity(l1=3, l2=2), Sensitivity(l1=10, l2=4))
    """
    if n_parties < 2:
        raise ValueError("link-rate needs at least two agencies")
    l1 = n_parties * (n_parties + 1) // 2
    return Sensitivity(l1=l1, l2=_ceil_sqrt(l1))


def link_rate_rule(n: int, _subject: str, _cells: Keys) -> Sensitivity:
    """Link rates over ``n`` agencies: :func:`link_rate_sensitivity`."""
    return link_rate_sensitivity(n)


def confusion_rule(n: int, _subject: str, cells: Keys) -> Sensitivity:
    """Model error counts: one cell, or one cell per agency asked when counted by agency presence."""
    if n and not cells:
        # By presence over the n agencies named: one cell per agency asked plus one total per person.
        return Sensitivity(l1=n, l2=_ceil_sqrt(n))
    if cells and len(cells[0]) == 3:
        # One person is in one (where, outcome) cell of every agency asked.
        l1 = max(1, len(presence_agencies(cells)))
        return Sensitivity(l1=l1, l2=_ceil_sqrt(l1))
    return Sensitivity(l1=1, l2=1)


def link_scores_rule(n: int, _subject: str, _cells: Keys) -> Sensitivity:
    """A round's linked pairs by Dice bin over ``n`` agencies (:func:`pplink.link_scores.link_score_sensitivity`)."""
    return link_score_sensitivity(n)


_UNIT = re.compile(r"\bunit 1/(\d+)\b")


def residuals_rule(_n: int, subject: str, _cells: Keys) -> Sensitivity:
    """One vertical-scoring step's residuals: one fixed-point unit, read from the subject (``unit 1/N``)."""
    # A residual in [-1, 1] travels in fixed point: one person moves one entry by at most one unit.
    match = _UNIT.search(subject)
    if match is None:
        raise ValueError("a residuals release must name its fixed-point unit in its subject ('unit 1/N')")
    unit = int(match.group(1))
    if unit < 1:
        raise ValueError("a residuals release's unit must be positive")
    return Sensitivity(l1=unit, l2=unit)


#: The least CKKS error bound per released value (``2**-6``) a sufficient-statistics entry may
#: state as its slack: a bound on the CKKS error of one encrypted sum (measured at most 1.3e-3 at
#: 20,000 people); ``pplink.scoring.suffstats.CKKS_ERROR_BOUND`` is this value.
CKKS_SLACK = 2.0**-6


def release_values(release: str, dimension: int) -> int:
    """How many numbers a sufficient-statistics release has: ``G``'s upper triangle or ``b``.

    >>> release_values("gram", 12), release_values("b", 12)
    (78, 12)
    """
    return dimension * (dimension + 1) // 2 if release == "gram" else dimension


def release_sensitivity(release: str, bound: float, unit: int, slack: float, values: int) -> int:
    """A sufficient-statistics release's L2 sensitivity in integer units: one person, plus the CKKS slack.

    ``G`` (``release == "gram"``) moves by ``C^2``, ``b`` by ``C / 2`` (values), times ``unit``;
    each of the ``values`` released numbers may carry a CKKS error of at most ``slack``, so a
    neighbour's vector can differ by ``2 slack sqrt(values)`` more; rounded up for OpenDP. The
    entry's subject names every input (``pplink.scoring.suffstats_protocol.release_subject``), so
    the auditor re-derives this exactly.

    >>> release_sensitivity("gram", 2.0, 4, 0.0, 1), release_sensitivity("b", 2.0, 4, 0.0, 1)
    (16, 4)
    """
    moved = bound * bound if release == "gram" else 0.5 * bound
    return math.ceil(moved * unit + 2 * slack * unit * math.sqrt(values) - 1e-9)


_SUFFSTATS = re.compile(r"^sufficient statistics (gram|b): vertical run [0-9a-f]{32}; C ([0-9.e+-]+), unit 1/(\d+), "
                        r"CKKS slack ([0-9.e+-]+) on (\d+) values$")


def sufficient_statistics_rule(_n: int, subject: str, _cells: Keys) -> Sensitivity:
    """A sufficient-statistics release: :func:`release_sensitivity` of the inputs its subject names."""
    # G moves by C^2, b by C/2 (times the fixed-point unit), plus the CKKS slack on every value: the
    # subject names each input, so the sensitivity is re-derived exactly, never taken from the entry.
    match = _SUFFSTATS.match(subject)
    if match is None:
        raise ValueError("a sufficient-statistics release must name its release, run, C, unit and CKKS slack in "
                         "its subject ('sufficient statistics gram|b: vertical run ID; C x, unit 1/N, CKKS slack e "
                         "on m values')")
    release, bound, unit, slack, values = match.groups()
    c, u, e, m = float(bound), int(unit), float(slack), int(values)
    if not (math.isfinite(c) and c > 0 and u >= 1 and m >= 1):
        raise ValueError("a sufficient-statistics release's C, unit and value count must be positive")
    if not e >= CKKS_SLACK:
        raise ValueError(f"a sufficient-statistics release's CKKS slack {e:g} is below the protocol's {CKKS_SLACK:g}")
    if release == "gram" and release_values("gram", math.isqrt(2 * m)) != m:
        raise ValueError("a sufficient-statistics G release's value count is not an upper triangle's")
    sensitivity = release_sensitivity(release, c, u, e, m)
    return Sensitivity(l1=sensitivity, l2=sensitivity)
