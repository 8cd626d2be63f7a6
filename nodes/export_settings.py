"""Export settings ("node settings"): how one agency's export maps onto the agreement, kept at the agency.

An agency's export has its own column names, delimiter, encoding, date format and opt-out words.
Writing those into the agreement would change the agreement id and make every party re-encode, so
they live in a small TOML file at the node instead (``pplink node encode --settings node.toml``)::

    delimiter = ";"
    encoding = "cp1252"
    date_format = "%d.%m.%Y"

    [columns]            # the export's header -> the agreement's field
    Forename = "given_name"
    DOB = "date_of_birth"

    [opt_out_values]     # the export's value -> a value the agreement declares
    "Opted out" = "y"
    "Consent given" = "n"

Nothing here changes what is encoded: the same person gives the same encoding at every agency.
"""

from __future__ import annotations

import codecs
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator

from pplink.errors import ConfigError
from pplink.models import PplinkModel

__all__ = ["ExportSettings", "load_export_settings"]


class ExportSettings(PplinkModel):
    """One agency's reading settings (all optional; the defaults read a plain UTF-8 CSV)."""

    #: The field separator of a CSV export.
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    #: The export's text encoding (any ASCII-compatible codec Python knows: utf-8, cp1252, latin-1).
    encoding: str = "utf-8"
    #: The strptime format of every date column (a stated format: nothing inferred, nothing
    #: guessed), or a list of formats of different shapes (``["%Y-%m-%d", "%d/%m/%Y"]``).
    date_format: str | tuple[str, ...] | None = None
    #: A format (or list) per date column (the agreement's field name), overriding ``date_format``.
    date_formats: dict[str, str | tuple[str, ...]] = {}
    #: The export's header -> the agreement's field name. Unlisted columns keep their names.
    columns: dict[str, str] = {}
    #: The export's opt-out value (case-insensitive) -> one of the agreement's opt-out or opt-in values.
    opt_out_values: dict[str, str] = {}

    @field_validator("delimiter")
    @classmethod
    def _plain_delimiter(cls, value: str) -> str:
        if value in {'"', "\n", "\r"}:
            raise ValueError("delimiter cannot be a quote or a line break")
        return value

    @field_validator("encoding")
    @classmethod
    def _ascii_compatible(cls, value: str) -> str:
        try:
            codec = codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        # Blocks are cut at newline and quote bytes, which only works where ASCII is one byte.
        if codec.name.startswith(("utf-16", "utf-32")) or b'a,"\n'.decode(codec.name, "replace") != 'a,"\n':
            raise ValueError(f"encoding {value!r} is not ASCII-compatible; save the export as UTF-8")
        return codec.name


    @model_validator(mode="after")
    def _one_target_each(self) -> ExportSettings:
        targets = list(self.columns.values())
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise ValueError(f"columns maps two export columns to {', '.join(dupes)}")
        stated = [("date_format", self.date_format), *((f"date_formats.{c}", f) for c, f in self.date_formats.items())]
        for name, value in stated:
            formats = (value,) if isinstance(value, str) else value or ()
            if value is not None and (not formats or any("%" not in f for f in formats)):
                raise ValueError(f"{name} is a strptime format such as %d.%m.%Y (or a list of them)")
        return self

    def date_format_for(self, column: str) -> tuple[str, ...] | None:
        """The stated formats of an agreement date field, if any."""
        value = self.date_formats.get(column, self.date_format)
        return (value,) if isinstance(value, str) else value

    def mapped_header(self, header: list[str]) -> list[str]:
        """The export's header with its columns renamed to the agreement's fields."""
        return [self.columns.get(name, name) for name in header]


def load_export_settings(path: Path | None) -> ExportSettings:
    """Read a node settings TOML file; ``None`` gives the defaults.

    Raises:
        ConfigError: unreadable, not TOML, or an unknown or invalid setting (every problem listed).
    """
    if path is None:
        return ExportSettings()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read node settings ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return ExportSettings.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                 for e in err.errors(include_input=False, include_url=False)]
        raise ConfigError(f"{path}: {len(lines)} problem(s) in the node settings\n" + "\n".join(lines)) from None
