"""Click parameter types and shared options used by several command groups."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["FORMAT_META_KEY", "FORMAT_OPTION", "existing_file", "output_path", "remember_format"]

existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)
output_path = click.Path(dir_okay=False, path_type=Path)

#: Where the chosen ``--format`` is kept for the error boundary (``ctx.meta`` is shared by the whole
#: context chain, so the group's ``invoke`` sees what the subcommand parsed).
FORMAT_META_KEY = "pplink.output_format"


def remember_format(ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Click callback: keep the parsed ``--format`` so errors can be rendered the same way."""
    ctx.meta[FORMAT_META_KEY] = value
    return value


FORMAT_OPTION = click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    callback=remember_format, help="Render the result as text for people or JSON for scripts.",
)
