"""Columnar validation reads every chunk exactly as the row-by-row reading it replaced.

``validate_chunk`` checks whole columns at C speed and goes row by row only where a column holds a
problem. The invariant: on any chunk (opt-outs, unreadable opt-out values, short rows, NUL bytes,
empty ids, invalid identifiers and attributes, too few identifiers) it returns the same rows, the
same normalised values and the same problems in the same order as the row-by-row loop below.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest

from nodes.validation import (
    NUL_IN_ROW,
    OPT_OUT_UNREADABLE,
    ChunkResult,
    RecordSpec,
    RowProblem,
    _attribute_checker,
    _normaliser,
    record_spec,
    validate_chunk,
)
from pplink.agreement import FieldKind
from pplink.normalise import InvalidValue
from tests.support import COLUMNS, Setup


def _row_by_row(
    spec: RecordSpec,
    file: str,
    columns: Sequence[str],
    rows: Sequence[tuple[int, Sequence[str]]],
    *,
    check_nul: bool = False,
) -> ChunkResult:
    # The row-by-row validation that the columnar one replaced, kept verbatim as the reference.
    index = {name: i for i, name in enumerate(columns)}
    id_at = index[spec.record_id_column]
    opt_at = index[spec.opt_out_column] if spec.opt_out_column else None
    # One lookup per row: value -> opted out (True) or not (False); absent: unreadable.
    verdict = {v: True for v in spec.opt_out_values} | {v: False for v in spec.opt_in_values}
    verdict |= {theirs: verdict[ours] for theirs, ours in spec.opt_out_map if ours in verdict}
    width = len(columns)
    result = ChunkResult()
    problems: list[tuple[int, int, RowProblem]] = []  # (position in chunk, column order, problem)
    kept: list[tuple[int, Sequence[str]]] = []

    def refuse(row_number: int, values: Sequence[str], column: str, reason: str) -> None:
        result.problems.append(RowProblem(file, row_number, column, reason))
        result.rejected_rows.append(row_number)
        result.rejected_values.append((row_number, values))

    for row_number, values in rows:
        if len(values) != width:
            refuse(row_number, values, "(row)", f"has {len(values)} fields, header has {width}")
            continue
        if check_nul and any("\x00" in v for v in values):
            refuse(row_number, values, "(row)", NUL_IN_ROW)
            continue
        if opt_at is not None:
            opted = verdict.get(values[opt_at].strip().casefold())
            if opted:
                result.opted_out += 1
                continue
            if opted is None:
                refuse(row_number, values, spec.opt_out_column or "", OPT_OUT_UNREADABLE)
                continue
        kept.append((row_number, values))
    numbers = [n for n, _ in kept]
    ids = [v[id_at].strip() for _, v in kept]
    problems.extend((i, -1, RowProblem(file, numbers[i], spec.record_id_column, "is empty"))
                    for i, rid in enumerate(ids) if not rid)
    outputs: list[list[str]] = []
    for order, (col, kind, required) in enumerate(spec.fields):
        at = index[col]
        raw = [v[at] for _, v in kept]
        if kind is FieldKind.DATE:
            result.date_values[col] = set(raw)  # raw values: stripped once, after the merge
        out = list(map(_normaliser(kind, spec.formats_for(col), spec.ambiguous_for(col)), raw))
        for i, value in enumerate(out):
            if value.__class__ is InvalidValue:
                problems.append((i, order, RowProblem(file, numbers[i], col, str(value))))
                out[i] = ""
            elif required and not value:
                problems.append((i, order, RowProblem(file, numbers[i], col, "is required but empty")))
        outputs.append(out)  # type: ignore[arg-type]
    attr_outputs = []
    for order, attr in enumerate(spec.attributes, start=len(spec.fields)):
        if attr.column not in index:
            attr_outputs.append([None] * len(kept))
            continue
        at = index[attr.column]
        out_a = list(map(_attribute_checker(attr), [v[at] for _, v in kept]))
        for i, value in enumerate(out_a):
            if value.__class__ is InvalidValue:
                problems.append((i, order, RowProblem(file, numbers[i], attr.column, str(value))))
        attr_outputs.append(out_a)
    identifiers = list(zip(*outputs, strict=True)) if outputs else [()] * len(kept)
    if spec.min_fields:
        order = len(spec.fields) + len(spec.attributes)
        problems.extend(
            (i, order, RowProblem(file, numbers[i], "(identifiers)",
                                  f"has fewer than {spec.min_fields} identifier values"))
            for i, ident in enumerate(identifiers) if sum(map(bool, ident)) < spec.min_fields
        )
    bad = {i for i, _, _ in problems}
    problems.sort(key=lambda p: (p[0], p[1]))
    result.problems.extend(p for _, _, p in problems)
    result.rejected_rows.extend(numbers[i] for i in sorted(bad))
    result.rejected_values.extend(kept[i] for i in sorted(bad))
    attributes = list(zip(*attr_outputs, strict=True)) if attr_outputs else [()] * len(kept)
    for i in range(len(kept)):
        if i not in bad:
            result.record_ids.append(ids[i])
            result.row_numbers.append(numbers[i])
            result.identifiers.append(identifiers[i])
            result.attributes.append(attributes[i])  # type: ignore[arg-type]
    return result



_BAD = {
    "record_id": ["", "  "],
    "given_name": ["1234", "", "x" * 120],
    "surname": ["", "99"],
    "date_of_birth": ["31/02/2010", "not a date", "", "1850-01-01"],
    "sex": ["Q", "", "unknown"],
    "postcode": ["12345", ""],
    "opt_out": ["Yes", "y", "maybe", " N ", ""],
    "area": ["E99", ""],
    "deprivation_quintile": ["9", "x", ""],
}


def _chunks(people, seed: int) -> list[list[tuple[int, list[str]]]]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    clean = [[p[c] for c in COLUMNS] for p in people(200, seed)]
    chunks = [[(i + 2, list(r)) for i, r in enumerate(clean)]]  # a clean chunk: the fast path throughout
    for rate in (0.01, 0.2):
        rows = []
        for i, r in enumerate(clean):
            row = list(r)
            for j, c in enumerate(COLUMNS):
                if c in _BAD and rng.random() < rate:
                    row[j] = rng.choice(_BAD[c])
            if rng.random() < rate / 4:
                row = row[:-1] if rng.random() < 0.5 else [*row, "extra"]
            elif rng.random() < rate / 4:
                row[1] = "a\x00b"
            rows.append((i + 2, row))
        chunks.append(rows)
    return chunks


@pytest.mark.parametrize("check_nul", [False, True])
def test_columnar_validation_equals_row_by_row(setup: Setup, people, check_nul: bool) -> None:  # type: ignore[no-untyped-def]
    specs = [record_spec(setup.agreement, "school"),
             dataclasses.replace(record_spec(setup.agreement, "school"), min_fields=4,
                                 opt_out_map=(("maybe", "n"),))]
    compared = 0
    for spec in specs:
        for seed in (1, 2, 3):
            for rows in _chunks(people, seed):
                got = validate_chunk(spec, "f.csv", list(COLUMNS), rows, check_nul=check_nul)
                want = _row_by_row(spec, "f.csv", list(COLUMNS), rows, check_nul=check_nul)
                assert dataclasses.asdict(got) == dataclasses.asdict(want)
                compared += len(want.problems)
    assert compared > 100  # the chunks did exercise the problem paths


def test_columnar_validation_of_no_rows(setup: Setup) -> None:
    spec = record_spec(setup.agreement, "school")
    got = validate_chunk(spec, "f.csv", list(COLUMNS), [])
    assert dataclasses.asdict(got) == dataclasses.asdict(_row_by_row(spec, "f.csv", list(COLUMNS), []))
