"""Reading an agency's records and validating every row against the agreement.

Validation is a pure function over chunks of raw rows, so it can run in worker processes next to
the encoder. A problem names the file, the row (the line number in a CSV, counting the header as
row 1) and the field, with a reason that never repeats the value.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pplink.agreement import AgreementConfig, FieldKind
from pplink.errors import DependencyMissingError, RecordValidationError
from pplink.normalise import (
    InvalidValue,
    normalise_date,
    normalise_name,
    normalise_postcode,
    normalise_sex,
    normalise_text,
)

__all__ = [
    "ChunkResult",
    "RecordSpec",
    "RowProblem",
    "iter_record_chunks",
    "record_spec",
    "validate_chunk",
]


@dataclass(frozen=True)
class RowProblem:
    """One invalid field in one row."""

    file: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}, field {self.field}: {self.reason}"


@dataclass(frozen=True)
class AttributeSpec:
    """A release attribute's allowed values or numeric bounds."""

    column: str
    values: frozenset[str] | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True)
class RecordSpec:
    """Everything row validation needs, derived from the agreement for one agency (picklable)."""

    record_id_column: str
    opt_out_column: str | None
    opt_out_values: frozenset[str]
    fields: tuple[tuple[str, FieldKind, bool], ...]  # (column, kind, required)
    date_formats: tuple[str, ...]
    attributes: tuple[AttributeSpec, ...]

    @property
    def required_columns(self) -> list[str]:
        """Columns the input must have (the opt-out column is optional)."""
        return [self.record_id_column, *(c for c, _, _ in self.fields), *(a.column for a in self.attributes)]


def record_spec(agreement: AgreementConfig, party: str) -> RecordSpec:
    """Build the validation spec for ``party``'s records under ``agreement``."""
    ids = agreement.identifiers
    return RecordSpec(
        record_id_column=ids.record_id_column,
        opt_out_column=ids.opt_out_column,
        opt_out_values=frozenset(v.casefold() for v in ids.opt_out_values),
        fields=tuple((f.column, f.kind, f.required) for f in ids.fields),
        date_formats=agreement.date_formats_for(party),
        attributes=tuple(
            AttributeSpec(a.column, frozenset(a.values) if a.values is not None else None, a.lower, a.upper)
            for a in agreement.release.attributes
        ),
    )


