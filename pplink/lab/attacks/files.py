"""Files an auditor brings to an attack on real encodings: a public list and, to score, the truth.

* A public list is a CSV with a header and the columns ``value,count`` (a census of surnames, say).
* A truth file is a CSV with a header and one column: the true value of the attacked field for
  every encoding, in the encodings file's row order. Only the agency that made the encodings can
  write it (from its token map); without it an attack reports what it would claim, unscored.

Values are normalised as a node normalises the field's kind before the attack sees them.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from pplink.agreement import FieldKind
from pplink.errors import RecordValidationError, UsageError
from pplink.normalise import (
    InvalidValue,
    hashed_form,
    normalise_given_name,
    normalise_name,
    normalise_postcode,
    normalise_sex,
    normalise_text,
)

__all__ = ["read_public_list", "read_truth_column"]


def _normaliser(kind: FieldKind):  # type: ignore[no-untyped-def]
    if kind.is_date:
        return hashed_form(kind, ("%Y-%m-%d", "%d/%m/%Y", "%Y%m%d"))
    return {
        FieldKind.NAME: normalise_name,
        FieldKind.GIVEN_NAME: normalise_given_name,
        FieldKind.SEX: normalise_sex,
        FieldKind.POSTCODE: normalise_postcode,
        FieldKind.TEXT: normalise_text,
    }[kind]


def _rows(path: Path, expected: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != expected:
                raise RecordValidationError(f"{path}: row 1: header must be {','.join(expected)}")
            return [(number, row) for number, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RecordValidationError(f"{path}: not UTF-8 text") from None


def read_public_list(path: Path, kind: FieldKind) -> list[tuple[str, int]]:
    """Read a ``value,count`` CSV, normalise the values, merge those that normalise alike.

    Returns:
        ``(value, count)`` pairs, most frequent first.

    Raises:
        RecordValidationError: a bad header, a row without two fields, a count that is not a whole
            number of 0 or more, or a value that does not normalise (by file, row and field).
    """
    normalise = _normaliser(kind)
    counts: Counter[str] = Counter()
    for number, row in _rows(Path(path), ("value", "count")):
        if len(row) != 2:
            raise RecordValidationError(f"{path}: row {number}: has {len(row)} fields, header has 2")
        try:
            count = int(row[1])
        except ValueError:
            raise RecordValidationError(f"{path}: row {number}, field count: not a whole number") from None
        if count < 0:
            raise RecordValidationError(f"{path}: row {number}, field count: is negative")
        try:
            value = normalise(row[0])
        except InvalidValue as exc:
            raise RecordValidationError(f"{path}: row {number}, field value: {exc}") from None
        if value:
            counts[value] += count
    return counts.most_common()


def read_truth_column(path: Path, kind: FieldKind, rows: int) -> list[str]:
    """Read a one-column truth CSV (header ``value``) of exactly ``rows`` values, normalised.

    Values that do not normalise count as missing (the node would have rejected those rows).

    Raises:
        RecordValidationError: a bad header, a row with more than one field, or a row count that
            differs from the encodings'.
    """
    normalise = _normaliser(kind)
    values = []
    parsed = _rows(Path(path), ("value",))
    for number, row in parsed:
        if len(row) != 1:
            raise RecordValidationError(f"{path}: row {number}: has {len(row)} fields, header has 1")
        try:
            values.append(normalise(row[0]))
        except InvalidValue:
            values.append("")
    if len(values) != rows:
        raise RecordValidationError(f"{path}: has {len(values)} values, the encodings file has {rows} rows")
    return values
