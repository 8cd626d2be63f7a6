"""``pplink agreement …``: create and check the linkage agreement."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION

__all__ = ["agreement"]


@click.group()
def agreement() -> None:
    """Create, check and explain the linkage agreement all parties sign up to."""


@agreement.command("init")
@click.option("--parties", required=True, help="Comma-separated agency ids, e.g. social_care,school,health,police.")
@click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where party keys live. Existing <party>.pub files are used; missing keys are created, "
                   "with each agency's Flower node key (<party>.flwr, <party>.flwr.pub). "
                   "Default: a 'keys' folder next to the agreement.")
@click.option("--secret", "secret_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The agencies' linkage secret, to write its check value (secret_check) into the agreement. "
                   "Run this at an agency: the coordinator must never hold the secret.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Agreement file to write (refuses to overwrite).")
def init_command(parties: str, keys_dir: Path | None, secret_path: Path | None, output: Path) -> None:
    """Write a valid, commented default agreement, creating or reusing every party's keys."""
    import tomllib

    from pplink.agreement import RESERVED_PARTY_IDS, check_party_id, parse_agreement
    from pplink.agreement_template import default_agreement_toml
    from pplink.errors import UsageError
    from pplink.keystore import ensure_flower_node_keys, ensure_party_keys

    agencies = [p.strip() for p in parties.split(",") if p.strip()]
    if len(agencies) < 2 or len(set(agencies)) != len(agencies):
        raise UsageError("--parties needs at least two distinct agency ids")
    for agency in agencies:  # every id checked before any key file is written
        check_party_id(agency)
        if agency in RESERVED_PARTY_IDS:
            raise UsageError(f"--parties: {agency!r} is reserved for the {agency}'s own keys; name the agencies only")
    if output.exists():
        raise UsageError(f"{output}: already exists; refusing to overwrite an agreement")
    keys_dir = keys_dir or output.parent / "keys"
    all_parties = [*agencies, "coordinator", "auditor"]
    public_keys, created = ensure_party_keys(keys_dir, all_parties)
    flower_created = ensure_flower_node_keys(keys_dir, agencies)
    check = None
    if secret_path is not None:
        from pplink.crypto import load_secret, secret_check

        check = secret_check(load_secret(secret_path))
    text = default_agreement_toml(agencies, public_keys, secret_check=check)
    config = parse_agreement(tomllib.loads(text), str(output))  # never write an invalid default
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output} (agreement id {config.agreement_id})")
    if created:
        click.echo(f"created keys in {keys_dir} for: {', '.join(created)}")
    if flower_created:
        click.echo(f"created Flower node keys in {keys_dir} for: {', '.join(flower_created)}")


@agreement.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@FORMAT_OPTION
def check_command(path: Path, output_format: str) -> None:
    """Validate an agreement; print its id and a summary, or every problem found.

    Also warns (without failing) where the published notice would show an empty or placeholder
    contact, lawful basis, rights, complaints route or opt-out route.
    """
    from pplink.agreement import load_agreement
    from pplink.audit.notice import notice_warnings

    config = load_agreement(path)
    ids = config.identifiers
    opt_out = ({"column": ids.opt_out_column, "opt_out_values": list(ids.opt_out_values),
                "opt_in_values": list(ids.opt_in_values)} if ids.opt_out_column else None)
    summary = {
        "agreement_id": config.agreement_id,
        "name": config.name,
        "agencies": config.agency_ids,
        "coordinator": config.coordinator.id,
        "auditors": [p.id for p in config.parties if p.role == "auditor"],
        "identifier_columns": [f.column for f in config.identifiers.fields],
        "threshold": config.linkage.threshold,
        "budget": config.budget.model_dump(mode="json"),
        "release_attributes": [a.column for a in config.release.attributes],
        "purposes": list(config.purposes),
        "opt_out": opt_out,
        "warnings": notice_warnings(config),
    }
    if output_format == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{path}: valid")
    click.echo(f"  agreement id   {config.agreement_id}")
    click.echo(f"  name           {config.name}")
    click.echo(f"  agencies       {', '.join(config.agency_ids)}")
    click.echo(f"  coordinator    {config.coordinator.id}")
    click.echo(f"  identifiers    {', '.join(summary['identifier_columns'])}  ({config.identifiers.filter_bits} bits)")
    click.echo(f"  threshold      {config.linkage.threshold}")
    b = config.budget
    click.echo(f"  budget         epsilon {b.epsilon}, delta {b.delta:g}, {b.accounting.value} accounting")
    click.echo(f"  release attrs  {', '.join(summary['release_attributes']) or '(none)'}")
    for purpose in config.purposes:
        click.echo(f"  purpose        {purpose}")
    if opt_out is None:
        click.echo("  opt-out        none (opt_out_column = false): every record is linked")
    else:
        click.echo(f"  opt-out        column {ids.opt_out_column}: {', '.join(map(repr, ids.opt_out_values))} opt out, "
                   f"{', '.join(map(repr, ids.opt_in_values))} opt in; any other value refuses the row")
    for warning in summary["warnings"]:
        click.echo(f"  warning        {warning}")


@agreement.command("schema")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the schema here (default: print it).")
def schema_command(path: Path, output: Path | None) -> None:
    """Write the agreement's clkhash linkage schema (v3), for an agency using anonlink-client.

    The schema is public (it holds no key). With it, the key from `pplink secret derive-key`, and
    identifiers normalised as pplink normalises them, `anonlink encode` makes pplink's encodings.
    """
    from pplink.agreement import load_agreement
    from pplink.interop import clkhash_schema_json

    text = clkhash_schema_json(load_agreement(path))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


@agreement.command("explain")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The privacy ledger: its latest link-rate release shows how accurate linkage was, and for whom. "
                   "It is verified first; a ledger that fails the audit is refused.")
@click.option("-o", "--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the notice as Markdown (default: print it).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write it as a self-contained HTML page.")
def explain_command(path: Path, ledger_path: Path | None, md_path: Path | None, html_path: Path | None) -> None:
    """Write a plain-language notice about the linkage, for agencies to publish to families."""
    from pplink.agreement import load_agreement
    from pplink.audit.notice import build_notice, notice_warnings, render_html, render_markdown
    from pplink.audit.verify import verify_ledger
    from pplink.errors import LedgerError
    from pplink.ledger import read_ledger

    config = load_agreement(path)
    entries = []
    if ledger_path is not None:
        verdict = verify_ledger(config, ledger_path)
        if not verdict.ok:
            raise LedgerError(f"{ledger_path}: fails the audit ({len(verdict.findings)} findings); "
                              "run `pplink audit verify` and publish nothing from it")
        entries = read_ledger(ledger_path, config)
    notice = build_notice(config, entries)
    for warning in notice_warnings(config):
        click.echo(f"warning: {warning}", err=True)
    markdown = render_markdown(notice)
    if md_path is None:
        click.echo(markdown)
    else:
        md_path.write_text(markdown, encoding="utf-8")
        click.echo(f"wrote {md_path}")
    if html_path is not None:
        html_path.write_text(render_html(notice), encoding="utf-8")
        click.echo(f"wrote {html_path}")
