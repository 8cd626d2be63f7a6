"""The ``link-scores`` release: a match round's floor-solve linked pairs, counted by Dice bin.

Every match round solves one-to-one at a low floor and fits its score mixture to the Dice of the
pairs linked there (``coordinator.linkage.calibration``). What leaves the coordinator about that
fit is derived from this release only: the pair counts per bin, over public bins (equal bins over
[0, 1] from the floor's, both named in the entry's subject), noised on the round's ledger.

Sensitivity: the privacy unit is one person, the round's clusters taken as given
(``docs/privacy-accounting.md``). A floor cluster holds at most one record per agency, so one
person is at most ``N(N-1)/2`` linked pairs, each adding 1 to one bin.
"""

from __future__ import annotations

import math
import re

from pplink.accounting import Sensitivity
from pplink.errors import ReleaseError

__all__ = ["link_score_keys", "link_score_sensitivity", "link_score_subject", "parse_link_score_subject"]

#: Key sets are tuples of string tuples, as in :mod:`pplink.queries`.
Keys = tuple[tuple[str, ...], ...]

_LINK_SCORES = re.compile(r"\bfloor (0\.\d{1,6}) bins (\d{1,4})\b")


def link_score_subject(floor: float, bins: int) -> str:
    """The subject a ``link-scores`` entry records: its floor and bin count, which fix its key set.

    >>> link_score_subject(0.55, 100)
    'linked pairs by Dice: floor 0.55 bins 100'
    """
    return f"linked pairs by Dice: floor {floor:g} bins {bins}"


def link_score_keys(floor: float, bins: int) -> Keys:
    """The public bins of a ``link-scores`` release: lower edges of ``bins`` equal bins over [0, 1], from the floor's.

    >>> link_score_keys(0.96, 50)
    (('0.9600',), ('0.9800',))
    """
    first = min(int(math.floor(floor * bins + 1e-9)), bins - 1)
    return tuple((f"{k / bins:.4f}",) for k in range(first, bins))


def parse_link_score_subject(subject: str) -> tuple[float, int]:
    """The floor and bin count a ``link-scores`` entry's subject names.

    >>> parse_link_score_subject(link_score_subject(0.55, 100))
    (0.55, 100)

    Raises:
        ReleaseError: the subject names no floor and bins, or unusable ones.
    """
    match = _LINK_SCORES.search(subject)
    if match is None:
        raise ReleaseError("a link-scores release must name its floor and bins in its subject ('floor F bins B')")
    floor, bins = float(match.group(1)), int(match.group(2))
    if not (0.0 < floor < 1.0 and 1 <= bins <= 1000):
        raise ReleaseError("a link-scores release's floor must lie in (0, 1) and its bins in [1, 1000]")
    return floor, bins


def link_score_sensitivity(n_parties: int) -> Sensitivity:
    """A floor cluster holds at most one record per agency, so one person is at most N(N-1)/2 linked pairs.

    Each pair adds 1 to one bin: L1 = N(N-1)/2, L2 = sqrt(N(N-1)/2) rounded up (integer L2 metric).

    >>> link_score_sensitivity(2), link_score_sensitivity(4)
    (Sensitivity(l1=1, l2=1), Sensitivity(l1=6, l2=3))
    """
    if n_parties < 2:
        raise ValueError("link-scores needs at least two agencies")
    l1 = n_parties * (n_parties - 1) // 2
    return Sensitivity(l1=l1, l2=math.isqrt(l1 - 1) + 1)
