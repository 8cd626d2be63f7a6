"""``pplink node encode``: validate, drop opt-outs, normalise, encode, sign, write.

The pipeline reads records in chunks; each chunk is validated, normalised and encoded in a
worker process (both cores on large inputs), with at most two chunks per worker in flight so
memory stays bounded. The agency's own record ids never enter the encodings file: each encoded
row gets a random 128-bit token, and the token -> record id map stays at the node.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import chain
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.dates import DateDecision, decide_date_formats
from nodes.encode_workers import gc_paused, run_chunks, without_gc
from nodes.export_settings import ExportSettings
from nodes.records import iter_record_chunks, parse_chunk
from nodes.validation import (
    RecordSpec,
    RowProblem,
    apply_date_decisions,
    problem_counts,
    reads_differently,
    record_spec,
)
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write, remove_partials
from pplink.crypto import SecretBytes, derive_linkage_key, public_key_text, secret_check
from pplink.encfile import TOKEN_BYTES, write_encodings
from pplink.encoding import encodings_to_anonlink_json
from pplink.entity_files import write_tokens
from pplink.errors import KeyFileError, RecordValidationError, SecretError, UsageError

__all__ = ["EncodeSummary", "EncodedRecords", "OutputFormat", "encode_file", "encode_records"]

#: Below this input size one process is faster than starting workers.
_PARALLEL_MIN_BYTES = 2_000_000
_MAX_LISTED_PROBLEMS = 1_000
_MAX_LISTED_REASONS = 20
#: Raw CSV bytes per chunk: large enough that process round trips are rare, small enough that
#: two chunks per worker in flight stay a few MB.
BLOCK_BYTES = 1 << 20
#: With workers, chunks shrink (to no less than this) until each worker gets about
#: :data:`_CHUNKS_PER_WORKER` of them: with 7 chunks for 2 workers one worker ran 4 and the other
#: sat idle for the last one.
_MIN_PARALLEL_BLOCK_BYTES = 1 << 17
_CHUNKS_PER_WORKER = 8


class OutputFormat(StrEnum):
    """What ``pplink node encode`` writes."""

    PPLINK = "pplink"
    ANONLINK_JSON = "anonlink-json"


@dataclass(frozen=True)
class EncodedRecords:
    """The in-memory result of encoding one agency's records."""

    record_ids: list[str]
    clks: np.ndarray
    attributes: dict[str, list[str | None]]
    opted_out: int
    problems: list[RowProblem]
    rejected_rows: list[int]
    columns: list[str]
    #: How each date column was read (its formats, and the rows each format read).
    dates: tuple[DateDecision, ...] = ()


@dataclass(frozen=True)
class EncodeSummary:
    """What ``encode_file`` did, for the CLI to render."""

    party: str
    output: Path
    tokens: Path
    encoded: int
    opted_out: int
    rejected: int
    rejects: Path | None
    seconds: float
    workers: int
    #: ``("field: reason", rows)`` for every reason a row was rejected, most frequent first.
    reasons: tuple[tuple[str, int], ...] = ()
    dates: tuple[DateDecision, ...] = ()


