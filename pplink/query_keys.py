"""The public key sets DP releases count over: agency combinations, attribute values and bins.

No key depends on the data (they come from the agreement and the list of agencies), so no key
reveals that someone exists. Used by the query table (:mod:`pplink.queries`) and the coordinator's
exact count vectors (``coordinator.release.queries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from pplink.agreement import AgreementConfig, ReleaseAttribute
from pplink.errors import ReleaseError

__all__ = [
    "CONFUSION_OUTCOMES",
    "MAX_AGENCIES",
    "MISSING",
    "PRESENCE_KEYS",
    "attribute_labels",
    "combination_keys",
    "declared_attribute",
    "presence_agencies",
]

#: The key under which people with no value for an attribute are counted.
MISSING = "(missing)"
#: Outcome keys of a confusion-count release.
CONFUSION_OUTCOMES = ("tp", "fp", "fn", "tn")
#: Where-keys of a confusion release by agency presence (scoring's error counts by who knows the person).
PRESENCE_KEYS = ("known", "not known")
#: More agencies would make 2^N - 1 combination cells unreadable (and slow to noise).
MAX_AGENCIES = 12


def combination_keys(parties: Sequence[str]) -> list[tuple[int, str]]:
    """All 2^N - 1 non-empty agency combinations as ``(bitmask, "a+b")``, smallest first.

    Bit j of the mask is ``parties[j]``.

    >>> combination_keys(["a", "b"])
    [(1, 'a'), (2, 'b'), (3, 'a+b')]
    """
    if len(parties) > MAX_AGENCIES:
        raise ReleaseError(f"combination releases support at most {MAX_AGENCIES} agencies, not {len(parties)}")
    out = []
    for size in range(1, len(parties) + 1):
        for combo in combinations(range(len(parties)), size):
            mask = sum(1 << j for j in combo)
            out.append((mask, "+".join(parties[j] for j in combo)))
    return out


def attribute_labels(attribute: ReleaseAttribute) -> tuple[str, ...]:
    """The public keys of an attribute: its declared values, or its bins, then :data:`MISSING`.

    >>> attribute_labels(ReleaseAttribute(column="age", lower=0, upper=18, bins=3))
    ('[0, 6)', '[6, 12)', '[12, 18]', '(missing)')
    """
    if attribute.values is not None:
        return (*attribute.values, MISSING)
    assert attribute.lower is not None and attribute.upper is not None and attribute.bins is not None
    edges = np.linspace(attribute.lower, attribute.upper, attribute.bins + 1)
    labels = [f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(attribute.bins)]
    labels[-1] = labels[-1][:-1] + "]"
    return (*labels, MISSING)


def declared_attribute(agreement: AgreementConfig, column: str | None) -> ReleaseAttribute:
    """The agreement's release attribute named ``column``.

    Raises:
        ReleaseError: it is not a release attribute of the agreement.
    """
    for attribute in agreement.release.attributes:
        if attribute.column == column:
            return attribute
    raise ReleaseError(f"attribute {column} is not a release attribute of the agreement")


def presence_agencies(cells: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The agencies a confusion release by agency presence names, in first-seen order.

    >>> presence_agencies((("police", "known", "tp"), ("police", "known", "fp"), ("school", "known", "tp")))
    ('police', 'school')
    """
    return tuple(dict.fromkeys(key[0] for key in cells if key))
