"""Click parameter types and shared options used by several command groups."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["FORMAT_META_KEY", "FORMAT_OPTION", "existing_file", "output_path", "remember_format"]


class ExistingFile(click.Path):
    """A path that must be an existing file; a missing one is PPL501 (docs/errors.md), not click's exit 2."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        """Refuse a missing file with a :class:`~pplink.errors.UsageError` naming the option."""
        from pplink.errors import UsageError

        path = Path(str(value))
        if not path.exists():
            what = f"{param.get_error_hint(ctx)}: " if param is not None and ctx is not None else ""
            raise UsageError(f"{what}{path}: no such file")
        return super().convert(value, param, ctx)


existing_file = ExistingFile()
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
