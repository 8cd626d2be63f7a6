"""``pplink secret …``: the agencies' shared linkage secret."""

from __future__ import annotations

from pathlib import Path

import click

from pplink.cli.options import existing_file

__all__ = ["secret"]


@click.group()
def secret() -> None:
    """Create the linkage secret shared among agencies only (never the coordinator)."""


@secret.command("new")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="File to create (mode 0600; refuses to overwrite).")
def new_command(output: Path) -> None:
    """Create a 256-bit linkage secret."""
    from pplink.crypto import new_secret, write_secret

    write_secret(new_secret(), output)
    click.echo(f"wrote {output} (mode 0600). Share it with the agencies only, never the coordinator.")


@secret.command("check")
@click.argument("path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def check_command(path: Path) -> None:
    """Print the secret's check value for the agreement's `secret_check` (it reveals nothing of the secret)."""
    from pplink.crypto import load_secret, secret_check

    click.echo(secret_check(load_secret(path)))


@secret.command("derive-key")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--party", required=True,
              help="The agency that will use it; the agreement must mark it encodings = \"clkhash-json\".")
@click.option("--secret", "secret_path", type=existing_file, default=None,
              help="The linkage secret (default: $PPLINK_SECRET).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Key file to create (mode 0600; refuses to overwrite).")
def derive_key_command(agreement_path: Path, party: str, secret_path: Path | None, output: Path) -> None:
    """Write this agreement's encoding key as the text anonlink-client takes as its SECRET.

    For an agency that encodes with anonlink-client (`anonlink encode DATA "$(cat KEY)" SCHEMA OUT`,
    with the schema from `pplink agreement schema`). The key encodes every agency's records under
    this agreement: it must stay at agencies, like the secret itself.
    """
    from pplink.agreement import load_agreement
    from pplink.crypto import derive_linkage_key, load_secret, secret_check, write_derived_key
    from pplink.errors import AgreementError, SecretError
    from pplink.interop import CLKHASH_JSON

    config = load_agreement(agreement_path)
    if config.agency(party).encodings != CLKHASH_JSON:
        raise AgreementError(f"{party} encodes with pplink; the key is only exported for an agency the agreement "
                             f'marks encodings = "{CLKHASH_JSON}"')
    value = load_secret(secret_path)
    if config.secret_check is not None and secret_check(value) != config.secret_check:
        raise SecretError("the linkage secret does not match the agreement's secret_check; nothing was written")
    write_derived_key(derive_linkage_key(value, config.agreement_id), output)
    click.echo(f"wrote {output} (mode 0600) for {party}.", err=True)
    click.echo("WARNING: this key makes encodings of anyone's identifiers under this agreement. Keep it where the "
               "linkage secret is kept, never with the coordinator. anonlink-client takes it as a command-line "
               "argument, which other users of that machine may see in the process list: run it on a machine "
               "only the agency's staff use. Its encodings are unsigned, and identifiers must be normalised as "
               "pplink normalises them (`pplink node normalise`; docs/agreement.md).", err=True)


@secret.command("exchange-key")
@click.option("--party", required=True, help="This agency's id in the agreement.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="This agency's Ed25519 signing key (signs the exchange key's public half).")
@click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for <party>.x25519 (0600) and <party>.x25519.json (public, signed).")
def exchange_key_command(party: str, key_path: Path, keys_dir: Path) -> None:
    """Create this agency's X25519 key for receiving the sealed secret; send the .json to the sender."""
    from nodes.secret_sharing import new_exchange_key
    from pplink.crypto import load_private_key

    public = new_exchange_key(keys_dir, party, load_private_key(key_path))
    click.echo(f"wrote {public} (public, signed by {party}); the private key stays in {keys_dir}")


@secret.command("seal")
@click.option("--agreement", "agreement_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The agreement TOML.")
@click.option("--from", "sender", required=True, help="The sending agency's id.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="The sending agency's Ed25519 signing key.")
@click.option("--to", "recipient_public", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="The receiving agency's signed exchange key (<party>.x25519.json).")
@click.option("--secret", "secret_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The linkage secret (default: $PPLINK_SECRET).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Sealed file to write; safe to send over any channel.")
def seal_command(agreement_path: Path, sender: str, key_path: Path, recipient_public: Path, secret_path: Path | None,
                 output: Path) -> None:
    """Seal the linkage secret for another agency (never for the coordinator or an auditor)."""
    from nodes.secret_sharing import seal_secret
    from pplink.agreement import load_agreement
    from pplink.crypto import load_private_key, load_secret

    config = load_agreement(agreement_path)
    sealed = seal_secret(config, load_secret(secret_path), sender=sender, signing_key=load_private_key(key_path),
                         recipient_public=recipient_public)
    output.write_text(sealed.model_dump_json(indent=2) + "\n", encoding="ascii")
    click.echo(f"wrote {output}: sealed for {sealed.recipient}, signed by {sender}")


@secret.command("open")
@click.option("--agreement", "agreement_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The agreement TOML.")
@click.option("--party", required=True, help="This (receiving) agency's id.")
@click.option("--exchange-key", "exchange_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="This agency's X25519 private key (<party>.x25519).")
@click.argument("sealed", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Secret file to create (mode 0600).")
def open_command(agreement_path: Path, party: str, exchange_path: Path, sealed: Path, output: Path) -> None:
    """Verify and open a sealed secret addressed to this agency."""
    from nodes.secret_sharing import load_exchange_key, open_secret
    from pplink.agreement import load_agreement
    from pplink.crypto import secret_check, write_secret

    config = load_agreement(agreement_path)
    value = open_secret(config, sealed, party=party, exchange_key=load_exchange_key(exchange_path))
    if config.secret_check is not None and secret_check(value) != config.secret_check:
        from pplink.errors import SecretError

        raise SecretError(f"{sealed}: opened, but the secret does not match the agreement's secret_check")
    write_secret(value, output)
    click.echo(f"wrote {output} (mode 0600)")
