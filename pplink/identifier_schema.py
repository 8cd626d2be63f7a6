"""The agreement's identifier schema: which columns are identifiers and how they enter the Bloom filter.

Part of the agreement (:mod:`pplink.agreement` re-exports every name); its digest, ``schema_hash``,
is stamped on every encodings file, so a file encoded under another schema is refused.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from pplink.models import PplinkModel, canonical_json

__all__ = ["ColumnName", "FieldKind", "Hardening", "IdentifierField", "IdentifierSchema", "Salt"]

ColumnName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class FieldKind(StrEnum):
    """How an identifier column is validated and normalised."""

    NAME = "name"
    #: A name, with known diminutives replaced by their formal names (``pplink/data/given_name_variants.csv``).
    GIVEN_NAME = "given_name"
    DATE = "date"
    #: A date, hashed with its day and month a second time in ascending order (survives a day/month swap).
    BIRTH_DATE = "birth_date"
    SEX = "sex"
    POSTCODE = "postcode"
    TEXT = "text"

    @property
    def is_date(self) -> bool:
        """Whether values are dates (read in the agreement's date formats, decided per file).

        >>> FieldKind.BIRTH_DATE.is_date, FieldKind.NAME.is_date
        (True, False)
        """
        return self in (FieldKind.DATE, FieldKind.BIRTH_DATE)


class IdentifierField(PplinkModel):
    """One identifier column and how it enters the Bloom filter."""

    column: ColumnName
    kind: FieldKind
    #: Bits set per n-gram token (clkhash ``bitsPerToken``); weights the field's influence.
    bits_per_token: Annotated[int, Field(gt=0, le=200)]
    ngram: Annotated[int, Field(ge=1, le=3)] = 2
    positional: bool = False
    #: A missing value in a required field makes the row invalid; optional fields encode as empty.
    required: bool = True


class Salt(PplinkModel):
    """Salting: some fields' tokens are hashed together with (part of) another field's value.

    With ``source = "date_of_birth"`` and ``prefix = 4`` a name's bigrams are hashed with the year
    of birth, so "smith" born in 2012 and "smith" born in 2013 set unrelated bits: a name's bit
    pattern is only as frequent as the name within one birth year. The price: two records of one
    person whose years differ (or where one lacks the date) no longer agree on the salted fields.
    The salt is not secret; its strength lies in splitting frequencies.
    """

    #: Identifier column whose (normalised) value is the salt.
    source: ColumnName
    #: Identifier columns whose tokens are salted.
    fields: Annotated[tuple[ColumnName, ...], Field(min_length=1)]
    #: Use only the first ``prefix`` characters of the source value (4: the year of a date, which
    #: pplink hashes as YYYYMMDD); 0 uses the whole value.
    prefix: Annotated[int, Field(ge=0, le=64)] = 0

    @model_validator(mode="after")
    def _source_not_salted(self) -> Salt:
        if self.source in self.fields:
            raise ValueError(f"salt source {self.source} cannot salt itself")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("salted fields appear twice")
        return self


class Hardening(PplinkModel):
    """Encoding hardening against frequency and pattern attacks (see docs/hardening.md).

    ``xor_folds`` halves the filter length per fold by XOR-ing its halves (clkhash ``xor_folds``;
    not ``xorFolds``, which clkhash accepts and ignores).

    ``flip_probability`` flips every bit of a finished encoding with that probability (BLIP,
    Schnell and Borgs 2016). The flips are drawn from a keyed pseudo-random function of the
    record's normalised values: deterministic, so re-encoding a record gives the same encoding and
    repeated uploads cannot be averaged to remove the noise. It is randomised response per bit,
    epsilon = ln((1 - p) / p) for one bit; it is not differential privacy for a record or a person.

    ``salt`` hashes some fields' tokens with another field's value (:class:`Salt`).
    Encodings are bit for bit clkhash's only when ``flip_probability`` is 0 and ``salt`` is unset.
    """

    xor_folds: Annotated[int, Field(ge=0, le=2)] = 0
    flip_probability: Annotated[float, Field(ge=0.0, le=0.25)] = 0.0
    salt: Salt | None = None


class IdentifierSchema(PplinkModel):
    """Input columns, their normalisation, and the clkhash settings generated from them."""

    record_id_column: ColumnName = "record_id"
    #: The column saying whether a person opted out. Every file must have it; ``false`` in the TOML
    #: (``None`` here) says explicitly that this linkage has no opt-out column.
    opt_out_column: ColumnName | None = "opt_out"
    #: Opt-out column values (case-insensitive) that mean "do not link me".
    opt_out_values: tuple[str, ...] = ("y", "yes", "true", "1")
    #: Values (case-insensitive) that mean "not opted out". Any value in neither list refuses the row:
    #: an opt-out that cannot be read is never taken as consent.
    opt_in_values: tuple[str, ...] = ("n", "no", "false", "0", "")
    date_formats: tuple[str, ...] = ("%Y-%m-%d", "%d/%m/%Y")
    filter_bits: Literal[512, 1024, 2048, 4096] = 1024
    fields: Annotated[tuple[IdentifierField, ...], Field(min_length=1)]
    #: A row with fewer non-empty identifier values than this cannot be linked and is rejected.
    min_fields: Annotated[int, Field(ge=0)] = 0
    hardening: Hardening = Hardening()

    @field_validator("opt_out_column", mode="before")
    @classmethod
    def _explicit_none(cls, value: object) -> object:
        # TOML has no null: `opt_out_column = false` is how an agreement says "no opt-out column".
        if value is False:
            return None
        if value is True:
            raise ValueError("opt_out_column is a column name, or false for none")
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> IdentifierSchema:
        columns = [f.column for f in self.fields]
        reserved = {self.record_id_column, self.opt_out_column}
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise ValueError(f"identifier columns appear twice: {', '.join(dupes)}")
        clash = sorted(reserved & set(columns))
        if clash:
            raise ValueError(f"identifier columns clash with record id or opt-out column: {', '.join(clash)}")
        both = {v.strip().casefold() for v in self.opt_out_values} & {v.strip().casefold() for v in self.opt_in_values}
        if both:
            raise ValueError("opt_out_values and opt_in_values share a value")
        if self.opt_out_column is not None and not self.opt_out_values:
            raise ValueError("opt_out_values is empty: name the values that mean opted out")
        if self.min_fields > len(self.fields):
            raise ValueError(f"min_fields {self.min_fields} is more than the {len(self.fields)} identifier fields")
        return self

    @property
    def schema_hash(self) -> str:
        """SHA-256 of this section's canonical JSON; stamped on every encodings file."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()
