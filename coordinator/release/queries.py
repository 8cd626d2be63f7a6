"""The true (not yet noisy) count vectors behind each release query, and their public key sets.

Pure functions over a :class:`~coordinator.linkage.state.LinkageState`: no noise, no ledger. The privacy
unit is one person, i.e. one linked cluster, however many rows it has across agencies, so every
query first reduces a person to one value:

* **agency combination**: the set of agencies with at least one row in the cluster;
* **attribute value**: the first non-null value over the cluster's rows, taking agencies in the
  linkage state's party order and, within an agency, rows in file order. A person with no value
  anywhere counts under :data:`MISSING`, a public key like any other.

Every key set is public (it comes from the agreement and the list of agencies, never from the
data), so no key reveals that someone exists and releases are pure DP without thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from coordinator.linkage.state import LinkageState
from pplink.accounting import QueryKind, Sensitivity
from pplink.agreement import AgreementConfig, ReleaseAttribute
from pplink.audit.release_views import LinkRate, derive_link_rates
from pplink.errors import ReleaseError
from pplink.ledger import ReleaseQuery
from pplink.queries import (
    CONFUSION_OUTCOMES,
    MAX_AGENCIES,
    MISSING,
    attribute_labels,
    combination_keys,
    declared_attribute,
    query_sensitivity,
)

__all__ = [
    "CONFUSION_OUTCOMES",
    "MAX_AGENCIES",
    "MISSING",
    "LinkRate",
    "QueryVector",
    "attribute_labels",
    "combination_keys",
    "compute_query",
    "confusion_vector",
    "derive_link_rates",
    "entity_codes",
    "entity_combinations",
]

@dataclass(frozen=True)
class QueryVector:
    """A query's exact counts, their public keys (same order) and its per-person sensitivity."""

    keys: tuple[tuple[str, ...], ...]
    counts: np.ndarray
    sensitivity: Sensitivity

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.counts):
            raise ValueError("one key per count")


# --- per-person values ------------------------------------------------------------------------


def entity_combinations(state: LinkageState) -> np.ndarray:
    """Per cluster, the bitmask of agencies with a row in it (``int64``, shape ``(n_clusters,)``)."""
    masks = np.zeros(state.n_clusters, dtype=np.int64)
    for j, party in enumerate(state.parties):
        masks[state.cluster_of[party]] |= np.int64(1 << j)
    return masks


