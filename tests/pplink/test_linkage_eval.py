"""Behaviour of `pplink.lab.linkage_eval`: pairwise and cluster scores, bookkeeping, and the CSV readers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pplink.errors import RecordValidationError, UsageError
from pplink.lab.linkage_eval import (
    PairScores,
    collect_entity_files,
    evaluate_linkage,
    evaluate_linkage_by_agency,
    read_entities,
    read_predictions,
    read_truth,
)

# Three people over three agencies: p1 everywhere, p2 at a and b, p3 only at c.
TRUTH = {
    ("a", "a1"): "p1",
    ("b", "b1"): "p1",
    ("c", "c1"): "p1",
    ("a", "a2"): "p2",
    ("b", "b2"): "p2",
    ("c", "c3"): "p3",
}


def _perfect() -> dict[tuple[str, str], str]:
    return {key: f"e-{person}" for key, person in TRUTH.items()}


def test_perfect_prediction_scores_one() -> None:
    """Invariant: predicting the truth gives precision = recall = F1 = 1 and every entity exact."""
    report = evaluate_linkage(TRUTH, _perfect())
    assert (report.overall.precision, report.overall.recall, report.overall.f1) == (1.0, 1.0, 1.0)
    assert report.overall.true_pairs == 4  # p1: 3 pairs, p2: 1 pair
    assert report.clusters.exact_entities == report.clusters.true_entities == 3
    assert report.clusters.linked_true_entities == report.clusters.linked_exact_entities == 2
    assert all(s.f1 == 1.0 for s in report.by_agency_pair.values())
    assert report.records.missing_from_prediction == report.records.unknown_to_truth == 0


def test_splitting_a_true_cluster_lowers_recall_not_precision() -> None:
    """Invariant: a split loses true pairs but predicts no false ones."""
    predicted = _perfect()
    predicted[("c", "c1")] = "e-split"
    report = evaluate_linkage(TRUTH, predicted)
    assert report.overall.precision == 1.0
    assert report.overall.recall == pytest.approx(2 / 4)
    assert report.clusters.exact_entities == 2
    assert report.clusters.predicted_clusters == 4


def test_merging_two_true_clusters_lowers_precision_not_recall() -> None:
    """Invariant: a merge keeps every true pair but predicts false ones."""
    predicted = _perfect()
    predicted[("c", "c3")] = "e-p2"  # p3 joins p2's cluster
    report = evaluate_linkage(TRUTH, predicted)
    assert report.overall.recall == 1.0
    # p1's cluster: 3 correct pairs; {a2, b2, c3}: (a2,b2) correct, (a2,c3) and (b2,c3) false.
    assert report.overall.predicted_pairs == 6
    assert report.overall.precision == pytest.approx(4 / 6)
    assert report.clusters.exact_entities == 1


def test_hand_computed_example() -> None:
    """Invariant: counts match a small example worked out by hand, overall and per agency pair.

    Predicted clusters: X = {a1, b1, a2}, Y = {c1, b2}, Z = {c3}.
    Cross-agency predicted pairs: X has (a1,b1), (a2,b1) -> 2; Y has (c1,b2) -> 1; total 3.
    Correct: (a1,b1) only -> 1. True pairs: p1 (a1,b1), (a1,c1), (b1,c1); p2 (a2,b2) -> 4.
    Precision 1/3, recall 1/4, F1 = 2/7.
    """
    predicted = {
        ("a", "a1"): "X",
        ("b", "b1"): "X",
        ("a", "a2"): "X",
        ("c", "c1"): "Y",
        ("b", "b2"): "Y",
        ("c", "c3"): "Z",
    }
    report = evaluate_linkage(TRUTH, predicted)
    assert report.overall == PairScores(true_pairs=4, predicted_pairs=3, correct_pairs=1)
    assert report.overall.f1 == pytest.approx(2 / 7)
    assert report.by_agency_pair[("a", "b")] == PairScores(true_pairs=2, predicted_pairs=2, correct_pairs=1)
    assert report.by_agency_pair[("a", "c")] == PairScores(true_pairs=1, predicted_pairs=0, correct_pairs=0)
    assert report.by_agency_pair[("b", "c")] == PairScores(true_pairs=1, predicted_pairs=1, correct_pairs=0)
    assert report.by_agency_pair[("a", "c")].precision is None
    assert report.clusters.exact_entities == 1  # only p3 = {c3} = Z
    assert report.clusters.predicted_clusters == 3


def test_pairs_within_one_agency_do_not_count() -> None:
    """Invariant: two records of one agency in one cluster are neither a true nor a predicted pair."""
    truth = {("a", "1"): "p", ("a", "2"): "p", ("b", "1"): "q"}
    report = evaluate_linkage(truth, {("a", "1"): "e", ("a", "2"): "e", ("b", "1"): "f"})
    assert report.overall == PairScores(0, 0, 0)
    assert report.overall.f1 is None
    assert report.clusters.exact_entities == 2


def test_missing_and_unknown_records_are_counted_not_scored() -> None:
    """Invariant: records outside the intersection are reported per agency and leave the scores alone."""
    predicted = _perfect()
    del predicted[("c", "c1")]  # e.g. opted out at c
    predicted[("d", "d9")] = "e-p1"  # an agency the truth does not know
    predicted[("a", "zz")] = "e-p1"
    report = evaluate_linkage(TRUTH, predicted)
    assert report.records.in_truth == 6
    assert report.records.in_prediction == 7
    assert report.records.scored == 5
    assert report.records.missing_from_prediction == 1
    assert dict(report.records.missing_by_agency) == {"c": 1}
    assert dict(report.records.unknown_by_agency) == {"a": 1, "d": 1}
    assert report.overall.f1 == 1.0  # p1 still has (a1,b1) correct; c1 is not scored
    assert report.overall.true_pairs == 2
    assert "d" in report.agencies and all("d" not in pair for pair in report.by_agency_pair)


def test_report_is_json_ready() -> None:
    """Invariant: to_dict() survives json round-trips with the same figures."""
    report = evaluate_linkage(TRUTH, _perfect())
    loaded = json.loads(json.dumps(report.to_dict()))
    assert loaded["overall"]["f1"] == 1.0
    assert {tuple(item["agencies"]) for item in loaded["by_agency_pair"]} == {("a", "b"), ("a", "c"), ("b", "c")}
    assert loaded["clusters"]["exact_share"] == 1.0


def test_empty_inputs_give_empty_scores() -> None:
    """Invariant: nothing to score gives zero counts and undefined (None) ratios, not an exception."""
    report = evaluate_linkage({}, {})
    assert report.overall == PairScores(0, 0, 0)
    assert report.overall.precision is None and report.clusters.exact_share is None


def _brute_force(truth: dict[tuple[str, str], int], predicted: dict[tuple[str, str], int]) -> tuple[int, int, int]:
    keys = sorted(set(truth) & set(predicted))
    tp = fp = fn = 0
    for x, y in itertools.combinations(keys, 2):
        if x[0] == y[0]:
            continue
        same_person = truth[x] == truth[y]
        same_cluster = predicted[x] == predicted[y]
        tp += same_person and same_cluster
        fp += same_cluster and not same_person
        fn += same_person and not same_cluster
    return tp, fp, fn


_records = st.dictionaries(
    st.tuples(st.sampled_from("abcd"), st.integers(0, 12).map(str)),
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_records)
def test_combinatorial_counts_equal_brute_force_pair_enumeration(records: dict) -> None:  # type: ignore[type-arg]
    """Invariant: counting by groups equals enumerating every cross-agency pair (anonlink-style reference)."""
    truth = {key: person for key, (person, _, _) in records.items()}
    predicted = {key: cluster for key, (_, cluster, kept) in records.items() if kept}
    report = evaluate_linkage(truth, predicted)
    tp, fp, fn = _brute_force(truth, predicted)
    overall = report.overall
    assert (overall.correct_pairs, overall.false_positives, overall.false_negatives) == (tp, fp, fn)
    per_pair = report.by_agency_pair.values()
    assert sum(s.true_pairs for s in per_pair) == report.overall.true_pairs
    assert sum(s.predicted_pairs for s in per_pair) == report.overall.predicted_pairs
    assert report.records.scored + report.records.missing_from_prediction == len(truth)
    # Exact entities, by definition, counted the slow way.
    scored = set(truth) & set(predicted)
    people = {truth[k] for k in scored}
    exact = sum(
        1
        for person in people
        if len({predicted[k] for k in scored if truth[k] == person}) == 1
        and {k for k in scored if truth[k] == person}
        == {k for k in scored if predicted[k] == next(predicted[j] for j in scored if truth[j] == person)}
    )
    assert report.clusters.exact_entities == exact


def test_by_agency_and_flat_forms_agree() -> None:
    """Invariant: the nested per-agency input gives the same report as the flat one."""
    nested_truth: dict[str, dict[str, str]] = {}
    nested_pred: dict[str, dict[str, str]] = {}
    for (agency, record_id), person in TRUTH.items():
        nested_truth.setdefault(agency, {})[record_id] = person
        nested_pred.setdefault(agency, {})[record_id] = "one-cluster"
    flat = evaluate_linkage(TRUTH, {key: "one-cluster" for key in TRUTH})
    assert evaluate_linkage_by_agency(nested_truth, nested_pred) == flat


# ---- readers ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_readers_round_trip(tmp_path: Path) -> None:
    """Invariant: what the files say is what the readers return; a folder means its *.entities.csv."""
    truth = _write(tmp_path / "truth.csv", "agency,record_id,person\na,a1,p1\nb,b1,p1\n")
    assert read_truth(truth) == {"a": {"a1": "p1"}, "b": {"b1": "p1"}}
    folder = tmp_path / "run"
    folder.mkdir()
    _write(folder / "a.entities.csv", "record_id,entity_id\na1,E1\n")
    _write(folder / "b.entities.csv", "entity_id,record_id\nE1,b1\n")  # column order is free
    _write(folder / "notes.txt", "ignored")
    assert read_predictions([folder]) == {"a": {"a1": "E1"}, "b": {"b1": "E1"}}
    assert read_entities(folder / "a.entities.csv") == {"a1": "E1"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("record_id\nSENTINEL7\n", "header lacks column(s) entity_id"),
        ("record_id,entity_id\n,E1\n", "row 2, field record_id: is empty"),
        ("record_id,entity_id\nSENTINEL7,E1\nSENTINEL8,\n", "row 3, field entity_id: is empty"),
        ("record_id,entity_id\nSENTINEL7,E1\nSENTINEL7,E2\n", "row 3, field record_id: repeats"),
        ("record_id,entity_id\nSENTINEL7,E1,extra\n", "row 2: 3 fields"),
        ("", "empty"),
    ],
)
def test_bad_entities_file_names_file_and_row_never_values(tmp_path: Path, text: str, fragment: str) -> None:
    """Invariant: a malformed file is refused with file, row and field; record values stay out of it."""
    path = _write(tmp_path / "a.entities.csv", text)
    with pytest.raises(RecordValidationError) as caught:
        read_entities(path)
    message = str(caught.value)
    assert str(path) in message and fragment in message
    assert "SENTINEL" not in message


def test_bad_truth_file_is_refused(tmp_path: Path) -> None:
    """Invariant: truth rows need all three fields and unique (agency, record_id)."""
    no_person = _write(tmp_path / "t1.csv", "agency,record_id\na,1\n")
    with pytest.raises(RecordValidationError, match="lacks column"):
        read_truth(no_person)
    blank = _write(tmp_path / "t2.csv", "agency,record_id,person\na,1,p\nb,,p\n")
    with pytest.raises(RecordValidationError, match="row 3, field record_id: is empty"):
        read_truth(blank)
    twice = _write(tmp_path / "t3.csv", "agency,record_id,person\na,1,p\nb,1,p\na,1,q\n")
    with pytest.raises(RecordValidationError, match="row 4"):
        read_truth(twice)
    latin1 = tmp_path / "t4.csv"
    latin1.write_bytes("agency,record_id,person\na,1,Zoë\n".encode("latin-1"))
    with pytest.raises(RecordValidationError, match="UTF-8"):
        read_truth(latin1)


def test_entity_file_collection_refuses_ambiguity(tmp_path: Path) -> None:
    """Invariant: every file names one agency, once; empty folders and odd names are refused."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no \\*.entities.csv"):
        collect_entity_files([tmp_path / "empty"])
    odd = _write(tmp_path / "a.csv", "record_id,entity_id\n")
    with pytest.raises(UsageError, match="<agency>.entities.csv"):
        collect_entity_files([odd])
    one = _write(tmp_path / "a.entities.csv", "record_id,entity_id\n")
    with pytest.raises(UsageError, match="already given"):
        collect_entity_files([one, tmp_path])
    with pytest.raises(UsageError, match="no such file"):
        collect_entity_files([tmp_path / "missing.entities.csv"])
    assert collect_entity_files([tmp_path]) == {"a": one}
