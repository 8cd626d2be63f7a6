"""``pplink node normalise``: an agency's identifiers as pplink hashes them, for anonlink-client.

An agency that encodes with anonlink-client (``encodings = "clkhash-json"`` in the agreement)
must hash exactly the strings pplink hashes, or its encodings never match. This writes them: one
column per identifier field, in the schema's order, with the header anonlink expects, rows checked
and dates decided exactly as ``encode`` does. Beside it goes a token file (row ``i`` of the CSV ->
record id), so ``pplink node resolve`` works on the map the coordinator returns for that agency.

Both files hold identifiers or record ids: they are written 0600 and stay at the agency.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from nodes.dates import decide_date_formats
from nodes.export_settings import ExportSettings
from nodes.records import iter_record_chunks, parse_chunk
from nodes.validation import ChunkResult, RecordSpec, apply_date_decisions, problem_counts, record_spec, validate_chunk
from pplink.agreement import AgreementConfig
from pplink.entity_files import write_tokens
from pplink.errors import RecordValidationError
from pplink.interop import row_tokens

__all__ = ["NormalisedSummary", "write_normalised"]


@dataclass(frozen=True)
class NormalisedSummary:
    """What ``write_normalised`` wrote."""

    output: Path
    tokens: Path
    rows: int
    opted_out: int


def _results(records: Path, spec: RecordSpec, settings: ExportSettings) -> Iterator[ChunkResult]:
    columns, chunks = iter_record_chunks(records, spec, settings=settings)
    for chunk in chunks:
        yield validate_chunk(spec, str(records), columns, parse_chunk(str(records), chunk), check_nul=True)


@contextmanager
def _private_csv(path: Path) -> Iterator[TextIO]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        yield fh


def write_normalised(
    agreement: AgreementConfig, party: str, records: Path, output: Path, settings: ExportSettings | None = None
) -> NormalisedSummary:
    """Write ``party``'s normalised identifiers (anonlink's input) and the row -> record id token file.

    Raises:
        RecordValidationError: any row has a problem, an id repeats, the dates are ambiguous, or no
            row is left (nothing is written then).
    """
    agreement.agency(party)
    settings = settings or ExportSettings()
    spec = record_spec(agreement, party, settings)
    records, output = Path(records), Path(output)
    date_values: dict[str, set[str]] = {c: set() for c in spec.date_columns}
    for result in _results(records, spec, settings):
        for column, counts in result.date_values.items():
            date_values[column].update(counts)
    decisions = [decide_date_formats(c, date_values[c], spec.formats_for(c), stated=spec.dates_stated, party=party)
                 for c in spec.date_columns]
    refusals = [d.refusal for d in decisions if d.refusal]
    if refusals:
        raise RecordValidationError(f"{records}: nothing was written: " + "; ".join(refusals))
    spec = apply_date_decisions(spec, decisions)
    ids: list[str] = []
    rows: list[tuple[str, ...]] = []
    problems = []
    opted_out = 0
    for result in _results(records, spec, settings):
        opted_out += result.opted_out
        problems.extend(result.problems)
        ids.extend(result.record_ids)
        rows.extend(result.identifiers)
    repeated = [rid for rid, n in Counter(ids).items() if n > 1]
    if problems or repeated or not ids:
        reasons = "; ".join(f"{n} x {r}" for r, n in problem_counts(problems)[:10])
        what = reasons or (f"{len(repeated)} record id(s) repeat" if repeated else "no rows to write")
        raise RecordValidationError(f"{records}: nothing was written ({what}); `pplink node validate` lists them "
                                    "by row")
    with _private_csv(output) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([c for c, _, _ in spec.fields])
        writer.writerows(rows)
    tokens = output.with_suffix(".tokens")
    raw = row_tokens(len(ids)).tobytes()
    write_tokens(tokens, [raw[i : i + 16].hex() for i in range(0, len(raw), 16)], ids)
    return NormalisedSummary(output=output, tokens=tokens, rows=len(ids), opted_out=opted_out)
