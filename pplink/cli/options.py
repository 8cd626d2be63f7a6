"""Click parameter types and shared options used by several command groups."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["FORMAT_OPTION", "existing_file", "output_path"]

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
output_path = click.Path(dir_okay=False, path_type=Path)

FORMAT_OPTION = click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="Render the result as text for people or JSON for scripts.",
)
