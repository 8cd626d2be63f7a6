"""Reading an agency's records and validating every row against the agreement.

Validation is a pure function over chunks of raw rows, so it can run in worker processes next to
the encoder. A problem names the file, the row (the line number in a CSV, counting the header as
row 1) and the field, with a reason that never repeats the value.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from pplink.agreement import AgreementConfig, FieldKind
from pplink.errors import DependencyMissingError, RecordValidationError
from pplink.normalise import InvalidValue, hashed_form

__all__ = [
    "ChunkResult",
    "RecordSpec",
    "RowProblem",
    "Chunk",
    "CsvBlock",
    "iter_record_chunks",
    "parse_chunk",
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
    min_fields: int = 0

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
        min_fields=ids.min_fields,
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
    #: The raw values of rejected rows, so a rejects file loses nothing.
    rejected_values: list[tuple[int, Sequence[str]]] = field(default_factory=list)
    opted_out: int = 0


def _safe(fn: Callable[[str], str]) -> Callable[[str], str | InvalidValue]:
    # Returning (not raising) the error lets a whole column go through one cached `map`.
    @lru_cache(maxsize=1 << 18)
    def run(value: str) -> str | InvalidValue:
        try:
            return fn(value)
        except InvalidValue as exc:
            return exc

    return run


@lru_cache(maxsize=64)
def _normaliser(kind: FieldKind, date_formats: tuple[str, ...]) -> Callable[[str], str | InvalidValue]:
    """One cached, non-raising normaliser per field kind (and date formats), shared by all chunks."""
    return _safe(hashed_form(kind, date_formats))


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


@lru_cache(maxsize=64)
def _attribute_checker(spec: AttributeSpec) -> Callable[[str], str | None | InvalidValue]:
    @lru_cache(maxsize=1 << 12)
    def run(value: str) -> str | None | InvalidValue:
        try:
            return _check_attribute(spec, value)
        except InvalidValue as exc:
            return exc

    return run


def validate_chunk(
    spec: RecordSpec,
    file: str,
    columns: Sequence[str],
    rows: Sequence[tuple[int, Sequence[str]]],
) -> ChunkResult:
    """Validate and normalise a chunk of raw rows.

    Works column by column through cached normalisers: identifier values repeat heavily, so most
    values cost one dictionary lookup.

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
    width = len(columns)
    result = ChunkResult()
    problems: list[tuple[int, int, RowProblem]] = []  # (position in chunk, column order, problem)
    kept: list[tuple[int, Sequence[str]]] = []
    for row_number, values in rows:
        if len(values) != width:
            result.problems.append(RowProblem(file, row_number, "(row)",
                                              f"has {len(values)} fields, header has {width}"))
            result.rejected_rows.append(row_number)
            result.rejected_values.append((row_number, values))
        elif opt_at is not None and values[opt_at].strip().casefold() in spec.opt_out_values:
            result.opted_out += 1
        else:
            kept.append((row_number, values))
    numbers = [n for n, _ in kept]
    ids = [v[id_at].strip() for _, v in kept]
    problems.extend((i, -1, RowProblem(file, numbers[i], spec.record_id_column, "is empty"))
                    for i, rid in enumerate(ids) if not rid)
    outputs: list[list[str]] = []
    for order, (col, kind, required) in enumerate(spec.fields):
        at = index[col]
        out = list(map(_normaliser(kind, spec.date_formats), [v[at] for _, v in kept]))
        for i, value in enumerate(out):
            if value.__class__ is InvalidValue:
                problems.append((i, order, RowProblem(file, numbers[i], col, str(value))))
                out[i] = ""
            elif required and not value:
                problems.append((i, order, RowProblem(file, numbers[i], col, "is required but empty")))
        outputs.append(out)  # type: ignore[arg-type]
    attr_outputs = []
    for order, attr in enumerate(spec.attributes, start=len(spec.fields)):
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


def _check_header(path: Path, columns: Sequence[str], spec: RecordSpec) -> None:
    missing = [c for c in spec.required_columns if c not in columns]
    if missing:
        raise RecordValidationError(f"{path}: row 1: missing column(s) {', '.join(missing)}")
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise RecordValidationError(f"{path}: row 1: column(s) appear twice: {', '.join(dupes)}")


@dataclass(frozen=True)
class CsvBlock:
    """Raw CSV bytes holding whole records, and the file line number its first byte is on.

    Blocks are cut at line ends with an even number of quote characters before the cut, so no
    quoted field (which may hold a newline) is split; parsing happens in the worker.
    """

    data: bytes
    first_line: int


#: What ``iter_record_chunks`` yields: unparsed CSV bytes, or rows already read (Parquet).
Chunk = CsvBlock | list[tuple[int, list[str]]]


def parse_chunk(file: str, chunk: Chunk) -> list[tuple[int, list[str]]]:
    """Turn a chunk into ``(row_number, values)`` rows; row numbers are file line numbers.

    Raises:
        RecordValidationError: a byte sequence that is not UTF-8, or malformed CSV (naming the row).
    """
    if not isinstance(chunk, CsvBlock):
        return chunk
    try:
        text = chunk.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = chunk.first_line + chunk.data.count(b"\n", 0, exc.start)
        raise RecordValidationError(f"{file}: row {line}: not valid UTF-8 (save the file as UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    base = chunk.first_line - 1
    rows: list[tuple[int, list[str]]] = []
    try:
        for values in reader:
            if values:  # a blank line is not a record
                rows.append((base + reader.line_num, values))
    except csv.Error as exc:
        raise RecordValidationError(f"{file}: row {base + reader.line_num}: malformed CSV ({exc})") from None
    return rows


def _complete_record(fh: BinaryIO, data: bytes) -> bytes:
    # Extend to the end of a line, and on while a quoted field (which may hold newlines) is open.
    if data and not data.endswith(b"\n"):
        data += fh.readline()
    while data.count(b'"') % 2:
        more = fh.readline()
        if not more:
            break
        data += more
    return data


def iter_record_chunks(path: Path, spec: RecordSpec, block_bytes: int = 1 << 19) -> tuple[list[str], Iterator[Chunk]]:
    """Open a CSV or Parquet file, check its header, and yield its records in chunks.

    CSV chunks are raw byte blocks (parsed by :func:`parse_chunk`, typically in a worker), so the
    reading process only slices bytes and both cores share the parsing.

    Returns:
        ``(columns, chunks)``.

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
        return columns, _chunked(rows, max(block_bytes // 100, 1))
    fh = open(path, "rb")  # noqa: SIM115 - closed by the block generator
    try:
        head = _complete_record(fh, fh.readline())
        if not head.strip():
            raise RecordValidationError(f"{path}: file is empty (no header row)")
        try:
            text = head.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            raise RecordValidationError(f"{path}: row 1: not valid UTF-8 (save the file as UTF-8)") from None
        try:
            header = next(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise RecordValidationError(f"{path}: row 1: malformed CSV ({exc})") from None
        columns = [c.strip() for c in header]
        _check_header(path, columns, spec)
    except RecordValidationError:
        fh.close()
        raise
    return columns, _csv_blocks(fh, 1 + head.count(b"\n"), block_bytes)


def _csv_blocks(fh: BinaryIO, first_line: int, block_bytes: int) -> Iterator[CsvBlock]:
    with fh:
        line = first_line
        while data := _complete_record(fh, fh.read(block_bytes)):
            yield CsvBlock(data, line)
            line += data.count(b"\n")


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
