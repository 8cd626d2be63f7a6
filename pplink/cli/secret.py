"""``pplink secret …``: the agencies' shared linkage secret."""

from __future__ import annotations

from pathlib import Path

import click

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
