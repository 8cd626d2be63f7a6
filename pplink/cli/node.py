"""``pplink node …``: what an agency runs behind its firewall."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION, existing_file, output_path, remember_format

SETTINGS_OPTION = click.option(
    "--settings", "settings_path", type=existing_file, default=None,
    help="This node's settings TOML (column names, delimiter, encoding, date format, opt-out values); "
         "local to the agency, not part of the agreement.")

__all__ = ["node"]


@click.group()
def node() -> None:
    """Agency side: encode records, resolve pseudonyms. Identifiers never leave the agency."""


@node.command("encode")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.option("--secret", "secret_path", type=existing_file, default=None,
              help="Linkage secret file (default: $PPLINK_SECRET).")
@click.option("--key", "key_path", type=existing_file, required=True, help="This agency's private signing key.")
@click.argument("records", type=existing_file)
@click.option("-o", "--output", type=output_path, required=True, help="Encodings file to write (.enc).")
@SETTINGS_OPTION
@click.option("--tokens", type=output_path, default=None,
              help="Token -> record_id map kept at the node (default: OUTPUT with .tokens).")
@click.option("--skip-invalid", is_flag=True,
              help="Encode the valid rows and write invalid ones with reasons to OUTPUT.rejects.csv "
                   "(default: refuse the file, listing every problem).")
@click.option("--output-format", "enc_format", type=click.Choice(["pplink", "anonlink-json"]), default="pplink",
              show_default=True,
              help="Signed pplink encodings, or anonlink's {\"clks\": [...]} layout (unsigned).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes to use (default: all cores for inputs over ~2 MB).")
@click.option("--progress/--no-progress", default=None, help="Show a progress bar (default: when on a terminal).")
@click.option("--delta-from", "delta_from", type=existing_file, default=None,
              help="Write a signed delta against this earlier file of this node (.enc or delta): only new, "
                   "changed and withdrawn rows; unchanged rows keep their tokens (docs/incremental.md).")
@click.option("--previous-tokens", type=existing_file, default=None,
              help="With --delta-from: the earlier file's token map (default: that file with .tokens).")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "anonlink-json"]), default="text",
              show_default=True, callback=remember_format,
              help="Render the result as text for people or JSON for scripts; anonlink-json is short for "
                   "--output-format anonlink-json (result as text).")
def encode_command(agreement_path: Path, party: str, secret_path: Path | None, key_path: Path, records: Path,
                   output: Path, settings_path: Path | None, tokens: Path | None, skip_invalid: bool, enc_format: str,
                   workers: int | None, progress: bool | None, delta_from: Path | None, previous_tokens: Path | None,
                   output_format: str) -> None:
    """Validate, drop opt-outs, normalise and encode RECORDS (CSV or Parquet) into signed Bloom-filter encodings."""
    from nodes.encode import OutputFormat, encode_file
    from pplink.agreement import load_agreement
    from pplink.cli.progress import row_progress
    from pplink.crypto import load_private_key, load_secret
    from pplink.errors import UsageError

    if output_format == "anonlink-json":
        if (enc_format == "pplink"
                and click.get_current_context().get_parameter_source("enc_format").name == "COMMANDLINE"):
            raise UsageError("--format anonlink-json and --output-format pplink disagree; give one of them")
        enc_format, output_format = "anonlink-json", "text"
    from nodes.dates import human_format
    from nodes.export_settings import load_export_settings

    config = load_agreement(agreement_path)
    config.agency(party)
    settings = load_export_settings(settings_path)
    secret = load_secret(secret_path)
    key = load_private_key(key_path)
    if delta_from is not None or previous_tokens is not None:
        from pplink.cli.incremental import encode_delta_command

        if delta_from is None or skip_invalid or enc_format != "pplink":
            raise UsageError("--previous-tokens needs --delta-from; a delta is always signed pplink output "
                             "and refuses invalid rows")
        if settings_path is not None:
            raise UsageError("--settings cannot be combined with --delta-from yet; encode the whole file")
        encode_delta_command(config, party, secret, key, records, output, delta_from, previous_tokens, tokens,
                             workers, progress, output_format)
        return
    with row_progress(records, enabled=progress, label=f"encoding {party}") as on_rows:
        summary = encode_file(config, party, secret, key, records, output, tokens=tokens, skip_invalid=skip_invalid,
                              output_format=OutputFormat(enc_format), workers=workers, on_rows=on_rows,
                              settings=settings)
    dates = {d.column: {f: n for f, n in d.detected} for d in summary.dates}
    result = {
        "party": summary.party, "output": str(summary.output), "tokens": str(summary.tokens),
        "encoded": summary.encoded, "opted_out": summary.opted_out, "rejected": summary.rejected,
        "rejects": str(summary.rejects) if summary.rejects else None, "seconds": round(summary.seconds, 3),
        "rejected_by_reason": dict(summary.reasons), "date_formats": dates,
    }
    if output_format == "json":
        click.echo(json.dumps(result))
        return
    click.echo(f"{summary.party}: encoded {summary.encoded} records in {summary.seconds:.1f} s -> {summary.output}")
    click.echo(f"  opted out (not encoded): {summary.opted_out}")
    if summary.rejected:
        click.echo(f"  rejected (invalid, not encoded): {summary.rejected}, listed with reasons in {summary.rejects}")
        for reason, n in summary.reasons:
            click.echo(f"    {n:>7} x {reason}")
    for column, found in dates.items():
        read_as = ", ".join(f"{human_format(f)} ({n} different dates)" for f, n in found.items())
        click.echo(f"  {column} read as {read_as}")
    click.echo(f"  token map (keep at this node): {summary.tokens}")


@node.command("validate")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.argument("records", type=existing_file)
@SETTINGS_OPTION
@click.option("--skip-invalid", is_flag=True,
              help="Judge as `encode --skip-invalid` would: rows with problems are listed but do not fail the run.")
@FORMAT_OPTION
def validate_command(agreement_path: Path, party: str, records: Path, settings_path: Path | None,
                     skip_invalid: bool, output_format: str) -> None:
    """Dry-run encoding of RECORDS: profile each column and say what encode would do. Writes nothing.

    Reports completeness, distinct counts, date formats found and problems by row number, never a
    value. Exits non-zero (PPL301) when encode would refuse the file: always for a missing column,
    unreadable dates or nothing to encode, and for rows with problems unless --skip-invalid.
    """
    from nodes.export_settings import load_export_settings
    from nodes.validate import render_text, validate_file
    from pplink.agreement import load_agreement
    from pplink.errors import RecordValidationError

    config = load_agreement(agreement_path)
    report = validate_file(config, party, records, load_export_settings(settings_path))
    if output_format == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(render_text(report))
    if not report.ok and (report.refusals or report.missing_columns or not skip_invalid):
        raise RecordValidationError(f"{records}: encode would refuse this file (see the report above)")


@node.command("normalise")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.argument("records", type=existing_file)
@click.option("-o", "--output", type=output_path, required=True,
              help="CSV of normalised identifiers to write (0600); its token file goes beside it (.tokens).")
@SETTINGS_OPTION
def normalise_command(agreement_path: Path, party: str, records: Path, output: Path,
                      settings_path: Path | None) -> None:
    """Write RECORDS' identifiers exactly as pplink hashes them, as input for anonlink-client's `anonlink encode`.

    For an agency the agreement marks encodings = "clkhash-json". The file holds identifiers: it
    stays at this agency. The .tokens file beside it lets `pplink node resolve` read the coordinator's map.
    """
    from nodes.export_settings import load_export_settings
    from nodes.normalised import write_normalised
    from pplink.agreement import load_agreement

    config = load_agreement(agreement_path)
    summary = write_normalised(config, party, records, output, load_export_settings(settings_path))
    click.echo(f"wrote {summary.output} ({summary.rows} rows; {summary.opted_out} opted out, not written) "
               f"and {summary.tokens} (keep both at this node)")


@node.command("resolve")
@click.option("--agreement", "agreement_path", type=existing_file, required=True,
              help="The agreement TOML (its coordinator key verifies the round's manifest).")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.option("--tokens", "tokens_path", type=existing_file, required=True, help="This node's .tokens file.")
@click.option("--map", "map_path", type=existing_file, required=True,
              help="The pseudonym map the coordinator returned (<party>.map.csv).")
@click.option("--manifest", "manifest_path", type=existing_file, default=None,
              help="The round's signed manifest.json, with manifest.json.sig beside it (default: beside MAP).")
@click.option("-o", "--output", type=output_path, required=True, help="record_id,entity_id file to write.")
@click.option("--withdrawn", "withdrawn_paths", type=existing_file, multiple=True,
              help="Incremental rounds: a round's <party>.withdrawn.csv (repeatable, one per round since this "
                   "node's last file); rows listed may be missing from the map (expired at the coordinator).")
def resolve_command(agreement_path: Path, party: str, tokens_path: Path, map_path: Path, manifest_path: Path | None,
                    output: Path, withdrawn_paths: tuple[Path, ...]) -> None:
    """Join the coordinator's pseudonym map to this agency's record ids (record_id,entity_id).

    The map is used only if the round's manifest verifies against the coordinator key in the
    agreement and names the map's exact SHA-256, and the map covers exactly this node's tokens.
    """
    from nodes.resolve import resolve_files
    from pplink.agreement import load_agreement

    summary = resolve_files(load_agreement(agreement_path), party, tokens_path, map_path, output,
                            manifest_path=manifest_path, withdrawn=withdrawn_paths)
    click.echo(f"wrote {summary.output}: {summary.rows} records, {summary.entities} entities "
               f"(round {summary.round_id[:12]})")


@node.command("join")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.option("--superlink", required=True, help="The coordinator's SuperLink, HOST:PORT.")
@click.option("--data", "data_path", type=existing_file, required=True, help="This agency's records (CSV or Parquet).")
@click.option("--secret", "secret_path", type=existing_file, default=None,
              help="Linkage secret file (default: $PPLINK_SECRET).")
@click.option("--key", "key_path", type=existing_file, required=True, help="This agency's private signing key.")
@click.option("--flower-key", "flower_key_path", type=existing_file, default=None,
              help="This agency's Flower node key (default: KEY with suffix .flwr, e.g. keys/school.flwr).")
@click.option("--root-certificates", type=existing_file, default=None,
              help="The CA certificate the coordinator gave you (ca.crt).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where <party>.entities.csv and the node's working files go (default: ./pplink-node-<party>).")
@click.option("--port", type=click.IntRange(1, 65535), default=9094, show_default=True,
              help="Local port of the SuperNode's runtime API (each SuperNode on one host needs its own).")
@click.option("--skip-invalid", is_flag=True,
              help="Encode the valid rows and list invalid ones in a local rejects file (default: refuse the round).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Encoding processes (default: automatic).")
@click.option("--retry-for", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds to keep trying while the SuperLink refuses this node (key not registered yet, "
                   "or an earlier session of this node still open after a crash).")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Answer each message from a process forked off one that imported pplink and Flower once, "
                   "rather than a fresh interpreter (saves ~3 s of CPU per message).")
@click.option("--poll-interval", type=click.FloatRange(0.1, 3.0), default=0.5, show_default=True,
              help="Seconds an idle SuperNode waits between asks for work (Flower's own is 3; each message "
                   "waits half of it on average).")
@SETTINGS_OPTION
@click.option("--insecure", is_flag=True, help="No TLS and no node key. For tests only.")
def join_command(agreement_path: Path, party: str, superlink: str, data_path: Path, secret_path: Path | None,
                 key_path: Path, flower_key_path: Path | None, root_certificates: Path | None, out_dir: Path | None,
                 port: int, skip_invalid: bool, workers: int | None, retry_for: float, warm_start: bool,
                 poll_interval: float, settings_path: Path | None, insecure: bool) -> None:
    """Run this agency's Flower SuperNode: it dials out to the coordinator and answers match rounds.

    Records, the secret and the token map stay here; the result lands in OUT_DIR/<party>.entities.csv.
    """
    import signal
    import sys

    from nodes.flower.supernode import JoinSettings, join

    settings = JoinSettings(agreement_path=agreement_path, party=party, superlink=superlink, data_path=data_path,
                            secret_path=secret_path, key_path=key_path, flower_key_path=flower_key_path,
                            out_dir=out_dir or Path(f"pplink-node-{party}"), root_certificates=root_certificates,
                            port=port, insecure=insecure, skip_invalid=skip_invalid, workers=workers,
                            warm_start=warm_start, poll_interval=poll_interval, settings_path=settings_path)

    def started(cmd: list[str]) -> None:
        mode = "INSECURE (tests only)" if insecure else "TLS, node key " + str(settings.flower_key)
        click.echo(f"{party}: joining {superlink} ({mode}); results go to {settings.out_dir}", err=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through join(), which stops the SuperNode
    try:
        status = join(settings, on_start=started, retry_for=retry_for)
    except KeyboardInterrupt:
        click.echo(f"{party}: stopped", err=True)
        return
    if status:
        from pplink.errors import TransportError

        raise TransportError(f"{party}: the SuperNode exited with status {status}")
