"""``pplink coordinator …``: what the coordinator runs. It never holds identifiers or the secret."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION, existing_file

__all__ = ["coordinator"]


@click.group()
def coordinator() -> None:
    """Coordinator side: match encodings, suggest a threshold, release DP aggregates."""


def _bar(enabled: bool | None, label: str):  # type: ignore[no-untyped-def]
    """A (done, total) progress callback on a terminal, else None."""
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(desc=label, unit="block", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


@coordinator.command("match")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--key", "key_path", type=existing_file, required=True, help="The coordinator's private signing key.")
@click.argument("encodings", nargs=-1, required=True, type=existing_file)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for <party>.map.csv files, the signed manifest and the coordinator's state.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Threads for comparison.")
@click.option("--progress/--no-progress", default=None, help="Show progress (default: when on a terminal).")
@FORMAT_OPTION
def match_command(agreement_path: Path, key_path: Path, encodings: tuple[Path, ...], out_dir: Path, workers: int,
                  progress: bool | None, output_format: str) -> None:
    """Verify ENCODINGS (.enc files from 2..N agencies), link them, and write each agency's pseudonym map."""
    from coordinator.match_round import run_match_round
    from pplink.agreement import load_agreement
    from pplink.crypto import load_private_key

    config = load_agreement(agreement_path)
    key = load_private_key(key_path)
    summary = run_match_round(config, key, encodings, out_dir, workers=workers,
                              progress=_bar(progress, "comparing"))
    stats = summary.result.stats
    if output_format == "json":
        click.echo(json.dumps({
            "out": str(summary.out_dir), "records": summary.records, "missing": list(summary.missing),
            "entities": summary.entities, "linked_entities": summary.linked_entities,
            "maps": {p: str(m) for p, m in summary.maps.items()}, "seconds": round(summary.seconds, 3),
            "comparisons": stats.comparisons, "candidate_pairs": stats.candidate_pairs,
        }))
        return
    total = sum(summary.records.values())
    click.echo(f"matched {total} records from {len(summary.parties)} agencies in {summary.seconds:.1f} s "
               f"(threshold {config.linkage.threshold})")
    for party, n in summary.records.items():
        click.echo(f"  {party:<14} {n:>9} records -> {summary.maps[party]}")
    if summary.missing:
        click.echo(f"  missing (round continued without): {', '.join(summary.missing)}")
    click.echo(f"  entities: {summary.entities} ({summary.linked_entities} found at two or more agencies)")
    click.echo(f"  comparisons: {stats.comparisons:,} ({stats.comparisons_per_second / 1e6:.0f} M/s), "
               f"candidate pairs: {stats.candidate_pairs:,}")
    click.echo("Send each agency only its own map; they run `pplink node resolve`.")
