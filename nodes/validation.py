"""Validating every row of an agency's records against the agreement.

Validation is a pure function over chunks of raw rows, so it can run in worker processes next to
the encoder. A problem names the file, the row (the line number in a CSV, counting the header as
row 1) and the field, with a reason that never repeats the value.

Opt-outs fail closed: a row is encoded only when its opt-out value is one the agreement declares
as "not opted out"; a value in neither list refuses the row.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain, compress, repeat
from operator import itemgetter, not_
from typing import Any

from nodes.dates import DateDecision, date_reader
from nodes.export_settings import ExportSettings
from pplink.agreement import AgreementConfig, FieldKind
from pplink.normalise import InvalidValue, hashed_form

__all__ = [
    "ChunkResult",
    "OPT_OUT_UNREADABLE",
    "RecordSpec",
    "RowProblem",
    "apply_date_decisions",
    "problem_counts",
    "reads_differently",
    "record_spec",
    "validate_chunk",
]

#: The reason a row with an unrecognised opt-out value is refused.
OPT_OUT_UNREADABLE = ("is neither an opt-out nor an opt-in value the agreement declares "
                      "(map the export's values in the node settings' [opt_out_values])")
NUL_IN_ROW = "holds a NUL byte (a corrupt export, or one saved as UTF-16?)"


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
    """Everything row validation needs, derived from the agreement and the node settings (picklable)."""

    record_id_column: str
    opt_out_column: str | None
    opt_out_values: frozenset[str]
    fields: tuple[tuple[str, FieldKind, bool], ...]  # (column, kind, required)
    date_formats: tuple[str, ...]
    attributes: tuple[AttributeSpec, ...]
    min_fields: int = 0
    opt_in_values: frozenset[str] = frozenset({"n", "no", "false", "0", ""})
    #: The export's opt-out value (casefolded) -> the agreement's (casefolded), from node settings.
    opt_out_map: tuple[tuple[str, str], ...] = ()
    #: Per date column, the formats to read it with, where they differ from ``date_formats``.
    column_date_formats: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Per date column, value shapes refused as ambiguous (``(shape, reason)``), from the file's dates.
    ambiguous_dates: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    #: Whether the date formats were stated for this agency (then nothing is inferred).
    dates_stated: bool = False
    party: str = ""

    @property
    def required_columns(self) -> list[str]:
        """Columns the input must have: record id, identifiers and a declared opt-out column."""
        opt = [self.opt_out_column] if self.opt_out_column else []
        return [self.record_id_column, *(c for c, _, _ in self.fields), *opt]

    @property
    def date_columns(self) -> list[str]:
        """The identifier columns of kind date."""
        return [c for c, kind, _ in self.fields if kind.is_date]

    def ambiguous_for(self, column: str) -> tuple[tuple[str, str], ...]:
        """``(shape, reason)`` of a date column's values that are refused as ambiguous."""
        return dict(self.ambiguous_dates).get(column, ())

    def formats_for(self, column: str) -> tuple[str, ...]:
        """The date formats a date column is read with."""
        return dict(self.column_date_formats).get(column, self.date_formats)


