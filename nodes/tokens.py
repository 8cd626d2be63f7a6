"""The node-local token file: ``row_token,record_id``. It never leaves the agency."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

from pplink.errors import EncodingFileError

__all__ = ["TOKENS_HEADER", "read_tokens", "write_tokens"]

TOKENS_HEADER = ("row_token", "record_id")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def write_tokens(path: Path, tokens: Sequence[str], record_ids: Sequence[str]) -> None:
    """Write the token map, readable only by its owner (it maps tokens back to the agency's ids)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TOKENS_HEADER)
        writer.writerows(zip(tokens, record_ids, strict=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_tokens(path: Path) -> dict[str, str]:
    """Read ``{row_token: record_id}``.

    Raises:
        EncodingFileError: missing file, wrong header, malformed or repeated token (names the row).
    """
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read token file ({exc.strerror})") from None
    out: dict[str, str] = {}
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or tuple(header) != TOKENS_HEADER:
                raise EncodingFileError(f"{path}: row 1: header must be {','.join(TOKENS_HEADER)}")
            for row in reader:
                line = reader.line_num
                if len(row) != 2 or not _HEX32.match(row[0]) or not row[1]:
                    raise EncodingFileError(f"{path}: row {line}: expected a 32-hex-digit token and a record id")
                if row[0] in out:
                    raise EncodingFileError(f"{path}: row {line}: row_token appears twice")
                out[row[0]] = row[1]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise EncodingFileError(f"{path}: not a UTF-8 CSV file ({type(exc).__name__})") from None
    return out