@dataclass
class ChunkResult:
    """Validated, normalised rows of one chunk, plus its problems and opt-out count."""

    record_ids: list[str] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    identifiers: list[tuple[str, ...]] = field(default_factory=list)
    attributes: list[tuple[str | None, ...]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    rejected_rows: list[int] = field(default_factory=list)
    opted_out: int = 0


def _normaliser(kind: FieldKind, date_formats: tuple[str, ...]):  # type: ignore[no-untyped-def]
    if kind is FieldKind.NAME:
        return normalise_name
    if kind is FieldKind.DATE:
        # Hashed as YYYYMMDD: the ISO hyphens would be positional tokens every date shares.
        return lambda v: normalise_date(v, date_formats).replace("-", "")
    if kind is FieldKind.SEX:
        return normalise_sex
    if kind is FieldKind.POSTCODE:
        return normalise_postcode
    return normalise_text


def _check_attribute(spec: AttributeSpec, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    if spec.values is not None:
        if value not in spec.values:
            raise InvalidValue("not one of the agreement's declared values")
        return value
    try:
        number = float(value)
    except ValueError:
        raise InvalidValue("not a number") from None
    assert spec.lower is not None and spec.upper is not None
    if not spec.lower <= number <= spec.upper:
        raise InvalidValue("outside the agreement's bounds")
    return value


def validate_chunk(
    spec: RecordSpec,
    file: str,
    columns: Sequence[str],
    rows: Sequence[tuple[int, Sequence[str]]],
) -> ChunkResult:
    """Validate and normalise a chunk of raw rows.

    Args:
        spec: from :func:`record_spec`.
        file: the file name used in problem messages.
        columns: the input's header, in order.
        rows: ``(row_number, values)`` pairs, values in header order.

    Returns:
        A :class:`ChunkResult`. Opted-out rows are counted and dropped before any other check:
        they are never validated, normalised or encoded.
    """
    index = {name: i for i, name in enumerate(columns)}
    id_at = index[spec.record_id_column]
    opt_at = index.get(spec.opt_out_column) if spec.opt_out_column else None
    fields = [(col, index[col], _normaliser(kind, spec.date_formats), required) for col, kind, required in spec.fields]
    attrs = [(a, index[a.column]) for a in spec.attributes]
    width = len(columns)
    result = ChunkResult()
    for row_number, values in rows:
        if len(values) != width:
            result.problems.append(
                RowProblem(file, row_number, "(row)", f"has {len(values)} fields, header has {width}")
            )
            result.rejected_rows.append(row_number)
            continue
        if opt_at is not None and values[opt_at].strip().casefold() in spec.opt_out_values:
            result.opted_out += 1
            continue
        problems_before = len(result.problems)
        record_id = values[id_at].strip()
        if not record_id:
            result.problems.append(RowProblem(file, row_number, spec.record_id_column, "is empty"))
        normalised = []
        for col, at, normalise, required in fields:
            try:
                value = normalise(values[at])
            except InvalidValue as exc:
                result.problems.append(RowProblem(file, row_number, col, str(exc)))
                continue
            if not value and required:
                result.problems.append(RowProblem(file, row_number, col, "is required but empty"))
            normalised.append(value)
        attr_values = []
        for attr, at in attrs:
            try:
                attr_values.append(_check_attribute(attr, values[at]))
            except InvalidValue as exc:
                result.problems.append(RowProblem(file, row_number, attr.column, str(exc)))
        if len(result.problems) != problems_before:
            result.rejected_rows.append(row_number)
            continue
        result.record_ids.append(record_id)
        result.row_numbers.append(row_number)
        result.identifiers.append(tuple(normalised))
        result.attributes.append(tuple(attr_values))
    return result


def _check_header(path: Path, columns: Sequence[str], spec: RecordSpec) -> None:
    missing = [c for c in spec.required_columns if c not in columns]
    if missing:
        raise RecordValidationError(f"{path}: row 1: missing column(s) {', '.join(missing)}")
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise RecordValidationError(f"{path}: row 1: column(s) appear twice: {', '.join(dupes)}")


def iter_record_chunks(
    path: Path, spec: RecordSpec, chunk_size: int
) -> tuple[list[str], Iterator[list[tuple[int, list[str]]]]]:
    """Open a CSV or Parquet file and yield its rows in chunks.

    Returns:
        ``(columns, chunks)``; each chunk is a list of ``(row_number, values)``.

    Raises:
        RecordValidationError: unreadable file, bad encoding, or missing columns (naming them).
        DependencyMissingError: a Parquet file without ``pyarrow`` installed.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordValidationError(f"{path}: records file not found")
    if path.suffix.lower() in {".parquet", ".pq"}:
        columns, rows = _read_parquet(path)
        _check_header(path, columns, spec)
        return columns, _chunked(rows, chunk_size)
    fh = open(path, "rb")  # noqa: SIM115 - closed by the chunk generator
    reader = csv.reader(_decoded_lines(fh, path))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        fh.close()
        raise RecordValidationError(f"{path}: row 1: malformed CSV ({exc})") from None
    except RecordValidationError:
        fh.close()
        raise
    if header is None:
        fh.close()
        raise RecordValidationError(f"{path}: file is empty (no header row)")
    columns = [c.strip() for c in header]
    try:
        _check_header(path, columns, spec)
    except RecordValidationError:
        fh.close()
        raise
    return columns, _csv_chunks(path, fh, reader, chunk_size)


def _csv_chunks(path: Path, fh, reader, chunk_size: int) -> Iterator[list[tuple[int, list[str]]]]:  # type: ignore[no-untyped-def]
    with fh:
        chunk: list[tuple[int, list[str]]] = []
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise RecordValidationError(f"{path}: row {reader.line_num}: malformed CSV ({exc})") from None
            if not values:
                continue  # a blank line is not a record
            chunk.append((reader.line_num, values))
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _decoded_lines(fh: BinaryIO, path: Path) -> Iterator[str]:
    # Decoding line by line (not through a buffered text wrapper) lets an encoding error name
    # the exact row.
    for number, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordValidationError(f"{path}: row {number}: not valid UTF-8 (save the file as UTF-8)") from None
        yield line.removeprefix("\ufeff") if number == 1 else line


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DependencyMissingError(
            f"{path}: reading Parquet needs pyarrow: pip install 'pplink[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise RecordValidationError(f"{path}: cannot be read as Parquet ({type(exc).__name__})") from None
    columns = list(table.column_names)
    data = [
        ["" if v is None else str(v) for v in table.column(i).to_pylist()] for i in range(len(columns))
    ]
    # Parquet has no lines; number data rows from 2 so messages match the CSV convention.
    rows = [(i + 2, [col[i] for col in data]) for i in range(table.num_rows)]
    return columns, rows


def _chunked(rows: list[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