@without_gc
def encode_records(
    agreement: AgreementConfig,
    party: str,
    secret: SecretBytes,
    records: Path,
    *,
    workers: int | None = None,
    on_rows: Callable[[int], None] | None = None,
    keep_rejected_rows: list[tuple[int, Sequence[str]]] | None = None,
    settings: ExportSettings | None = None,
) -> EncodedRecords:
    """Validate, normalise and encode one agency's records file.

    Date columns are read in the one format their values show over the whole file
    (:mod:`nodes.dates`); the rare file whose first reading used a format its values then ruled
    out is encoded a second time.

    Args:
        agreement: the validated agreement.
        party: the agency encoding.
        secret: the agencies' shared linkage secret.
        records: a CSV or Parquet file.
        workers: processes to use; ``None`` picks both cores for inputs over ~2 MB.
        on_rows: progress callback, called with the number of rows just processed.
        keep_rejected_rows: if given, raw rejected rows are appended to it (for a rejects file).
        settings: the node's reading settings (column names, delimiter, encoding, date format,
            opt-out values).

    Returns:
        The encodings of every valid, not-opted-out row, with every problem found.

    Raises:
        RecordValidationError: the file cannot be read, lacks a column, or its dates are ambiguous
            or in a format the agreement does not list (nothing encoded).
    """
    agreement.agency(party)
    if agreement.secret_check is not None and secret_check(secret) != agreement.secret_check:
        raise SecretError("the linkage secret does not match the agreement's secret_check "
                          "(a wrong or pre-rotation secret); nothing was encoded")
    settings = settings or ExportSettings()
    spec = record_spec(agreement, party, settings)
    key = derive_linkage_key(secret, agreement.agreement_id)
    if workers is None:
        workers = (os.cpu_count() or 1) if Path(records).stat().st_size > _PARALLEL_MIN_BYTES else 1
    kept: list[tuple[int, Sequence[str]]] | None = [] if keep_rejected_rows is not None else None
    encoded, date_values = _encode_pass(agreement, spec, key, Path(records), workers, on_rows, kept, settings)
    decisions = tuple(
        decide_date_formats(col, date_values.get(col, set()), spec.formats_for(col), stated=spec.dates_stated,
                            party=party)
        for col in spec.date_columns
    )
    refusals = [d.refusal for d in decisions if d.refusal]
    if refusals:
        raise RecordValidationError(f"{records}: nothing was encoded: " + "; ".join(refusals))
    new_spec = apply_date_decisions(spec, decisions)
    if reads_differently(spec, new_spec, date_values):
        kept = [] if kept is not None else None
        encoded, _ = _encode_pass(agreement, new_spec, key, Path(records), workers, None, kept, settings)
    if keep_rejected_rows is not None and kept is not None:
        keep_rejected_rows.extend(kept)
    return replace(encoded, dates=decisions)


def _encode_pass(
    agreement: AgreementConfig,
    spec: RecordSpec,
    key: bytes,
    records: Path,
    workers: int,
    on_rows: Callable[[int], None] | None,
    keep_rejected_rows: list[tuple[int, Sequence[str]]] | None,
    settings: ExportSettings,
) -> tuple[EncodedRecords, dict[str, set[str]]]:
    block_bytes = BLOCK_BYTES
    if workers > 1:
        share = records.stat().st_size // (workers * _CHUNKS_PER_WORKER)
        block_bytes = min(BLOCK_BYTES, max(share, _MIN_PARALLEL_BLOCK_BYTES))
    columns, chunks = iter_record_chunks(records, spec, block_bytes=block_bytes, settings=settings)
    file = str(records)
    record_ids: list[str] = []
    clk_parts: list[np.ndarray] = []
    attr_rows: list[tuple[str | None, ...]] = []
    problems: list[RowProblem] = []
    rejected: list[int] = []
    row_of: dict[str, int] = {}
    opted_out = 0
    duplicates: set[int] = set()
    date_values: dict[str, set[str]] = {c: set() for c in spec.date_columns}
    init_args = (spec, agreement.identifiers, key)
    # The merge only appends to lists; paused collections keep the growing lists from being walked.
    with gc_paused():
        results = []
        for result, clks in run_chunks(chunks, file, columns, workers, on_rows, init_args):
            opted_out += result.opted_out
            if keep_rejected_rows is not None:
                keep_rejected_rows.extend(result.rejected_values)
            for column, counts in result.date_values.items():
                date_values[column].update(counts)
            results.append((result, clks))
        # The usual file repeats no id: one set over all ids says so, and its chunks are joined as
        # they are; otherwise each chunk's ids are checked against the earlier chunks'.
        n_ids = sum(len(result.record_ids) for result, _ in results)
        unique = len(set(chain.from_iterable(result.record_ids for result, _ in results))) == n_ids
        for result, clks in results:
            problems.extend(result.problems)
            rejected.extend(result.rejected_rows)
            if unique:
                record_ids.extend(result.record_ids)
                attr_rows.extend(result.attributes)
                clk_parts.append(clks)
                continue
            fresh = dict(zip(result.record_ids, result.row_numbers, strict=True))
            if len(fresh) == len(result.record_ids) and row_of.keys().isdisjoint(fresh):
                row_of.update(fresh)
                record_ids.extend(result.record_ids)
                attr_rows.extend(result.attributes)
                clk_parts.append(clks)
                continue
            keep = np.ones(len(result.record_ids), dtype=bool)
            for i, (rid, row_number) in enumerate(zip(result.record_ids, result.row_numbers, strict=True)):
                first = row_of.setdefault(rid, row_number)
                if first != row_number:
                    problems.append(RowProblem(file, row_number, spec.record_id_column,
                                               f"repeats the id of row {first}"))
                    rejected.append(row_number)
                    keep[i] = False
                    duplicates.add(row_number)
            record_ids.extend(rid for rid, k in zip(result.record_ids, keep, strict=True) if k)
            attr_rows.extend(a for a, k in zip(result.attributes, keep, strict=True) if k)
            clk_parts.append(clks[keep])
    if keep_rejected_rows is not None and duplicates:
        # Rare: re-read the file once for the raw duplicate rows, rather than carrying every
        # accepted row's raw values through the pipeline.
        _, again = iter_record_chunks(records, spec, settings=settings)
        for chunk in again:
            keep_rejected_rows.extend(r for r in parse_chunk(file, chunk) if r[0] in duplicates)
    width = agreement.identifiers.filter_bits // 8
    clks_all = np.concatenate(clk_parts) if clk_parts else np.zeros((0, width), dtype=np.uint8)
    by_column = list(zip(*attr_rows, strict=True)) if attr_rows else [()] * len(spec.attributes)
    attributes = {a.column: list(values) for a, values in zip(spec.attributes, by_column, strict=True)}
    encoded = EncodedRecords(record_ids, clks_all, attributes, opted_out, problems, sorted(set(rejected)), columns)
    return encoded, date_values


