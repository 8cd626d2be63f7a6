"""Measured linkage quality: predicted clusters of records against the known truth.

Pairwise figures count cross-agency record pairs only (two records of one agency are never a pair
here, since each agency holds a person at most once and linkage runs across agencies). A pair is a
*true* pair when both records belong to one person, a *predicted* pair when both records sit in one
predicted cluster, and *correct* when both. Counting is combinatorial: for any grouping of records,
the cross-agency pairs inside a group with ``n_a`` records at agency ``a`` number
``sum_{a<b} n_a n_b``, so predicted pairs come from grouping by cluster, true pairs from grouping by
person, and correct pairs from grouping by (cluster, person). Nothing enumerates pairs, so four
agencies of a million records each take seconds.

Only records present in both the truth and the prediction are scored. Records in the truth that the
prediction lacks (for example opted-out rows, which are never encoded) and predicted records unknown
to the truth are counted and reported, per agency, never dropped silently.

Cluster-level figures say how many true entities were reconstructed exactly: all of a person's
scored records in one predicted cluster that holds nothing else.

Example:
    >>> truth = {("a", "1"): "p", ("b", "1"): "p", ("b", "2"): "q"}
    >>> report = evaluate_linkage(truth, {("a", "1"): "e1", ("b", "1"): "e1", ("b", "2"): "e2"})
    >>> report.overall.precision, report.overall.recall, report.clusters.exact_entities
    (1.0, 1.0, 2)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The readers live beside this module; they are re-exported so callers import evaluation from one place.
from pplink.lab.evaluation_files import (
    ENTITIES_SUFFIX,
    collect_entity_files,
    read_entities,
    read_predictions,
    read_truth,
)

__all__ = [
    "ClusterScores",
    "ENTITIES_SUFFIX",
    "LinkageReport",
    "PairScores",
    "RecordCounts",
    "collect_entity_files",
    "evaluate_linkage",
    "evaluate_linkage_by_agency",
    "read_entities",
    "read_predictions",
    "read_truth",
]

# Sentinel for "no predicted entity": entity ids may be any hashable, None included.
_ABSENT = object()


@dataclass(frozen=True)
class PairScores:
    """Pairwise counts and scores over cross-agency record pairs.

    Attributes:
        true_pairs: pairs of records of one person.
        predicted_pairs: pairs of records in one predicted cluster.
        correct_pairs: pairs that are both.
    """

    true_pairs: int
    predicted_pairs: int
    correct_pairs: int

    @property
    def false_positives(self) -> int:
        """Predicted pairs that are not true pairs."""
        return self.predicted_pairs - self.correct_pairs

    @property
    def false_negatives(self) -> int:
        """True pairs the prediction missed."""
        return self.true_pairs - self.correct_pairs

    @property
    def precision(self) -> float | None:
        """Correct over predicted pairs; None when nothing was predicted."""
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else None

    @property
    def recall(self) -> float | None:
        """Correct over true pairs; None when there are no true pairs."""
        return self.correct_pairs / self.true_pairs if self.true_pairs else None

    @property
    def f1(self) -> float | None:
        """Harmonic mean of precision and recall; None when either is undefined.

        >>> PairScores(true_pairs=4, predicted_pairs=2, correct_pairs=2).f1
        0.6666666666666666
        """
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and scores."""
        return {
            "true_pairs": self.true_pairs,
            "predicted_pairs": self.predicted_pairs,
            "correct_pairs": self.correct_pairs,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass(frozen=True)
class ClusterScores:
    """Cluster-level figures over the scored records.

    Attributes:
        true_entities: distinct people among the scored records.
        predicted_clusters: distinct predicted entity ids among the scored records.
        exact_entities: people whose records form exactly one predicted cluster, with nothing else.
        linked_true_entities: people with two or more scored records.
        linked_exact_entities: those of them reconstructed exactly.
    """

    true_entities: int
    predicted_clusters: int
    exact_entities: int
    linked_true_entities: int
    linked_exact_entities: int

    @property
    def exact_share(self) -> float | None:
        """Share of true entities reconstructed exactly; None when there are none."""
        return self.exact_entities / self.true_entities if self.true_entities else None

    @property
    def linked_exact_share(self) -> float | None:
        """Share of people with two or more records reconstructed exactly; None when there are none."""
        return self.linked_exact_entities / self.linked_true_entities if self.linked_true_entities else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {
            "true_entities": self.true_entities,
            "predicted_clusters": self.predicted_clusters,
            "exact_entities": self.exact_entities,
            "exact_share": self.exact_share,
            "linked_true_entities": self.linked_true_entities,
            "linked_exact_entities": self.linked_exact_entities,
            "linked_exact_share": self.linked_exact_share,
        }


@dataclass(frozen=True)
class RecordCounts:
    """Which records were scored, and which could not be.

    Attributes:
        in_truth: records in the truth.
        in_prediction: records in the prediction.
        scored: records in both.
        missing_from_prediction: records in the truth without a predicted entity.
        unknown_to_truth: predicted records the truth does not know.
        missing_by_agency: ``missing_from_prediction`` per agency (agencies with none left out).
        unknown_by_agency: ``unknown_to_truth`` per agency (agencies with none left out).
    """

    in_truth: int
    in_prediction: int
    scored: int
    missing_from_prediction: int
    unknown_to_truth: int
    missing_by_agency: Mapping[str, int]
    unknown_by_agency: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts."""
        return {
            "in_truth": self.in_truth,
            "in_prediction": self.in_prediction,
            "scored": self.scored,
            "missing_from_prediction": self.missing_from_prediction,
            "unknown_to_truth": self.unknown_to_truth,
            "missing_by_agency": dict(self.missing_by_agency),
            "unknown_by_agency": dict(self.unknown_by_agency),
        }


@dataclass(frozen=True)
class LinkageReport:
    """Linkage quality, overall, per agency pair, per cluster, with the record bookkeeping.

    Attributes:
        agencies: every agency seen in the truth or the prediction, sorted.
        overall: pairwise scores over all cross-agency pairs.
        by_agency_pair: pairwise scores per agency pair ``(a, b)`` with ``a < b``, for every pair of
            agencies that both have scored records.
        clusters: cluster-level figures.
        records: which records were scored.
    """

    agencies: tuple[str, ...]
    overall: PairScores
    by_agency_pair: Mapping[tuple[str, str], PairScores]
    clusters: ClusterScores
    records: RecordCounts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report; agency pairs become a list of objects with an ``agencies`` pair."""
        return {
            "agencies": list(self.agencies),
            "overall": self.overall.to_dict(),
            "by_agency_pair": [
                {"agencies": [a, b], **scores.to_dict()} for (a, b), scores in self.by_agency_pair.items()
            ],
            "clusters": self.clusters.to_dict(),
            "records": self.records.to_dict(),
        }


def _codes(labels: Iterable[Hashable], count: int) -> np.ndarray:
    # Dense integer codes in order of first appearance; a dict beats sorting strings here.
    table: dict[Hashable, int] = {}
    return np.fromiter((table.setdefault(x, len(table)) for x in labels), dtype=np.int64, count=count)


def _per_agency_counts(key: np.ndarray, agency: np.ndarray, n_agencies: int) -> np.ndarray:
    """Records per (group, agency) for groups numbered ``0 .. key.max()``."""
    groups = int(key.max()) + 1 if key.size else 0
    flat = np.bincount(key * n_agencies + agency, minlength=groups * n_agencies)
    return flat.reshape(groups, n_agencies)


def _pair_counts(counts: np.ndarray) -> np.ndarray:
    """Cross-agency pairs per agency pair: ``out[a, b] = sum_g counts[g, a] * counts[g, b]``."""
    return counts.T @ counts


def _score(
    agency: np.ndarray, person: np.ndarray, cluster: np.ndarray, agencies: Sequence[str]
) -> tuple[PairScores, dict[tuple[str, str], PairScores], ClusterScores]:
    n_agencies = len(agencies)
    if agency.size == 0:
        empty = PairScores(0, 0, 0)
        return empty, {}, ClusterScores(0, 0, 0, 0, 0)
    # (cluster, person) groups: a pair inside one such group is a correct pair.
    group_key = cluster * (int(person.max()) + 1) + person
    groups, group, group_size = np.unique(group_key, return_inverse=True, return_counts=True)
    true_pairs = _pair_counts(_per_agency_counts(person, agency, n_agencies))
    predicted_pairs = _pair_counts(_per_agency_counts(cluster, agency, n_agencies))
    correct_pairs = _pair_counts(_per_agency_counts(group, agency, n_agencies))

    present = np.bincount(agency, minlength=n_agencies) > 0
    by_pair: dict[tuple[str, str], PairScores] = {}
    for a in range(n_agencies):
        for b in range(a + 1, n_agencies):
            if present[a] and present[b]:
                by_pair[(agencies[a], agencies[b])] = PairScores(
                    int(true_pairs[a, b]), int(predicted_pairs[a, b]), int(correct_pairs[a, b])
                )
    upper = np.triu_indices(n_agencies, k=1)
    overall = PairScores(
        int(true_pairs[upper].sum()), int(predicted_pairs[upper].sum()), int(correct_pairs[upper].sum())
    )

    person_size = np.bincount(person)
    cluster_size = np.bincount(cluster)
    group_person = groups % (int(person.max()) + 1)
    group_cluster = groups // (int(person.max()) + 1)
    exact = (group_size == person_size[group_person]) & (group_size == cluster_size[group_cluster])
    linked = person_size[group_person] >= 2
    clusters = ClusterScores(
        true_entities=int((person_size > 0).sum()),
        predicted_clusters=int((cluster_size > 0).sum()),
        exact_entities=int(exact.sum()),
        linked_true_entities=int((person_size >= 2).sum()),
        linked_exact_entities=int((exact & linked).sum()),
    )
    return overall, by_pair, clusters


def evaluate_linkage_by_agency(
    truth: Mapping[str, Mapping[str, Hashable]], predicted: Mapping[str, Mapping[str, Hashable]]
) -> LinkageReport:
    """Score predicted clusters against the truth, both given per agency.

    Args:
        truth: ``{agency: {record_id: person}}``.
        predicted: ``{agency: {record_id: entity_id}}``; entity ids are shared across agencies (one
            id per predicted cluster).

    Returns:
        The report.
    """
    agencies = tuple(sorted(set(truth) | set(predicted)))
    agency_codes: list[np.ndarray] = []
    persons: list[Hashable] = []
    entities: list[Hashable] = []
    missing: dict[str, int] = {}
    unknown: dict[str, int] = {}
    in_truth = in_prediction = 0
    for code, name in enumerate(agencies):
        known = truth.get(name, {})
        guessed = predicted.get(name, {})
        in_truth += len(known)
        in_prediction += len(guessed)
        matched = 0
        for record_id, person in known.items():
            entity = guessed.get(record_id, _ABSENT)
            if entity is not _ABSENT:
                persons.append(person)
                entities.append(entity)
                matched += 1
        agency_codes.append(np.full(matched, code, dtype=np.int64))
        if len(known) - matched:
            missing[name] = len(known) - matched
        if len(guessed) - matched:
            unknown[name] = len(guessed) - matched
    agency = np.concatenate(agency_codes) if agency_codes else np.zeros(0, dtype=np.int64)
    overall, by_pair, clusters = _score(
        agency, _codes(persons, len(persons)), _codes(entities, len(entities)), agencies
    )
    records = RecordCounts(
        in_truth=in_truth,
        in_prediction=in_prediction,
        scored=len(persons),
        missing_from_prediction=sum(missing.values()),
        unknown_to_truth=sum(unknown.values()),
        missing_by_agency=missing,
        unknown_by_agency=unknown,
    )
    return LinkageReport(agencies=agencies, overall=overall, by_agency_pair=by_pair, clusters=clusters, records=records)



def _group(mapping: Mapping[tuple[str, str], Hashable]) -> dict[str, dict[str, Hashable]]:
    grouped: dict[str, dict[str, Hashable]] = defaultdict(dict)
    for (agency, record_id), value in mapping.items():
        grouped[agency][record_id] = value
    return grouped


def evaluate_linkage(
    truth: Mapping[tuple[str, str], Hashable], predicted: Mapping[tuple[str, str], Hashable]
) -> LinkageReport:
    """Score predicted clusters against the truth.

    Args:
        truth: ``{(agency, record_id): person}``.
        predicted: ``{(agency, record_id): entity_id}``; one entity id per predicted cluster, shared
            across agencies.

    Returns:
        The report (see :func:`evaluate_linkage_by_agency`).
    """
    return evaluate_linkage_by_agency(_group(truth), _group(predicted))
