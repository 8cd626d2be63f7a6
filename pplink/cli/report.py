"""``pplink report``: the self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command("report")
@click.option("--agreement", "agreement_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The agreement TOML.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="The privacy ledger (verified first; a failed audit is shown, not hidden).")
@click.option("--linkage", "linkage_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Coordinator only: the match output folder; its exact similarity histogram goes to a separate "
                   "page, OUTPUT with .exact.html, never onto the DP report.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="The label owner's scoring output folder; its exact evaluation.json goes to the separate "
                   ".exact.html page, never onto the DP report.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write.")
def report(agreement_path: Path, ledger_path: Path, linkage_dir: Path | None, model_dir: Path | None,
           output: Path) -> None:
    """Write one self-contained HTML report of DP releases: audit verdict, budget, overlaps, linkage and model errors.

    Every figure on it is a DP release with its interval. Exact figures (--linkage, --model) go to a
    separate page, OUTPUT with suffix .exact.html, marked as not differentially private.
    """
    from pplink.agreement import load_agreement
    from pplink.atomic import atomic_write
    from pplink.audit.report import build_report
    from pplink.audit.report.exact import build_exact_page

    config = load_agreement(agreement_path)
    page, verdict = build_report(config, ledger_path)
    atomic_write(output, page)
    click.echo(f"wrote {output} (auditor: {'PASS' if verdict.ok else 'FAIL'})")
    exact = build_exact_page(config, linkage_dir=linkage_dir, model_dir=model_dir)
    if exact is not None:
        exact_path = output.with_suffix(".exact.html")
        atomic_write(exact_path, exact, mode=0o600)
        click.echo(f"wrote {exact_path} (exact figures, NOT differentially private: keep it to yourself)")
