"""The pseudonym map the coordinator returns to each agency: ``row_token,entity_id``.

One line for every row the agency sent, linked or not, so the agency cannot tell which of its
rows were found elsewhere. Entity ids are random 128-bit values (32 hex characters) unrelated to
tokens or row order.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pplink.errors import LinkageMapError

__all__ = ["MAP_HEADER", "read_entity_map", "write_entity_map"]

MAP_HEADER = ("row_token", "entity_id")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def write_entity_map(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write ``row_token,entity_id`` lines atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="", encoding="ascii") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MAP_HEADER)
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_entity_map(path: Path) -> dict[str, str]:
    """Read a pseudonym map into ``{row_token: entity_id}``.

    Raises:
        LinkageMapError: wrong header, malformed or duplicated token, malformed entity id; the
            message names the file and row.
    """
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="ascii")
    except OSError as exc:
        raise LinkageMapError(f"{path}: cannot read ({exc.strerror})") from None
    out: dict[str, str] = {}
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or tuple(header) != MAP_HEADER:
                raise LinkageMapError(f"{path}: row 1: header must be {','.join(MAP_HEADER)}")
            for row in reader:
                line = reader.line_num
                _check_row(path, line, row)
                if row[0] in out:
                    raise LinkageMapError(f"{path}: row {line}: row_token appears twice")
                out[row[0]] = row[1]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise LinkageMapError(f"{path}: not an ASCII CSV file ({type(exc).__name__})") from None
    return out


def _check_row(path: Path, line: int, row: Sequence[str]) -> None:
    if len(row) != 2:
        raise LinkageMapError(f"{path}: row {line}: expected 2 fields, found {len(row)}")
    for field, value in zip(MAP_HEADER, row, strict=True):
        if not _HEX32.match(value):
            raise LinkageMapError(f"{path}: row {line}, field {field}: not 32 lower-case hex characters")
