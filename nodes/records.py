"""The one reader of an agency's records file (CSV or Parquet), for encoding and for scoring.

CSV files are read as raw byte blocks cut at record ends and parsed in worker processes; the node
settings give the delimiter, the text encoding and the mapping from the export's column names to
the agreement's. Row numbers are file line numbers, counting the header as row 1; a record that
spans lines (a quoted newline) is numbered by the line it starts on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nodes.export_settings import ExportSettings
from nodes.validation import RecordSpec
from pplink.errors import DependencyMissingError, RecordValidationError

__all__ = ["Chunk", "CsvBlock", "header_hints", "iter_record_chunks", "parse_chunk", "read_table"]

_DELIMITERS = (",", ";", "\t", "|")


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return [c.strip() for c in next(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter), [])]
    except csv.Error:
        return [line]


def _key(name: str) -> str:
    return "_".join(name.strip().casefold().replace("-", " ").split())


def header_hints(header_line: str, spec: RecordSpec, settings: ExportSettings) -> list[str]:
    """What the file's header seems to be, for a file whose columns do not match the agreement.

    Names the delimiter the header seems to use, column names that differ from the agreement's only
    in case or spacing (with the ``[columns]`` lines that would map them), and what the file has.
    Column names are not record values, so they may be shown.
    """
    hints = []
    candidates = tuple(dict.fromkeys((settings.delimiter, *_DELIMITERS)))
    splits = {d: _split(header_line, d) for d in candidates}
    best = max(candidates, key=lambda d: (len(splits[d]), d == settings.delimiter))
    found = splits[settings.delimiter]
    shown = "tab" if best == "\t" else repr(best)
    if best != settings.delimiter and len(splits[best]) > len(found):
        toml = "\\t" if best == "\t" else best
        hints.append(f"the header splits into {len(splits[best])} columns at {shown} but {len(found)} at "
                     f"{settings.delimiter!r}: the file seems to use {shown} as its delimiter "
                     f'(delimiter = "{toml}" in the node settings)')
        found = splits[best]
    mapped = settings.mapped_header(found)
    missing = [c for c in spec.required_columns if c not in mapped]
    by_key = {_key(name): name for name in found}
    near = [(by_key[_key(c)], c) for c in missing if _key(c) in by_key]
    if near:
        upper = all(name.isupper() for name, _ in near)
        style = "UPPER CASE" if upper else "in another case or spacing"
        lines = "\n    ".join(f'"{name}" = "{c}"' for name, c in near)
        hints.append(f"{len(near)} of its columns differ from the agreement's only by being {style}; "
                     f"map them in the node settings:\n    [columns]\n    {lines}")
    listed = ", ".join(found[:20]) + (f", … ({len(found)} in all)" if len(found) > 20 else "")
    hints.append(f"the file has: {listed}")
    return hints


def _check_header(path: Path, columns: Sequence[str], spec: RecordSpec | None, header_line: str = "",
                  settings: ExportSettings | None = None) -> None:
    missing = [c for c in spec.required_columns if c not in columns] if spec is not None else []
    if missing:
        err = RecordValidationError(f"{path}: row 1: missing column(s) {', '.join(missing)}")
        if spec is not None:
            for hint in header_hints(header_line or ",".join(columns), spec, settings or ExportSettings()):
                err.add_note(hint)
        raise err
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
    encoding: str = "utf-8"
    delimiter: str = ","


#: What ``iter_record_chunks`` yields: unparsed CSV bytes, or rows already read (Parquet).
Chunk = CsvBlock | list[tuple[int, list[str]]]


def _decode(file: str, data: bytes, encoding: str, first_line: int) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        hint = ("save the file as UTF-8, or name its encoding in the node settings: encoding = \"cp1252\""
                if encoding == "utf-8" else "check the encoding in the node settings")
        name = "UTF-8" if encoding == "utf-8" else encoding
        raise RecordValidationError(f"{file}: row {line}: not valid {name} ({hint})") from None


def parse_chunk(file: str, chunk: Chunk) -> list[tuple[int, list[str]]]:
    """Turn a chunk into ``(row_number, values)`` rows; a row's number is the line it starts on.

    Raises:
        RecordValidationError: bytes not in the file's encoding, or malformed CSV (naming the row
            where the bad record starts).
    """
    if not isinstance(chunk, CsvBlock):
        return chunk
    text = _decode(file, chunk.data, chunk.encoding, chunk.first_line)
    base = chunk.first_line - 1
    if '"' not in text and "\r" not in text and "\n\n" not in text and not text.startswith("\n"):
        # No quotes, carriage returns or blank lines: every line is one record, so row numbers
        # follow from positions and the rows are built in C, not one Python step per row.
        try:
            values = list(csv.reader(io.StringIO(text, newline=""), delimiter=chunk.delimiter))
        except csv.Error:
            pass  # read again below, which names the row
        else:
            return list(zip(range(base + 1, base + 1 + len(values)), values, strict=True))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=chunk.delimiter)
    rows: list[tuple[int, list[str]]] = []
    start = 0  # lines read before the current record
    try:
        for values in reader:
            if values:  # a blank line is not a record
                rows.append((base + start + 1, values))
            start = reader.line_num
    except csv.Error as exc:
        reason = str(exc)
        if "field larger than field limit" in reason:
            reason = "a quote opens a field that never closes (a stray \" in this row?)"
        raise RecordValidationError(f"{file}: row {base + start + 1}: malformed CSV ({reason})") from None
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


def iter_record_chunks(
    path: Path, spec: RecordSpec | None, block_bytes: int = 1 << 19, settings: ExportSettings | None = None
) -> tuple[list[str], Iterator[Chunk]]:
    """Open a CSV or Parquet file, check its header, and yield its records in chunks.

    CSV chunks are raw byte blocks (parsed by :func:`parse_chunk`, typically in a worker), so the
    reading process only slices bytes and both cores share the parsing. Columns come back renamed
    by the node settings' ``[columns]``.

    Returns:
        ``(columns, chunks)``.

    Raises:
        RecordValidationError: unreadable file, bad encoding, or missing columns (naming them, and
            what the file seems to have instead).
        DependencyMissingError: a Parquet file without ``pyarrow`` installed.
    """
    path = Path(path)
    settings = settings or ExportSettings()
    if not path.is_file():
        raise RecordValidationError(f"{path}: records file not found")
    if path.suffix.lower() in {".parquet", ".pq"}:
        columns, rows = _read_parquet(path)
        columns = settings.mapped_header(columns)
        _check_header(path, columns, spec, ",".join(columns), settings)
        return columns, _chunked(rows, max(block_bytes // 100, 1))
    with open(path, "rb") as fh:
        head = _complete_record(fh, fh.readline())
        if not head.strip():
            raise RecordValidationError(f"{path}: file is empty (no header row)")
        text = _decode(str(path), head, settings.encoding, 1).removeprefix("\ufeff")
        try:
            header = next(csv.reader(io.StringIO(text, newline=""), delimiter=settings.delimiter))
        except csv.Error as exc:
            raise RecordValidationError(f"{path}: row 1: malformed CSV ({exc})") from None
    columns = settings.mapped_header([c.strip() for c in header])
    _check_header(path, columns, spec, text.rstrip("\r\n"), settings)
    # The blocks reopen the file, so a generator that is never started holds no open file.
    return columns, _csv_blocks(path, len(head), 1 + head.count(b"\n"), block_bytes, settings)


def read_table(path: Path, settings: ExportSettings | None = None) -> tuple[list[str], list[list[str]]]:
    """Read a whole records file (CSV or Parquet) into its mapped header and rows, in file order.

    The same reader as encoding's, so scoring reads exactly the files (and settings) encoding does.

    Raises:
        RecordValidationError, DependencyMissingError: see :func:`iter_record_chunks`.
    """
    columns, chunks = iter_record_chunks(Path(path), None, settings=settings)
    rows: list[list[str]] = []
    for chunk in chunks:
        rows.extend(values for _, values in parse_chunk(str(path), chunk))
    return columns, rows


def _csv_blocks(path: Path, offset: int, first_line: int, block_bytes: int,
                settings: ExportSettings) -> Iterator[CsvBlock]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        line = first_line
        while data := _complete_record(fh, fh.read(block_bytes)):
            yield CsvBlock(data, line, settings.encoding, settings.delimiter)
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
