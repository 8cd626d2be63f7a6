"""``pplink node validate``: a dry run of encoding that writes nothing and needs no secret.

It reads the records exactly as ``encode`` would (same reader, node settings, row checks and date
decisions) and reports, per column, how complete it is, how many distinct values it has, which
date formats were found, and which rows have which problem, by row number; then what ``encode``
would do. It never reports a value: column names, counts, formats and row numbers only. Like
Splink's profiling charts it is for the data officer at the agency; nothing leaves the node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodes.dates import decide_date_formats, human_format
from nodes.export_settings import ExportSettings
from nodes.records import iter_record_chunks, parse_chunk
from nodes.validation import RowProblem, apply_date_decisions, problem_counts, record_spec, validate_chunk
from pplink.agreement import AgreementConfig
from pplink.errors import RecordValidationError

__all__ = ["ColumnProfile", "ValidationReport", "render_text", "validate_file"]

#: Row numbers listed per problem in a column (all are counted).
MAX_ROWS_LISTED = 20


@dataclass
class ColumnProfile:
    """One column of the file as the agreement sees it (no values, ever)."""

    column: str
    role: str
    source: str | None = None  # the export's own name, when node settings renamed it
    rows: int = 0
    filled: int = 0
    distinct: int = 0
    formats: list[str] = field(default_factory=list)
    problems: dict[str, dict[str, Any]] = field(default_factory=dict)  # reason -> {"rows": n, "first_rows": [...]}

    @property
    def completeness(self) -> float:
        """Share of rows with a non-empty value."""
        return self.filled / self.rows if self.rows else 0.0


@dataclass
class ValidationReport:
    """What ``validate`` found, and what ``encode`` would do with the file."""

    file: str
    party: str
    ok: bool = True
    rows: int = 0
    would_encode: int = 0
    opted_out: int = 0
    rejected: int = 0
    reasons: list[tuple[str, int]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    missing_columns: list[str] = field(default_factory=list)
    missing_attributes: list[str] = field(default_factory=list)
    unused_columns: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    #: Problems of whole rows (wrong field count, NUL bytes, too few identifiers), as in a column's.
    row_problems: dict[str, dict[str, Any]] = field(default_factory=dict)
    columns: list[ColumnProfile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (column completeness included)."""
        out = asdict(self)
        for profile, col in zip(self.columns, out["columns"], strict=True):
            col["completeness"] = round(profile.completeness, 4)
        out["reasons"] = [{"reason": r, "rows": n} for r, n in self.reasons]
        return out


def _roles(agreement: AgreementConfig) -> dict[str, str]:
    ids = agreement.identifiers
    roles = {ids.record_id_column: "record id"}
    if ids.opt_out_column:
        roles[ids.opt_out_column] = "opt-out"
    roles.update({f.column: f"identifier ({f.kind.value}{'' if f.required else ', optional'})" for f in ids.fields})
    roles.update({a.column: "release attribute (optional)" for a in agreement.release.attributes})
    return roles


