"""The files a linkage evaluation reads: the truth and any tool's ``<agency>.entities.csv``.

Every message names the file, row and field, never a value; the header is row 1.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pplink.entity_files import ENTITIES_HEADER
from pplink.errors import RecordValidationError, UsageError

__all__ = ["ENTITIES_SUFFIX", "collect_entity_files", "read_entities", "read_predictions", "read_truth"]

#: File name ending of a node's resolved entities (``<agency>.entities.csv``).
ENTITIES_SUFFIX = ".entities.csv"
_TRUTH_HEADER = ("agency", "record_id", "person")


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
