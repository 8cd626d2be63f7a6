"""``pplink audit …``: the auditor's commands. ``verify`` checks a privacy ledger.

The check itself is :func:`pplink.audit.verify.verify_ledger`; this module renders its verdict and, when
there are findings, raises :class:`~pplink.errors.LedgerError` so that the process exits with
that error's code after the table is printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION, existing_file

__all__ = ["audit", "render_verdict"]


@click.group()
def audit() -> None:
    """Check what the coordinator released, from the agreement and the ledger alone."""


@audit.command("verify")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--ledger", "ledger_path", type=existing_file, required=True, help="The privacy ledger (JSON Lines).")
@click.option("--expect-entry", "expected", multiple=True, metavar="HASH",
              help="An entry hash (a release receipt) that must be on the ledger; repeatable.")
@click.option("--receipts", "receipt_files", multiple=True, type=existing_file, metavar="FILE",
              help="Release receipts from any party (a receipts file, or a release's --out JSON); repeatable. "
                   "Catches forks, rewrites and truncation.")
@click.option("--linkage", "linkage_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The round's folder: its signed manifest names the ledger this must be.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@FORMAT_OPTION
def verify_command(agreement_path: Path, ledger_path: Path, expected: tuple[str, ...], receipt_files: tuple[Path, ...],
                   linkage_dir: Path | None, as_json: bool, output_format: str) -> None:
    """Recompute the hash chain, check signatures, re-derive every entry from the agreement and compose the losses.

    No label on an entry is trusted: its agencies, cells and sensitivity are re-derived from the
    agreement, the ledger's genesis and the query table. Exits 0 when the ledger verifies;
    otherwise prints every finding and exits with the ledger error's code.
    """
    from pplink.agreement import load_agreement
    from pplink.audit.verify import verify_ledger
    from pplink.errors import LedgerError
    from pplink.ledger_genesis import manifest_ledger
    from pplink.receipts import load_receipts

    agreement = load_agreement(agreement_path)
    expected_genesis = manifest_ledger(agreement, linkage_dir)["genesis"] if linkage_dir is not None else None
    verdict = verify_ledger(agreement, ledger_path, expected_hashes=expected, receipts=load_receipts(receipt_files),
                            expected_genesis=expected_genesis)
    if as_json or output_format == "json":
        click.echo(json.dumps(verdict.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        click.echo(render_verdict(verdict))
    if not verdict.ok:
        raise LedgerError(f"{ledger_path}: {len(verdict.findings)} finding(s); the ledger does not verify")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def render_verdict(verdict) -> str:  # noqa: ANN001 - pplink.audit.verify.AuditVerdict
    """The verdict as a table of entries followed by the findings."""
    zcdp = verdict.accounting.value == "zcdp"
    headers = ["entry", "query", "claimed eps", "re-derived eps"]
    if zcdp:
        headers += ["claimed rho", "re-derived rho"]
    headers += ["cumulative eps", "remaining eps"]
    rows = []
    for row in verdict.rows:
        cells = [str(row.seq), row.query, _num(row.claimed_epsilon), _num(row.derived_epsilon)]
        if zcdp:
            cells += [_num(row.claimed_rho), _num(row.derived_rho)]
        cells += [_num(row.cumulative_epsilon), _num(row.remaining_epsilon)]
        rows.append(cells)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [
        f"Ledger {verdict.source}: {verdict.lines} line(s), agreement {verdict.agreement_id[:12]}, "
        f"{verdict.accounting.value} accounting, budget epsilon {verdict.budget_epsilon:g}"
        + (f" at delta {verdict.delta:g}" if zcdp else ""),
        "",
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
        *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows),
        "",
        f"Spent epsilon {verdict.spent.epsilon:.6g}" + (f" (rho {verdict.spent.rho:.6g})" if zcdp else "")
        + f" of {verdict.budget_epsilon:g}; remaining {verdict.remaining_epsilon:.6g}. Head hash {verdict.head_hash}.",
        f"Ledger id {verdict.ledger_id}" + (f" (round {verdict.round_id})" if verdict.round_id else " (no round)")
        + f"; {verdict.receipts_checked} receipt(s) checked.",
    ]
    if verdict.ok:
        lines.append("OK: chain, signatures, privacy losses and budget all verify.")
    else:
        lines.append(f"FAILED: {len(verdict.findings)} finding(s):")
        for finding in verdict.findings:
            where = "ledger" if finding.line is None else f"line {finding.line}"
            lines.append(f"  [{finding.kind.value}] {where}: {finding.problem}")
    return "\n".join(lines)