def validate_file(
    agreement: AgreementConfig, party: str, records: Path, settings: ExportSettings | None = None
) -> ValidationReport:
    """Profile a records file against the agreement and say what ``encode`` would do.

    Raises:
        RecordValidationError: the file cannot be read at all (missing, not decodable, bad CSV).
    """
    agreement.agency(party)
    settings = settings or ExportSettings()
    spec = record_spec(agreement, party, settings)
    report = ValidationReport(file=str(records), party=party)
    try:
        columns, chunks = iter_record_chunks(Path(records), spec, settings=settings)
    except RecordValidationError as err:
        if "missing column" not in str(err):
            raise
        columns, _ = iter_record_chunks(Path(records), None, settings=settings)
        report.ok = False
        report.missing_columns = [c for c in spec.required_columns if c not in columns]
        report.hints = list(getattr(err, "__notes__", []))
        return report
    roles = _roles(agreement)
    renamed = {new: old for old, new in settings.columns.items()}
    profiles = {c: ColumnProfile(c, roles.get(c, "not used (stays at the node)"), renamed.get(c)) for c in columns}
    report.unused_columns = [c for c in columns if c not in roles]
    report.missing_attributes = [a.column for a in agreement.release.attributes if a.column not in columns]
    distinct: dict[str, set[str]] = {c: set() for c in columns}
    date_values: dict[str, set[str]] = {c: set() for c in spec.date_columns}
    for chunk in chunks:
        rows = parse_chunk(str(records), chunk)
        report.rows += len(rows)
        for _, values in rows:
            for name, value in zip(columns, values, strict=False):
                if value.strip():
                    profiles[name].filled += 1
                    distinct[name].add(value.strip())
        for column, counts in validate_chunk(spec, str(records), columns, rows).date_values.items():
            date_values[column].update(counts)
    for name, profile in profiles.items():
        profile.rows = report.rows
        profile.distinct = len(distinct[name])
    decisions = [decide_date_formats(c, date_values[c], spec.formats_for(c), stated=spec.dates_stated, party=party)
                 for c in spec.date_columns]
    for decision in decisions:
        profiles[decision.column].formats = [f"{human_format(f)} ({f}): {n} different dates"
                                             for f, n in decision.detected]
        if decision.refusal:
            report.refusals.append(decision.refusal)
    # The rows as encode would check them: with each date column read as decided.
    spec = apply_date_decisions(spec, decisions)
    problems: list[RowProblem] = []
    seen_ids: dict[str, int] = {}
    kept = 0
    for chunk in iter_record_chunks(Path(records), spec, settings=settings)[1]:
        result = validate_chunk(spec, str(records), columns, parse_chunk(str(records), chunk), check_nul=True)
        report.opted_out += result.opted_out
        problems.extend(result.problems)
        for rid, row in zip(result.record_ids, result.row_numbers, strict=True):
            first = seen_ids.setdefault(rid, row)
            if first != row:
                problems.append(RowProblem(str(records), row, spec.record_id_column, f"repeats the id of row {first}"))
            else:
                kept += 1
    for p in problems:
        target = profiles[p.field].problems if p.field in profiles else report.row_problems
        entry = target.setdefault(p.reason, {"rows": 0, "first_rows": []})
        entry["rows"] += 1
        if len(entry["first_rows"]) < MAX_ROWS_LISTED:
            entry["first_rows"].append(p.row)
    report.columns = list(profiles.values())
    report.reasons = problem_counts(problems)
    report.rejected = len({p.row for p in problems})
    report.would_encode = 0 if report.refusals else kept
    report.ok = not report.refusals and not problems and report.would_encode > 0
    if report.would_encode == 0 and not report.refusals:
        report.refusals.append("no record would be encoded (encode refuses an empty result)")
    return report


def _rows(entry: dict[str, Any]) -> str:
    listed = ", ".join(str(r) for r in entry["first_rows"])
    more = f", … ({entry['rows']} rows)" if entry["rows"] > len(entry["first_rows"]) else ""
    return f"row{'s' if entry['rows'] > 1 else ''} {listed}{more}"


def render_text(report: ValidationReport) -> str:
    """The report for people: one block per column, then what encode would do."""
    out = [f"{report.file} (party {report.party})" + ("" if report.missing_columns else f": {report.rows} rows")]
    if report.missing_columns:
        out.append(f"  missing column(s): {', '.join(report.missing_columns)}")
        out += [f"  {hint}" for hint in report.hints]
        out.append("  encode would refuse the file.")
        return "\n".join(out)
    width = max((len(c.column) for c in report.columns), default=0)
    for c in report.columns:
        source = f" (from {c.source})" if c.source else ""
        filled = f"{100 * c.completeness:.0f}% filled, {c.distinct} distinct"
        out.append(f"  {c.column:<{width}}  {c.role}{source}: {filled}")
        out += [f"  {'':<{width}}    format {f}" for f in c.formats]
        out += [f"  {'':<{width}}    {e['rows']} x {reason}: {_rows(e)}" for reason, e in c.problems.items()]
    for reason, e in report.row_problems.items():
        out.append(f"  (row)  {e['rows']} x {reason}: {_rows(e)}")
    if report.missing_attributes:
        out.append(f"  release attributes not in the file (counted as missing in releases): "
                   f"{', '.join(report.missing_attributes)}")
    if report.refusals:
        out.append("encode would refuse the file:")
        out += [f"  {r}" for r in report.refusals]
    else:
        out.append(f"encode would encode {report.would_encode} records, leave out {report.opted_out} opted out, "
                   f"and reject {report.rejected} rows" + (" (with --skip-invalid; without it, refuse the file)"
                                                           if report.rejected else ""))
    return "\n".join(out)