def _problems_error(records: Path, problems: list[RowProblem]) -> RecordValidationError:
    rows = len({p.row for p in problems})
    lines = [str(p) for p in problems[:_MAX_LISTED_PROBLEMS]]
    more = len(problems) - len(lines)
    tail = f"\n  … and {more} more; run with --skip-invalid to write them all to a rejects file" if more else ""
    summary = "\n  ".join(f"{n} x {reason}" for reason, n in problem_counts(problems)[:_MAX_LISTED_REASONS])
    return RecordValidationError(
        f"{records}: {len(problems)} problem(s) in {rows} row(s); nothing was encoded "
        "(fix them, or use --skip-invalid to encode the rest and write the rejects file)\n"
        f"  by reason:\n  {summary}\n  by row:\n  "
        + "\n  ".join(lines)
        + tail
    )


def _write_rejects(path: Path, columns: list[str], problems: list[RowProblem],
                   raw_rows: list[tuple[int, Sequence[str]]]) -> None:
    # The rejects file holds the original rows so nothing is lost; it stays at the node (0600).
    reasons: dict[int, list[str]] = {}
    for p in problems:
        reasons.setdefault(p.row, []).append(f"{p.field}: {p.reason}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["row", "problems", *columns])
        for row_number, values in sorted(raw_rows, key=lambda r: r[0]):
            writer.writerow([row_number, "; ".join(reasons.get(row_number, [])), *values])


@without_gc
def encode_file(
    agreement: AgreementConfig,
    party: str,
    secret: SecretBytes,
    key: Ed25519PrivateKey,
    records: Path,
    output: Path,
    *,
    tokens: Path | None = None,
    skip_invalid: bool = False,
    output_format: OutputFormat = OutputFormat.PPLINK,
    workers: int | None = None,
    on_rows: Callable[[int], None] | None = None,
    settings: ExportSettings | None = None,
) -> EncodeSummary:
    """Encode a records file and write the signed encodings and the node-local token file.

    Args:
        agreement: the validated agreement.
        party: the agency encoding; must be an agency in the agreement.
        secret: the agencies' shared linkage secret.
        key: the agency's Ed25519 signing key.
        records: input CSV or Parquet.
        output: the ``.enc`` (or anonlink JSON) file to write.
        tokens: where the token -> record id map goes (default: next to ``output``, ``.tokens``).
        skip_invalid: encode valid rows and write invalid ones, with reasons, to
            ``<output>.rejects.csv``; otherwise any problem refuses the whole file.
        output_format: signed pplink encodings or anonlink's ``{"clks": [...]}``.
        workers: processes (``None``: automatic).
        on_rows: progress callback.
        settings: the node's reading settings (:class:`nodes.export_settings.ExportSettings`).

    Raises:
        RecordValidationError: problems found and ``skip_invalid`` is false (all listed), or no
            record at all was encoded (nothing is written then but the rejects file).
        KeyFileError: ``key`` is not ``party``'s signing key in the agreement.
    """
    start = time.perf_counter()
    if public_key_text(key) != agreement.agency(party).public_key:  # before any work: the coordinator would refuse it
        raise KeyFileError(f"the signing key given is not {party}'s key in the agreement")
    records, output = Path(records), Path(output)
    if output.resolve() == records.resolve():
        raise UsageError(f"{output}: output would overwrite the input records")
    tokens_path = Path(tokens) if tokens else output.with_suffix(".tokens")
    raw_rejects: list[tuple[int, Sequence[str]]] = []
    encoded = encode_records(agreement, party, secret, records, workers=workers, on_rows=on_rows,
                             keep_rejected_rows=raw_rejects if skip_invalid else None, settings=settings)
    rejects_path = None
    if encoded.problems:
        if not skip_invalid:
            raise _problems_error(records, encoded.problems)
        rejects_path = output.with_name(output.stem + ".rejects.csv")
        _write_rejects(rejects_path, encoded.columns, encoded.problems, raw_rejects)
    n = len(encoded.record_ids)
    if n == 0:
        raise _nothing_encoded(records, encoded, rejects_path)
    token_bytes = np.frombuffer(os.urandom(TOKEN_BYTES * n), dtype=np.uint8).reshape(n, TOKEN_BYTES)
    hex_all, step = token_bytes.tobytes().hex(), 2 * TOKEN_BYTES
    token_hex = [hex_all[i : i + step] for i in range(0, len(hex_all), step)]
    output.parent.mkdir(parents=True, exist_ok=True)
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    # Tokens first, the .enc last (each atomic): a kill in between leaves new tokens beside the old
    # .enc (or none), never a .enc whose tokens are missing. Tokens are fresh random values at
    # every encode, so a map made from any other .enc can never fit these tokens and
    # `node resolve` refuses it.
    for path in (tokens_path, output):  # what an earlier, killed encode left half-written
        remove_partials(path.parent, of=path.name)
    write_tokens(tokens_path, token_hex, encoded.record_ids)
    if output_format is OutputFormat.ANONLINK_JSON:
        atomic_write(output, json.dumps(encodings_to_anonlink_json(encoded.clks)))
    else:
        write_encodings(output, agreement=agreement, party=party, tokens=token_bytes, clks=encoded.clks,
                        attributes=encoded.attributes, key=key)
    return EncodeSummary(
        party=party, output=output, tokens=tokens_path, encoded=n, opted_out=encoded.opted_out,
        rejected=len(encoded.rejected_rows), rejects=rejects_path, seconds=time.perf_counter() - start,
        workers=workers or 0, reasons=tuple(problem_counts(encoded.problems)), dates=encoded.dates,
    )


def _nothing_encoded(records: Path, encoded: EncodedRecords, rejects: Path | None) -> RecordValidationError:
    # An empty encodings file would join a round silently as "0 records"; refuse to write one.
    if not encoded.opted_out and not encoded.rejected_rows:
        why = "it has a header but no records"
    else:
        why = f"of its rows, {encoded.opted_out} opted out and {len(encoded.rejected_rows)} were rejected"
        if rejects is not None:
            why += f" (listed with reasons in {rejects})"
    return RecordValidationError(f"{records}: no records to encode: {why}; no encodings file was written")
