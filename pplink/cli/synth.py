"""``pplink synth``: synthetic agency extracts of synthetic families, with the truth kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION

__all__ = ["synth"]

_DEFAULT_AGENCIES = "social_care,school,health,police"


@click.command("synth")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write <agency>.csv and truth.csv into (created if needed).")
@click.option("--people", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Population size; each agency holds a share of it.")
@click.option("--agencies", default=_DEFAULT_AGENCIES, show_default=True,
              help="Comma-separated agency names.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed: the same options give byte-identical files.")
@click.option("--label-owner", default="social_care", show_default=True,
              help="The agency whose file holds the outcome column.")
@click.option("--opt-out-rate", type=click.FloatRange(0.0, 1.0), default=0.02, show_default=True,
              help="Share of records marked opt_out=Y.")
@click.option("--corruption", type=click.FloatRange(0.0, 10.0), default=1.0, show_default=True,
              help="Multiplier on every identifier error rate (0: no typos, blanks, moves...).")
@FORMAT_OPTION
def synth(out_dir: Path, people: int, agencies: str, seed: int, label_owner: str, opt_out_rate: float,
          corruption: float, output_format: str) -> None:
    """Write synthetic records of synthetic families for several agencies, plus truth.csv.

    Each agency file has record_id, given_name, surname, date_of_birth, sex, postcode, opt_out,
    the release attributes area, deprivation_quintile and age_band, and the agency's features;
    the label owner also has the outcome. truth.csv (agency,record_id,person) is for evaluation
    only: never give it to a node or the coordinator.
    """
    from pplink.lab.synth import generate_synth, write_synth

    names = [name.strip() for name in agencies.split(",")]
    data = generate_synth(people, names, seed, label_owner, opt_out_rate=opt_out_rate, corruption=corruption)
    paths = write_synth(data, out_dir)
    files = {agency: {"path": str(path), "rows": len(data.tables[agency].rows)}
             for agency, path in zip(data.tables, paths, strict=False)}
    truth = paths[-1]
    if output_format == "json":
        click.echo(json.dumps({"out": str(out_dir), "people": people, "seed": seed, "label_owner": label_owner,
                               "files": files, "truth": str(truth)}))
        return
    click.echo(f"{people} synthetic people, seed {seed}, written to {out_dir}")
    width = max(len(agency) for agency in files)
    for agency, info in files.items():
        owner = "  (holds the outcome)" if agency == label_owner else ""
        click.echo(f"  {agency:<{width}}  {info['rows']:>9,} records  {info['path']}{owner}")
    click.echo(f"  truth: {truth} (evaluation only: keep it away from nodes and the coordinator)")
