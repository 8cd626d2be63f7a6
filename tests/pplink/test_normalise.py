"""Normalisers: canonical forms are stable under the variations agencies really produce."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pplink.normalise import (
    InvalidValue,
    normalise_date,
    normalise_name,
    normalise_postcode,
    normalise_sex,
    normalise_text,
)

FORMATS = ("%Y-%m-%d", "%d/%m/%Y")
names = st.text(alphabet=st.characters(categories=("L", "Zs", "Pd", "Po")), max_size=40)


@given(names)
def test_name_normalisation_is_idempotent(value: str) -> None:
    # Invariant: normalising a normalised name changes nothing.
    try:
        once = normalise_name(value)
    except InvalidValue:
        return
    assert normalise_name(once) == once


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzéüñ -'", max_size=30))
def test_name_ignores_case_and_surrounding_space(value: str) -> None:
    # Invariant: letter case and padding never change the canonical form.
    try:
        base = normalise_name(value)
    except InvalidValue:
        return
    assert normalise_name("  " + value.upper() + "\t") == base


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("José", "jose"), ("O'Brien", "obrien"), ("OBRIEN", "obrien"), ("Smith-Jones", "smith jones"),
     ("smith  jones", "smith jones"), ("Siobhán", "siobhan"), ("  ", ""), ("Zoë", "zoe"), ("محمد", "محمد")],
)
def test_name_examples(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


def test_name_without_letters_is_invalid_and_reason_hides_value() -> None:
    with pytest.raises(InvalidValue) as info:
        normalise_name("12345")
    assert "12345" not in str(info.value)


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2024, 12, 31)))
def test_both_date_formats_agree(date: dt.date) -> None:
    # Invariant: ISO and day/month/year spellings of one date normalise to the same ISO string.
    iso = normalise_date(date.isoformat(), FORMATS)
    dmy = normalise_date(date.strftime("%d/%m/%Y"), FORMATS)
    assert iso == dmy == date.isoformat()


@pytest.mark.parametrize("raw", ["2011-02-30", "31/13/2010", "1899-12-31", "2999-01-01", "yesterday", "2011/02/03"])
def test_bad_dates_are_invalid(raw: str) -> None:
    with pytest.raises(InvalidValue):
        normalise_date(raw, FORMATS)


def test_custom_date_format() -> None:
    assert normalise_date("20110203", ("%Y%m%d",)) == "2011-02-03"


@pytest.mark.parametrize(("raw", "expected"),
                         [("M", "m"), ("male", "m"), ("FEMALE", "f"), (" f ", "f"), ("U", ""), ("", "")])
def test_sex(raw: str, expected: str) -> None:
    assert normalise_sex(raw) == expected


def test_sex_other_value_is_invalid() -> None:
    with pytest.raises(InvalidValue):
        normalise_sex("yes")


outward = st.from_regex(r"[A-Z]{1,2}[0-9][A-Z0-9]?", fullmatch=True)
inward = st.from_regex(r"[0-9][A-Z]{2}", fullmatch=True)


@given(outward, inward, st.sampled_from(["", " ", "  "]), st.booleans())
def test_postcode_spacing_and_case(out: str, inw: str, gap: str, lower: bool) -> None:
    # Invariant: any spacing or case of a postcode gives "OUTWARD INWARD".
    raw = out + gap + inw
    raw = raw.lower() if lower else raw
    assert normalise_postcode(raw) == f"{out} {inw}"


@pytest.mark.parametrize("raw", ["12345", "SW1A", "not a postcode"])
def test_bad_postcodes(raw: str) -> None:
    with pytest.raises(InvalidValue):
        normalise_postcode(raw)


def test_text_folds_accents_and_punctuation() -> None:
    assert normalise_text("  Flat 3, Rue de l'Église ") == "flat 3 rue de l eglise"