def record_spec(agreement: AgreementConfig, party: str, settings: ExportSettings | None = None) -> RecordSpec:
    """Build the validation spec for ``party``'s records under ``agreement`` and its node settings.

    Raises:
        ConfigError: a node setting maps an opt-out value to one the agreement does not declare.
    """
    from pplink.errors import ConfigError

    settings = settings or ExportSettings()
    ids = agreement.identifiers
    opt_out = frozenset(v.strip().casefold() for v in ids.opt_out_values)
    opt_in = frozenset(v.strip().casefold() for v in ids.opt_in_values)
    opt_map = tuple((k.strip().casefold(), v.strip().casefold()) for k, v in settings.opt_out_values.items())
    bad = sorted({v for _, v in opt_map} - opt_out - opt_in)
    if bad:
        raise ConfigError(f"node settings: opt_out_values maps to {len(bad)} value(s) the agreement declares "
                          f"neither as opt-out ({', '.join(sorted(opt_out))}) nor as opt-in "
                          f"({', '.join(repr(v) for v in sorted(opt_in))})")
    party_formats = agreement.party(party).date_formats
    stated = party_formats is not None
    per_column = []
    for f in ids.fields:
        formats = settings.date_format_for(f.column) if f.kind.is_date else None
        if formats is not None:
            per_column.append((f.column, formats))
    unknown = sorted(set(settings.date_formats) - {f.column for f in ids.fields if f.kind.is_date})
    if unknown:
        raise ConfigError(f"node settings: date_formats names {', '.join(unknown)}, not a date field of the agreement")
    return RecordSpec(
        record_id_column=ids.record_id_column,
        opt_out_column=ids.opt_out_column,
        opt_out_values=opt_out,
        fields=tuple((f.column, f.kind, f.required) for f in ids.fields),
        date_formats=agreement.date_formats_for(party),
        attributes=tuple(
            AttributeSpec(a.column, frozenset(a.values) if a.values is not None else None, a.lower, a.upper)
            for a in agreement.release.attributes
        ),
        min_fields=ids.min_fields,
        opt_in_values=opt_in,
        opt_out_map=opt_map,
        column_date_formats=tuple(per_column),
        dates_stated=stated or bool(per_column),
        party=party,
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
    #: Per date column, its distinct raw values, for deciding the column's format.
    date_values: dict[str, set[str]] = field(default_factory=dict)


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
def _normaliser(kind: FieldKind, date_formats: tuple[str, ...],
                ambiguous: tuple[tuple[str, str], ...] = ()) -> Callable[[str], str | InvalidValue]:
    """One cached, non-raising normaliser per field kind (and date formats), shared by all chunks."""
    if kind.is_date:
        return _safe(date_reader(date_formats, ambiguous, kind))
    form = hashed_form(kind, date_formats)
    # The wrapper caches every value already: the normaliser's own cache would only hold them twice.
    return _safe(getattr(form, "__wrapped__", form))


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


def _prefilter(
    spec: RecordSpec,
    index: Mapping[str, int],
    width: int,
    numbers: list[int],
    values: list[Sequence[str]],
    check_nul: bool,
    refuse: Callable[[int, Sequence[str], str, str], None],
    result: ChunkResult,
) -> tuple[list[int], list[Sequence[str]]]:
    """The rows left after the row-level checks (field count, NUL, opt-out), in order.

    The usual chunk (every row the header's width, no NUL, nobody opted out or unreadable) is
    recognised from its distinct opt-out values alone and returned as it is; otherwise each row
    is checked in turn.
    """
    opt_at = index[spec.opt_out_column] if spec.opt_out_column else None
    # One lookup per row: value -> opted out (True) or not (False); absent: unreadable.
    verdict = {v: True for v in spec.opt_out_values} | {v: False for v in spec.opt_in_values}
    verdict |= {theirs: verdict[ours] for theirs, ours in spec.opt_out_map if ours in verdict}
    if not check_nul and set(map(len, values)) <= {width}:
        if opt_at is None or all(verdict.get(v.strip().casefold()) is False
                                 for v in set(map(itemgetter(opt_at), values))):
            return numbers, values
    kept_numbers: list[int] = []
    kept: list[Sequence[str]] = []
    for row_number, row in zip(numbers, values, strict=True):
        if len(row) != width:
            refuse(row_number, row, "(row)", f"has {len(row)} fields, header has {width}")
            continue
        if check_nul and any("\x00" in v for v in row):
            refuse(row_number, row, "(row)", NUL_IN_ROW)
            continue
        if opt_at is not None:
            opted = verdict.get(row[opt_at].strip().casefold())
            if opted:
                result.opted_out += 1
                continue
            if opted is None:
                refuse(row_number, row, spec.opt_out_column or "", OPT_OUT_UNREADABLE)
                continue
        kept_numbers.append(row_number)
        kept.append(row)
    return kept_numbers, kept


def _invalid_at(out: list[Any]) -> list[int]:
    """Positions of the :class:`InvalidValue` results in ``out`` (C-level passes, no Python loop per value)."""
    if InvalidValue not in set(map(type, out)):
        return []
    return list(compress(range(len(out)), map(isinstance, out, repeat(InvalidValue))))


def validate_chunk(
    spec: RecordSpec,
    file: str,
    columns: Sequence[str],
    rows: Sequence[tuple[int, Sequence[str]]],
    *,
    check_nul: bool = False,
) -> ChunkResult:
    """Validate and normalise a chunk of raw rows.

    Works column by column through cached normalisers: identifier values repeat heavily, so most
    values cost one dictionary lookup, and every per-value step (extracting a column, normalising,
    finding the invalid or empty values, counting a row's identifiers) is a C-level ``map``, not a
    Python loop over the rows.

    Args:
        spec: from :func:`record_spec`.
        file: the file name used in problem messages.
        columns: the input's header, in order.
        rows: ``(row_number, values)`` pairs, values in header order.
        check_nul: look for NUL characters in every field (the chunk's bytes held one).

    Returns:
        A :class:`ChunkResult`. Opted-out rows are counted and dropped before any other check:
        they are never validated, normalised or encoded. A row whose opt-out value is neither
        declared value is refused, never encoded. A release attribute missing from the file is
        ``None`` in every row (counted as missing in releases).
    """
    index = {name: i for i, name in enumerate(columns)}
    result = ChunkResult()
    problems: list[tuple[int, int, RowProblem]] = []  # (position in chunk, column order, problem)

    def refuse(row_number: int, values: Sequence[str], column: str, reason: str) -> None:
        result.problems.append(RowProblem(file, row_number, column, reason))
        result.rejected_rows.append(row_number)
        result.rejected_values.append((row_number, values))

    numbers, kept = _prefilter(spec, index, len(columns), list(map(itemgetter(0), rows)),
                               list(map(itemgetter(1), rows)), check_nul, refuse, result)
    n = len(kept)
    ids = list(map(str.strip, map(itemgetter(index[spec.record_id_column]), kept)))
    problems.extend((i, -1, RowProblem(file, numbers[i], spec.record_id_column, "is empty"))
                    for i in compress(range(n), map(not_, ids)))
    outputs: list[list[str]] = []
    for order, (col, kind, required) in enumerate(spec.fields):
        raw = list(map(itemgetter(index[col]), kept))
        if kind.is_date:
            result.date_values[col] = set(raw)  # raw values: stripped once, after the merge
        out: list[Any] = list(map(_normaliser(kind, spec.formats_for(col), spec.ambiguous_for(col)), raw))
        if required:  # an InvalidValue is truthy: only values normalised to "" count as empty
            problems.extend((i, order, RowProblem(file, numbers[i], col, "is required but empty"))
                            for i in compress(range(n), map(not_, out)))
        for i in _invalid_at(out):
            problems.append((i, order, RowProblem(file, numbers[i], col, str(out[i]))))
            out[i] = ""
        outputs.append(out)
    attr_outputs: list[list[Any]] = []
    for order, attr in enumerate(spec.attributes, start=len(spec.fields)):
        if attr.column not in index:
            attr_outputs.append([None] * n)
            continue
        out_a: list[Any] = list(map(_attribute_checker(attr), map(itemgetter(index[attr.column]), kept)))
        problems.extend((i, order, RowProblem(file, numbers[i], attr.column, str(out_a[i])))
                        for i in _invalid_at(out_a))
        attr_outputs.append(out_a)
    if spec.min_fields and n:
        # Empty values are few: count them per row, rather than the values present.
        spare = len(outputs) - spec.min_fields  # the empty values a row may have
        if spare < 0:
            short: Iterable[int] = range(n)
        else:
            empty = Counter(chain.from_iterable(compress(range(n), map(not_, out)) for out in outputs))
            short = sorted(i for i, count in empty.items() if count > spare)
        order = len(spec.fields) + len(spec.attributes)
        problems.extend(
            (i, order, RowProblem(file, numbers[i], "(identifiers)",
                                  f"has fewer than {spec.min_fields} identifier values"))
            for i in short
        )
    identifiers = list(zip(*outputs, strict=True)) if outputs else [()] * n
    attributes = list(zip(*attr_outputs, strict=True)) if attr_outputs else [()] * n
    if not problems:
        result.record_ids, result.row_numbers = ids, numbers
        result.identifiers, result.attributes = identifiers, attributes
        return result
    bad = sorted({i for i, _, _ in problems})
    problems.sort(key=lambda p: (p[0], p[1]))
    result.problems.extend(p for _, _, p in problems)
    result.rejected_rows.extend(numbers[i] for i in bad)
    result.rejected_values.extend((numbers[i], kept[i]) for i in bad)
    keep = bytearray(b"\x01") * n
    for i in bad:
        keep[i] = 0
    result.record_ids = list(compress(ids, keep))
    result.row_numbers = list(compress(numbers, keep))
    result.identifiers = list(compress(identifiers, keep))
    result.attributes = list(compress(attributes, keep))
    return result


def problem_counts(problems: Sequence[RowProblem]) -> list[tuple[str, int]]:
    """``("field: reason", rows)`` for every distinct reason, most frequent first.

    >>> problem_counts([RowProblem("f", 2, "sex", "bad"), RowProblem("f", 3, "sex", "bad")])
    [('sex: bad', 2)]
    """
    counts = Counter(f"{p.field}: {p.reason}" for p in problems)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def apply_date_decisions(spec: RecordSpec, decisions: Sequence[DateDecision]) -> RecordSpec:
    """The spec with each date column read as decided over the whole file (:mod:`nodes.dates`)."""
    return dataclasses.replace(
        spec,
        column_date_formats=tuple((d.column, d.formats) for d in decisions),
        ambiguous_dates=tuple((d.column, d.ambiguous) for d in decisions if d.ambiguous),
    )


def reads_differently(old: RecordSpec, new: RecordSpec, date_values: Mapping[str, Iterable[str]]) -> bool:
    """Whether any of these date values is read (or refused) differently under the two specs."""
    for column, values in date_values.items():
        before = _normaliser(FieldKind.DATE, old.formats_for(column), old.ambiguous_for(column))
        after = _normaliser(FieldKind.DATE, new.formats_for(column), new.ambiguous_for(column))
        if before is after:  # the same formats and refusals (the usual case): the same reading
            continue
        if any(str(before(v)) != str(after(v)) for v in values):
            return True
    return False
