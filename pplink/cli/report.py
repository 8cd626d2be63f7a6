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
              help="Coordinator only: the match output folder, to add the similarity histogram.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="The scoring output folder (its evaluation.json), to add the held-out evaluation.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write.")
def report(agreement_path: Path, ledger_path: Path, linkage_dir: Path | None, model_dir: Path | None,
           output: Path) -> None:
    """Write one self-contained HTML report: audit verdict, budget, overlaps, linkage and model errors by group."""
    from pplink.agreement import load_agreement
    from pplink.audit.report import build_report

    config = load_agreement(agreement_path)
    page, verdict = build_report(config, ledger_path, linkage_dir=linkage_dir, model_dir=model_dir)
    output.write_text(page, encoding="utf-8")
    click.echo(f"wrote {output} (auditor: {'PASS' if verdict.ok else 'FAIL'})")
