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

import csv
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pplink.entity_files import ENTITIES_HEADER
from pplink.errors import RecordValidationError, UsageError

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

#: File name ending of a node's resolved entities (``<agency>.entities.csv``).
ENTITIES_SUFFIX = ".entities.csv"
_TRUTH_HEADER = ("agency", "record_id", "person")
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


def _read_rows(path: Path, required: Sequence[str]) -> Iterable[tuple[int, list[str], dict[str, int]]]:
    """Yield ``(row_number, fields, column_index)`` for every data row; the header is row 1."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as err:
        raise UsageError(f"{path}: cannot open ({err.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise RecordValidationError(f"{path}: the file is empty (expected a header {','.join(required)})")
            index = {name.strip(): i for i, name in enumerate(header)}
            absent = [name for name in required if name not in index]
            if absent:
                raise RecordValidationError(f"{path}: header lacks column(s) {', '.join(absent)}")
            for fields in reader:
                row_number = reader.line_num
                if len(fields) != len(header):
                    raise RecordValidationError(
                        f"{path}: row {row_number}: {len(fields)} fields where the header has {len(header)}"
                    )
                yield row_number, fields, index
        except UnicodeDecodeError:
            raise RecordValidationError(f"{path}: not valid UTF-8 text") from None
        except csv.Error as err:
            raise RecordValidationError(f"{path}: row {reader.line_num}: malformed CSV ({err})") from None


def _field(path: Path, row_number: int, fields: list[str], index: dict[str, int], name: str) -> str:
    value = fields[index[name]].strip()
    if not value:
        raise RecordValidationError(f"{path}: row {row_number}, field {name}: is empty")
    return value


def read_truth(path: Path) -> dict[str, dict[str, str]]:
    """Read ``truth.csv`` (header ``agency,record_id,person``) as ``{agency: {record_id: person}}``.

    The header is row 1, as in every pplink message.

    Raises:
        UsageError: the file cannot be opened.
        RecordValidationError: a column is missing, a field is empty, a row has the wrong number of
            fields, or an (agency, record_id) appears twice; the message names file, row and field.
    """
    path = Path(path)
    truth: dict[str, dict[str, str]] = defaultdict(dict)
    for row_number, fields, index in _read_rows(path, _TRUTH_HEADER):
        agency, record_id, person = (_field(path, row_number, fields, index, name) for name in _TRUTH_HEADER)
        records = truth[agency]
        if record_id in records:
            raise RecordValidationError(f"{path}: row {row_number}, field record_id: repeats an earlier row")
        records[record_id] = person
    return dict(truth)


def read_entities(path: Path) -> dict[str, str]:
    """Read one ``<agency>.entities.csv`` (header ``record_id,entity_id``) as ``{record_id: entity_id}``.

    Unlike :func:`pplink.entity_files.read_entities` (pplink's own files), this accepts any entity
    ids and extra columns, so another linkage tool's output can be scored against the same truth.

    Raises:
        UsageError: the file cannot be opened.
        RecordValidationError: a column is missing, a field is empty, a row is malformed, or a record
            id appears twice; the message names file, row and field.
    """
    path = Path(path)
    entities: dict[str, str] = {}
    for row_number, fields, index in _read_rows(path, ENTITIES_HEADER):
        record_id, entity_id = (_field(path, row_number, fields, index, name) for name in ENTITIES_HEADER)
        if record_id in entities:
            raise RecordValidationError(f"{path}: row {row_number}, field record_id: repeats an earlier row")
        entities[record_id] = entity_id
    return entities


def collect_entity_files(paths: Sequence[Path]) -> dict[str, Path]:
    """Resolve files and folders into ``{agency: <agency>.entities.csv}``.

    A folder stands for every ``*.entities.csv`` directly inside it.

    Raises:
        UsageError: a path does not exist, a file is not named ``<agency>.entities.csv``, a folder
            holds none, or two files name the same agency.
    """
    found: dict[str, Path] = {}
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(given.glob(f"*{ENTITIES_SUFFIX}"))
            if not files:
                raise UsageError(f"{given}: no *{ENTITIES_SUFFIX} files in this folder")
        elif given.is_file():
            files = [given]
        else:
            raise UsageError(f"{given}: no such file or folder")
        for file in files:
            if not file.name.endswith(ENTITIES_SUFFIX) or file.name == ENTITIES_SUFFIX:
                raise UsageError(f"{file}: expected a file named <agency>{ENTITIES_SUFFIX}")
            agency = file.name[: -len(ENTITIES_SUFFIX)]
            if agency in found:
                raise UsageError(f"{file}: agency {agency!r} was already given by {found[agency]}")
            found[agency] = file
    if not found:
        raise UsageError(f"no *{ENTITIES_SUFFIX} files given")
    return found


def read_predictions(paths: Sequence[Path]) -> dict[str, dict[str, str]]:
    """Read every entities file that ``paths`` name (see :func:`collect_entity_files`).

    Returns:
        ``{agency: {record_id: entity_id}}``.
    """
    return {agency: read_entities(path) for agency, path in collect_entity_files(paths).items()}