def _row_codes(values: Sequence[str | None], attribute: ReleaseAttribute, party: str) -> np.ndarray:
    """Each row's key index (-1 for missing). Errors name agency, row and column, never the value."""
    codes = np.full(len(values), -1, dtype=np.int64)
    if attribute.values is not None:
        index = {v: i for i, v in enumerate(attribute.values)}
        for row, value in enumerate(values):
            if value is None:
                continue
            code = index.get(value)
            if code is None:
                raise ReleaseError(
                    f"agency {party}, row {row}, attribute {attribute.column}: value is not one the agreement declares"
                )
            codes[row] = code
        return codes
    assert attribute.lower is not None and attribute.upper is not None and attribute.bins is not None
    width = (attribute.upper - attribute.lower) / attribute.bins
    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ReleaseError(f"agency {party}, row {row}, attribute {attribute.column}: not a finite number")
        # Out-of-range values are clamped into the edge bins (bounded contribution, documented).
        codes[row] = min(max(int((number - attribute.lower) // width), 0), attribute.bins - 1)
    return codes


def entity_codes(state: LinkageState, attribute: ReleaseAttribute) -> np.ndarray:
    """Per cluster, the index into :func:`attribute_labels` of the person's value.

    The value is the first non-null one over the cluster's rows in party order, then row order;
    clusters with none get the index of :data:`MISSING`.

    Raises:
        ReleaseError: no agency sent the attribute, a column has the wrong length, or a value is
            undeclared / not a number (naming agency, row and column).
    """
    labels = attribute_labels(attribute)
    missing_code = len(labels) - 1
    out = np.full(state.n_clusters, -1, dtype=np.int64)
    sent = False
    for party in state.parties:
        column = state.attributes.get(party, {}).get(attribute.column)
        if column is None:
            continue
        sent = True
        clusters = state.cluster_of[party]
        if len(column) != len(clusters):
            raise ReleaseError(
                f"agency {party}, attribute {attribute.column}: {len(column)} values for {len(clusters)} rows"
            )
        codes = _row_codes(column, attribute, party)
        present = codes >= 0
        # np.unique's return_index gives each cluster's first present row in this agency's order.
        uniq, first = np.unique(clusters[present], return_index=True)
        unset = out[uniq] < 0
        out[uniq[unset]] = codes[present][first[unset]]
    if not sent:
        raise ReleaseError(f"no agency sent release attribute {attribute.column}")
    out[out < 0] = missing_code
    return out


# --- the queries ------------------------------------------------------------------------------


def _overlap(state: LinkageState) -> QueryVector:
    masks = entity_combinations(state)
    combos = combination_keys(state.parties)
    counts_by_mask = np.bincount(masks, minlength=1 << len(state.parties))
    counts = np.array([counts_by_mask[mask] for mask, _ in combos], dtype=np.int64)
    return QueryVector(tuple((label,) for _, label in combos), counts,
                       query_sensitivity(QueryKind.OVERLAP, len(state.parties)))


def _count_by(state: LinkageState, attribute: ReleaseAttribute, by_combination: bool) -> QueryVector:
    labels = attribute_labels(attribute)
    codes = entity_codes(state, attribute)
    sensitivity = query_sensitivity(QueryKind.COUNT_BY, len(state.parties))
    if not by_combination:
        counts = np.bincount(codes, minlength=len(labels)).astype(np.int64)
        return QueryVector(tuple((label,) for label in labels), counts, sensitivity)
    combos = combination_keys(state.parties)
    masks = entity_combinations(state)
    table = np.zeros((1 << len(state.parties), len(labels)), dtype=np.int64)
    np.add.at(table, (masks, codes), 1)
    keys = tuple((combo, label) for _, combo in combos for label in labels)
    counts = np.concatenate([table[mask] for mask, _ in combos])
    return QueryVector(keys, counts, sensitivity)


def _link_rate(state: LinkageState, attribute: ReleaseAttribute | None) -> QueryVector:
    if len(state.parties) < 2:
        raise ReleaseError("link-rate needs at least two agencies in the linkage")
    if attribute is None:
        labels: tuple[str, ...] = ("all",)
        codes = np.zeros(state.n_clusters, dtype=np.int64)
    else:
        labels = attribute_labels(attribute)
        codes = entity_codes(state, attribute)
    member = state.membership()
    keys: list[tuple[str, ...]] = []
    parts: list[np.ndarray] = []
    for j, party in enumerate(state.parties):
        keys.extend(("at", party, label) for label in labels)
        parts.append(np.bincount(codes[member[:, j]], minlength=len(labels)))
    for a, b in combinations(range(len(state.parties)), 2):
        both = member[:, a] & member[:, b]
        keys.extend(("both", state.parties[a], state.parties[b], label) for label in labels)
        parts.append(np.bincount(codes[both], minlength=len(labels)))
    return QueryVector(tuple(keys), np.concatenate(parts).astype(np.int64),
                       query_sensitivity(QueryKind.LINK_RATE, len(state.parties)))


def compute_query(agreement: AgreementConfig, state: LinkageState, query: ReleaseQuery) -> QueryVector:
    """The exact counts and public keys a query releases (before noise).

    Args:
        agreement: declares the attributes, their values or bins.
        state: the coordinator's linkage state.
        query: overlap, count-by, histogram or link-rate (confusion counts come from scoring,
            see :func:`confusion_vector`).

    Raises:
        ReleaseError: an undeclared attribute, a histogram of a categorical attribute, bad values.
    """
    if query.kind is QueryKind.OVERLAP:
        return _overlap(state)
    if query.kind is QueryKind.COUNT_BY:
        return _count_by(state, declared_attribute(agreement, query.attribute), query.by_combination)
    if query.kind is QueryKind.HISTOGRAM:
        attribute = declared_attribute(agreement, query.attribute)
        if attribute.values is not None:
            raise ReleaseError(f"histogram needs a numeric attribute; {attribute.column} is categorical (use count-by)")
        return _count_by(state, attribute, by_combination=False)
    if query.kind is QueryKind.LINK_RATE:
        attribute = None if query.attribute is None else declared_attribute(agreement, query.attribute)
        return _link_rate(state, attribute)
    raise ReleaseError(f"query {query.kind.value} is not computed from the linkage state")


def confusion_vector(
    agreement: AgreementConfig, attribute: str, counts_by_group: Mapping[str, Mapping[str, int]]
) -> QueryVector:
    """Model error counts by subgroup as a count vector over the public key set.

    The keys are every (group, outcome) pair, groups being the attribute's declared values plus
    :data:`MISSING` and outcomes :data:`CONFUSION_OUTCOMES`; groups or outcomes absent from
    ``counts_by_group`` count 0. The caller guarantees the counts are per-person bounded: each
    person adds 1 to exactly one (group, outcome) cell, so the sensitivity is 1.

    Raises:
        ReleaseError: an undeclared group or outcome, or a count that is not a non-negative integer.
    """
    declared = declared_attribute(agreement, attribute)
    groups = attribute_labels(declared)
    table = np.zeros((len(groups), len(CONFUSION_OUTCOMES)), dtype=np.int64)
    for group, outcomes in counts_by_group.items():
        if group not in groups:
            raise ReleaseError(f"confusion counts: group {group!r} is not a declared value of {attribute}")
        for outcome, count in outcomes.items():
            if outcome not in CONFUSION_OUTCOMES:
                raise ReleaseError(f"confusion counts: outcome {outcome!r} is not one of "
                                   f"{', '.join(CONFUSION_OUTCOMES)}")
            if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
                raise ReleaseError(f"confusion counts: group {group!r}, outcome {outcome}: not a non-negative integer")
            table[groups.index(group), CONFUSION_OUTCOMES.index(outcome)] = int(count)
    keys = tuple((group, outcome) for group in groups for outcome in CONFUSION_OUTCOMES)
    return QueryVector(keys, table.reshape(-1), query_sensitivity(QueryKind.CONFUSION, 0))
