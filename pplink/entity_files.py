"""The three two-column CSV files of a linkage, read and written in one place.

=================  ===========================  ===========  =================================
file               header                       who has it   error when malformed
=================  ===========================  ===========  =================================
``.tokens``        ``row_token,record_id``      the agency   :class:`~pplink.errors.EncodingFileError`
``.map.csv``       ``row_token,entity_id``      both         :class:`~pplink.errors.LinkageMapError`
``.entities.csv``  ``record_id,entity_id``      the agency   :class:`~pplink.errors.EntitiesFileError`
=================  ===========================  ===========  =================================

Row tokens and entity ids are 32 lower-case hex characters (random 128-bit values); record ids
are the agency's own and only need to be non-empty. The pseudonym map holds one line for every
row the agency sent, linked or not, so the agency cannot tell which of its rows were found
elsewhere. Files the agency keeps (tokens, entities) are written owner-only (0600). Every write is
atomic (:mod:`pplink.atomic`). Messages name the file, row and field, never a value.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_pairs(TOKENS, folder / "a.tokens", [("0" * 32, "r1")])
>>> read_pairs(TOKENS, folder / "a.tokens")
{'00000000000000000000000000000000': 'r1'}
>>> oct((folder / "a.tokens").stat().st_mode & 0o777)
'0o600'
>>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pplink.atomic import atomic_file
from pplink.errors import EncodingFileError, EntitiesFileError, LinkageMapError, PplinkError

__all__ = [
    "ENTITIES",
    "ENTITIES_HEADER",
    "MAP",
    "MAP_HEADER",
    "TOKENS",
    "TOKENS_HEADER",
    "PairFile",
    "map_file_name",
    "read_entities",
    "read_entity_map",
    "read_pairs",
    "read_tokens",
    "write_entities",
    "write_entity_map",
    "write_pairs",
    "write_tokens",
]

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class PairFile:
    """One two-column file format: its header, what each column holds, its error and permissions."""

    what: str
    header: tuple[str, str]
    hex_columns: tuple[bool, bool]
    error: type[PplinkError]
    encoding: str
    mode: int


TOKENS = PairFile("token file", ("row_token", "record_id"), (True, False), EncodingFileError, "utf-8", 0o600)
MAP = PairFile("pseudonym map", ("row_token", "entity_id"), (True, True), LinkageMapError, "ascii", 0o644)
ENTITIES = PairFile("entities file", ("record_id", "entity_id"), (False, True), EntitiesFileError, "utf-8", 0o600)

TOKENS_HEADER = TOKENS.header
MAP_HEADER = MAP.header
ENTITIES_HEADER = ENTITIES.header


def map_file_name(party: str) -> str:
    """The name of a party's pseudonym map in a round's folder and in its manifest."""
    return f"{party}.map.csv"


def write_pairs(fmt: PairFile, path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write ``fmt``'s header and ``rows`` to ``path`` atomically, with ``fmt``'s permissions."""
    rows = list(rows)
    text = _unquoted(rows)
    with atomic_file(Path(path), mode=fmt.mode, text=True, encoding=fmt.encoding) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(fmt.header)
        if text is not None:
            fh.write(text)  # the bytes csv would write, joined in C (a token file has a line per record)
        else:
            writer.writerows(rows)


def _unquoted(rows: list[tuple[str, str]]) -> str | None:
    """The rows as csv writes them where no field needs quoting or formatting; otherwise ``None``.

    A field needs csv's care when it holds a delimiter, quote or line break, is empty, or is not a
    string: each shows in the joined text (an extra comma or newline, a comma at a line's edge).
    """
    if not rows:
        return ""
    if not set(map(len, rows)) <= {2}:
        return None
    try:
        text = "\n".join(map(",".join, rows))
    except TypeError:
        return None
    if (text.count(",") != len(rows) or text.count("\n") != len(rows) - 1 or '"' in text or "\r" in text
            or text.startswith(",") or text.endswith(",") or ",\n" in text or "\n," in text):
        return None
    return text + "\n"


def read_pairs(fmt: PairFile, path: Path, *, data: bytes | None = None) -> dict[str, str]:
    """Read a two-column file into ``{first: second}`` (from ``data``, its bytes, when given).

    Raises:
        PplinkError: ``fmt.error``: missing or unreadable file, wrong header, a row without two
            fields, a malformed hex field, an empty field or a repeated first column (names the row).
    """
    path = Path(path)
    err = fmt.error
    try:
        fh = (open(path, newline="", encoding=fmt.encoding) if data is None
              else io.TextIOWrapper(io.BytesIO(data), encoding=fmt.encoding, newline=""))
    except OSError as exc:
        raise err(f"{path}: cannot read the {fmt.what} ({exc.strerror})") from None
    out: dict[str, str] = {}
    first, second = fmt.header
    hex_first, hex_second = fmt.hex_columns
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or tuple(header) != fmt.header:
                raise err(f"{path}: row 1: header must be {','.join(fmt.header)}")
            for row in reader:
                line = reader.line_num
                if len(row) != 2:
                    raise err(f"{path}: row {line}: expected 2 fields, found {len(row)}")
                key, value = row
                if hex_first and not _HEX32.match(key) or not key:
                    raise err(f"{path}: row {line}, field {first}: " +
                              ("not 32 lower-case hex characters" if hex_first else "empty"))
                if hex_second and not _HEX32.match(value) or not value:
                    raise err(f"{path}: row {line}, field {second}: " +
                              ("not 32 lower-case hex characters" if hex_second else "empty"))
                if key in out:
                    raise err(f"{path}: row {line}: {first} appears twice")
                out[key] = value
        except (UnicodeDecodeError, csv.Error) as exc:
            raise err(f"{path}: not a {fmt.encoding.upper()} CSV file ({type(exc).__name__})") from None
    return out


def write_tokens(path: Path, tokens: Iterable[str], record_ids: Iterable[str]) -> None:
    """Write the node's ``row_token,record_id`` file (owner-only: it maps tokens back to the agency's ids)."""
    write_pairs(TOKENS, path, zip(tokens, record_ids, strict=True))


def read_tokens(path: Path) -> dict[str, str]:
    """Read ``{row_token: record_id}``; raises :class:`~pplink.errors.EncodingFileError`."""
    return read_pairs(TOKENS, path)


def write_entity_map(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write a pseudonym map's ``row_token,entity_id`` lines."""
    write_pairs(MAP, path, rows)


def read_entity_map(path: Path, *, data: bytes | None = None) -> dict[str, str]:
    """Read ``{row_token: entity_id}`` (from ``data`` when given); raises :class:`~pplink.errors.LinkageMapError`."""
    return read_pairs(MAP, path, data=data)


def write_entities(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write the agency's ``record_id,entity_id`` result (owner-only)."""
    write_pairs(ENTITIES, path, rows)


def read_entities(path: Path) -> dict[str, str]:
    """Read ``{record_id: entity_id}``; raises :class:`~pplink.errors.EntitiesFileError`."""
    return read_pairs(ENTITIES, path)
