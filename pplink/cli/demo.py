"""``pplink demo``: the whole round on synthetic data, every party played in one folder.

A thin command over :func:`pplink.lab.demo.run_demo`, which composes the same library calls each
party runs and reports each step; ``--format json`` prints a summary instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION

__all__ = ["demo"]


@click.command("demo")
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("pplink-demo"),
              show_default=True, help="Folder for everything the demo writes (replaced if it is an earlier demo).")
@click.option("--people", type=click.IntRange(min=50, max=1_000_000), default=20_000, show_default=True,
              help="Synthetic population size.")
@click.option("--seed", type=click.IntRange(min=0), default=727, show_default=True, help="Seed for the synthetic data.")
@FORMAT_OPTION
def demo(work_dir: Path, people: int, seed: int, output_format: str) -> None:
    """Run a whole round on synthetic data for four agencies and print what happened.

    Synthetic records -> agreement and keys -> each agency encodes -> the coordinator matches ->
    each agency resolves its pseudonyms -> linkage quality against the synthetic truth -> vertical
    federated scoring (noisy sufficient statistics, beside the label owner's own-feature model) ->
    DP releases on the signed ledger -> the auditor's verdict -> an HTML report.
    """
    from pplink.cli.score import summary_json
    from pplink.lab.demo import run_demo

    if output_format != "json":
        run_demo(work_dir, people=people, seed=seed, say=click.echo)
        return
    summary = run_demo(work_dir, people=people, seed=seed)
    click.echo(json.dumps({
        "work_dir": str(summary.work_dir), "agreement_id": summary.agreement_id, "people": summary.people,
        "seed": summary.seed, "linkage": summary.linkage, "scoring": summary_json(summary.scoring),
        "auditor": summary.auditor, "report": str(summary.report_path), "seconds": round(summary.seconds, 2),
    }))
