"""``pplink coordinator release``: one differentially private release, recorded on the ledger first.

The command object is :data:`release_command`; the ``coordinator`` group registers it. It parses
options, calls :func:`coordinator.release.engine.release_from_files` and renders the result. The result
is shown (and written to ``--out``) only after its ledger entry is on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION, existing_file, output_path
from pplink.queries import command_kinds

__all__ = ["release_command", "render_release"]

@click.command("release")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--ledger", "ledger_path", type=output_path, default=None,
              help="The round's privacy ledger (JSON Lines). Default: the one the round's releases went to, or "
                   "LINKAGE/coordinator/ledger.jsonl for its first. Any other ledger is refused.")
@click.option("--linkage", "linkage_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="The match output folder (holds coordinator/linkage.npz).")
@click.option("--key", "key_path", type=existing_file, required=True, help="The coordinator's private key.")
@click.option("--query", "kind", type=click.Choice(command_kinds()), required=True, help="What to release.")
@click.option("--attribute", help="Release attribute to count by (count-by, histogram; optional for link-rate).")
@click.option("--by-combination", is_flag=True, help="count-by: cross the attribute with the agency combination.")
@click.option("--epsilon", type=float,
              help="Privacy loss to spend (zcdp: this release alone, at the agreement's delta).")
@click.option("--rho", type=float, help="zcdp accounting only: the zCDP loss to spend, instead of --epsilon.")
@click.option("--out", "out_path", type=output_path,
              help="Also write the release (and its receipt) as JSON to this file.")
@click.option("--receipts", "receipts_path", type=output_path,
              help="Also keep the release's receipt in this receipts file (JSON Lines), for `audit verify --receipts`.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@FORMAT_OPTION
def release_command(
    agreement_path: Path, ledger_path: Path | None, linkage_dir: Path, key_path: Path, kind: str,
    attribute: str | None, by_combination: bool, epsilon: float | None, rho: float | None, out_path: Path | None,
    receipts_path: Path | None, as_json: bool, output_format: str,
) -> None:
    """Release one DP aggregate over the linkage; refused past the privacy budget.

    Queries: overlap (people per combination of agencies), count-by (by a release attribute,
    optionally --by-combination), histogram (a numeric attribute's bins), link-rate (share of
    each agency's people found at each other agency, by attribute value). Counts below the
    agreement's min_cell_size are suppressed and shown as "< N". The release spends the budget
    of the round's ledger, the one its signed manifest names; its receipt is printed.
    """
    from pydantic import ValidationError

    from coordinator.release.engine import release_from_files
    from pplink.accounting import QueryKind
    from pplink.errors import UsageError
    from pplink.ledger import ReleaseQuery
    from pplink.receipts import keep_receipt

    if (epsilon is None) == (rho is None):
        raise UsageError("give exactly one of --epsilon or --rho")
    try:
        query = ReleaseQuery(kind=kind, attribute=attribute, by_combination=by_combination)
    except ValidationError as err:
        reasons = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors(include_input=False))
        raise UsageError(f"--query {kind}: {reasons}") from None
    release = release_from_files(agreement_path, ledger_path, linkage_dir, key_path, query, epsilon=epsilon, rho=rho)
    # The entry is on disk now; only from here may the numbers go anywhere.
    if receipts_path is not None:
        keep_receipt(receipts_path, release.receipt)
    payload = release.model_dump(mode="json")
    if release.query.kind is QueryKind.LINK_RATE:
        payload["link_rates"] = [rate.__dict__ for rate in release.link_rates()]
    if out_path is not None:
        _write_json(out_path, payload)
    if as_json or output_format == "json":
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        click.echo(render_release(release))


def _write_json(path: Path, payload: object) -> None:
    from pplink.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return out


def render_release(release) -> str:  # noqa: ANN001 - coordinator.release.engine.Release, imported lazily
    """A release as text: what was spent, then its cells (and link rates)."""
    from pplink.accounting import QueryKind
    from pplink.audit.verify import describe_query

    entry = release.entry
    query = entry.query
    loss = entry.loss
    metric = "L1" if entry.mechanism.value == "laplace" else "L2"
    rho = "" if loss.rho is None else f" (rho {loss.rho:.6g}, delta {loss.delta:g})"
    lines = [
        f"Release recorded as ledger entry {entry.seq} (entry hash {release.entry_hash}).",
        f"Ledger {release.receipt.ledger}: keep the receipt (--out or --receipts) for the auditor.",
        f"Query: {describe_query(query)}",
        f"Noise: {entry.mechanism.value}, {metric} sensitivity {entry.sensitivity}, scale {entry.scale:.6g}; "
        f"this release epsilon {loss.epsilon:.6g}{rho}.",
        f"Budget: spent epsilon {entry.cumulative.epsilon:.6g} of {release.budget_epsilon:g}; "
        f"remaining {release.remaining_epsilon:.6g}.",
        f'Counts below {entry.min_cell_size} are suppressed and shown as "< {entry.min_cell_size}".',
        "",
    ]
    if query.kind is QueryKind.LINK_RATE:
        rows = []
        for rate in release.link_rates():
            shown = "suppressed" if rate.rate is None and rate.rate_below is None else (
                f"< {rate.rate_below:.3f}" if rate.rate is None
                else f"{rate.rate:.3f}" + (" (clipped: noise pushed the ratio past the bound)" if rate.clipped else ""))
            rows.append([rate.source, rate.target, rate.value,
                         "< " + str(entry.min_cell_size) if rate.numerator is None else str(rate.numerator),
                         "< " + str(entry.min_cell_size) if rate.denominator is None else str(rate.denominator),
                         shown])
        lines += _table(["agency", "found at", query.attribute or "group", "both", "at agency", "rate"], rows)
        return "\n".join(lines)
    if query.kind is QueryKind.OVERLAP:
        headers = ["agencies"]
    elif query.by_combination:
        headers = ["agencies", query.attribute or ""]
    else:
        headers = [query.attribute or "group", "outcome"][: len(entry.cells[0].key) if entry.cells else 1]
    rows = [[*cell.key, release.display(cell)] for cell in entry.cells]
    lines += _table([*headers, "count"], rows)
    return "\n".join(lines)
