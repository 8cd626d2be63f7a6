"""Rendering for the incremental forms of ``node encode`` and ``coordinator match`` (docs/incremental.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["encode_delta_command", "match_incremental_command"]


def encode_delta_command(config, party: str, secret, key, records: Path, output: Path,  # type: ignore[no-untyped-def]
                         previous: Path, previous_tokens: Path | None, tokens: Path | None, workers: int | None,
                         progress: bool | None, output_format: str) -> None:
    """``pplink node encode --delta-from PREVIOUS``: write and report a delta."""
    from nodes.delta import encode_delta
    from pplink.cli.progress import row_progress

    with row_progress(records, enabled=progress, label=f"encoding {party}") as on_rows:
        summary = encode_delta(config, party, secret, key, records, output, previous,
                               previous_tokens=previous_tokens, tokens=tokens, workers=workers, on_rows=on_rows)
    result = {
        "party": summary.party, "output": str(summary.output), "tokens": str(summary.tokens),
        "snapshot": str(summary.snapshot), "sequence": summary.sequence, "added": summary.added,
        "changed": summary.changed, "withdrawn": summary.withdrawn, "expired": summary.expired,
        "unchanged": summary.unchanged, "opted_out": summary.opted_out, "seconds": round(summary.seconds, 3),
    }
    if output_format == "json":
        click.echo(json.dumps(result))
        return
    click.echo(f"{summary.party}: delta {summary.sequence} -> {summary.output} ({summary.seconds:.1f} s)")
    click.echo(f"  new: {summary.added}, changed: {summary.changed}, withdrawn: {summary.withdrawn} "
               f"(opted out or gone from the export), expired (retention): {summary.expired}, "
               f"unchanged (not sent): {summary.unchanged}")
    click.echo(f"  token map (keep at this node): {summary.tokens}; snapshot for the next delta: {summary.snapshot}")


def match_incremental_command(config, key, encodings: tuple[Path, ...], out_dir: Path,  # type: ignore[no-untyped-def]
                              state_dir: Path, workers: int, output_format: str) -> None:
    """``pplink coordinator match --state DIR``: apply the round to the encrypted state and report it."""
    from coordinator.linkage.incremental import run_incremental_round

    s = run_incremental_round(config, key, encodings, out_dir, state_dir, workers=workers)
    if output_format == "json":
        click.echo(json.dumps({
            "out": str(s.out_dir), "round": s.round, "created": s.created, "records": s.records, "added": s.added,
            "removed": s.removed, "unknown_withdrawals": s.unknown_withdrawals, "entities": s.entities,
            "linked_entities": s.linked_entities, "comparisons": s.comparisons, "new_edges": s.new_edges,
            "changes": s.change.__dict__, "rotated": s.rotated, "maps": {p: str(m) for p, m in s.maps.items()},
            "seconds": {k: round(v, 3) for k, v in s.seconds.items()},
        }))
        return
    verb = "started the linkage state with" if s.created else "added"
    click.echo(f"round {s.round}: {verb} {s.added} records in {s.seconds['total']:.1f} s "
               f"(state: {state_dir})")
    for party, n in s.records.items():
        click.echo(f"  {party:<14} {n:>9} live records -> {s.maps[party]}")
    if s.removed:
        click.echo("  removed: " + ", ".join(f"{why} {n}" for why, n in s.removed.items()))
    c = s.change
    click.echo(f"  entities: {s.entities} ({s.linked_entities} at two or more agencies); new {c.new_entities}, "
               f"splits {c.splits}, merges {c.merges}, rows moved {c.moved_rows}")
    if s.rotated:
        click.echo("  pseudonyms rotated (retention.pseudonym_days)")
    click.echo(f"  comparisons: {s.comparisons:,}, new edges: {s.new_edges:,}")
    click.echo("Send each agency its own map and withdrawn list; they run `pplink node resolve`.")
