"""``pplink keys …``: a party's Ed25519 signing key."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Create signing keys. The private key never leaves its party."""


@keys.command("new")
@click.option("--party", required=True, help="Party id, as in the agreement.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for <party>.key (mode 0600) and <party>.pub.")
@click.option("--flower-node-key", is_flag=True,
              help="Also (or, if the signing key exists, only) create the agency's Flower node key: "
                   "<party>.flwr (mode 0600) and <party>.flwr.pub, which the coordinator registers.")
def new_command(party: str, out_dir: Path, flower_node_key: bool) -> None:
    """Create an Ed25519 key pair for PARTY; prints the public key for the agreement."""
    from pplink.keystore import (
        flower_private_key_path,
        new_flower_node_key,
        new_party_keys,
        private_key_path,
        public_key_path,
    )

    if not (flower_node_key and public_key_path(out_dir, party).exists()):
        text = new_party_keys(out_dir, party)
        click.echo(f"private key {private_key_path(out_dir, party)} (mode 0600: keep it at {party})")
        click.echo(f"public key  {public_key_path(out_dir, party)}")
        click.echo(text)
    if flower_node_key:
        pub = new_flower_node_key(out_dir, party)
        click.echo(f"Flower node key {flower_private_key_path(out_dir, party)} (mode 0600: keep it at {party})")
        click.echo(f"Flower node public key {pub} (give it to the coordinator, who registers it)")
