"""Names the scoring protocol shares with the release engine.

The messages of vertical scoring are in :mod:`pplink.scoring.suffstats_protocol`.
"""

from __future__ import annotations

__all__ = ["MISSING_GROUP", "OUTCOME_KEYS"]

#: The subgroup of people with no value for the subgroup attribute (the release engine's public
#: key for missing values, ``coordinator.release.queries.MISSING``).
MISSING_GROUP = "(missing)"
#: Outcome keys of a confusion table, as the release engine names them.
OUTCOME_KEYS = ("tp", "fp", "fn", "tn")
