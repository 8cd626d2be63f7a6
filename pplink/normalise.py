"""Normalisers for identifier values: pure functions from a raw string to a canonical one.

Each returns the canonical string, ``""`` for a missing value, or raises :class:`InvalidValue`
with a reason that never repeats the value itself. They are cached because identifier values
repeat heavily (first names, surnames, dates of birth), which keeps validation and normalisation
well below the cost of hashing.

>>> normalise_name("  José  O'Brien-Smith ")
'jose obrien smith'
>>> normalise_given_name("Liz"), normalise_given_name("BOB-Ann")
('elizabeth', 'robert ann')
>>> normalise_postcode("sw1a1aa")
'SW1A 1AA'
>>> normalise_sex("female")
'f'
>>> normalise_date("03/02/2011", ("%Y-%m-%d", "%d/%m/%Y"))
'2011-02-03'
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from importlib import resources

__all__ = [
    "InvalidValue",
    "hashed_form",
    "given_name_variants",
    "normalise_date",
    "normalise_given_name",
    "normalise_name",
    "normalise_postcode",
    "normalise_sex",
    "normalise_text",
]

_CACHE = 1 << 18
_EARLIEST = dt.date(1900, 1, 1)


class InvalidValue(ValueError):
    """A value that cannot be normalised. ``str()`` gives the reason, never the value."""


def _fold(value: str) -> str:
    # NFKD splits accented letters into base + combining mark; dropping the marks maps
    # "José" to "jose" while keeping letters of non-Latin scripts intact. ASCII text has nothing to
    # decompose and no marks: only its case changes (the usual value, without a Python step per character).
    if value.isascii():
        return value.lower()
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_NON_WORD = re.compile(r"[\W_]+")


@lru_cache(maxsize=_CACHE)
def normalise_name(value: str) -> str:
    """Lower-case, strip accents and punctuation, collapse whitespace.

    Apostrophes vanish (``O'Brien`` and ``OBrien`` agree); hyphens become spaces
    (``Smith-Jones`` and ``Smith Jones`` agree).

    Raises:
        InvalidValue: the value has digits but no letters, or is over 100 characters.
    """
    folded = _APOSTROPHES.sub("", _fold(value))
    cleaned = " ".join(_NON_WORD.sub(" ", folded).split())
    if not cleaned:
        return ""
    if len(cleaned) > 100:
        raise InvalidValue("name is longer than 100 characters")
    if not any(ch.isalpha() for ch in cleaned):
        raise InvalidValue("name has no letters")
    return cleaned


@cache
def given_name_variants() -> Mapping[str, str]:
    """The shipped table of given-name diminutives: ``{variant: formal}``, both in normalised form.

    ``pplink/data/given_name_variants.csv`` (see docs/agreement.md for its source and limits): short
    forms that stand for one formal name in English usage (Bob, Liz, Kate). Forms shared by several
    formal names (Sam, Alex, Chris, Charlie, Jo, Beth) are deliberately absent.

    >>> given_name_variants()["bob"]
    'robert'
    """
    text = resources.files("pplink").joinpath("data/given_name_variants.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines()))
    if rows[0] != ["variant", "formal"]:
        raise ValueError("given_name_variants.csv: unexpected header")
    return {normalise_name(variant): normalise_name(formal) for variant, formal in rows[1:]}


@lru_cache(maxsize=_CACHE)
def normalise_given_name(value: str) -> str:
    """A given name as :func:`normalise_name` gives it, each known diminutive replaced by its formal name.

    Every word is looked up in :func:`given_name_variants`, so ``Liz``, ``LIZ`` and ``Elizabeth`` all
    hash as ``elizabeth`` at every agency; a word not in the table (including a mistyped one) is kept.

    Raises:
        InvalidValue: as :func:`normalise_name`.
    """
    variants = given_name_variants()
    return " ".join(variants.get(word, word) for word in normalise_name(value).split())


@lru_cache(maxsize=_CACHE)
def normalise_text(value: str) -> str:
    """Generic free text: lower-case, strip accents, punctuation to spaces, collapse whitespace."""
    cleaned = " ".join(_NON_WORD.sub(" ", _fold(value)).split())
    if len(cleaned) > 200:
        raise InvalidValue("text is longer than 200 characters")
    return cleaned


_FIELDS = {"d": r"(?P<d>\d{1,2})", "m": r"(?P<m>\d{1,2})", "Y": r"(?P<Y>\d{4})", "y": r"(?P<y>\d{2})"}


@lru_cache(maxsize=64)
def _numeric_pattern(fmt: str) -> re.Pattern[str] | None:
    """A regex for a format made of %d, %m, %Y or %y and literal characters; ``None`` for others.

    >>> _numeric_pattern("%d.%m.%Y").match("3.12.2011").groupdict()
    {'d': '3', 'm': '12', 'Y': '2011'}
    >>> _numeric_pattern("%d %b %Y") is None
    True
    """
    parts = re.split(r"(%.)", fmt)
    codes = [p[1] for p in parts if p.startswith("%")]
    if any(c not in _FIELDS for c in codes) or sorted(c.lower() for c in codes) != ["d", "m", "y"]:
        return None
    return re.compile("".join(_FIELDS[p[1]] if p.startswith("%") else re.escape(p) for p in parts if p) + "$")


@lru_cache(maxsize=64)
def _date_parsers(formats: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str] | None, str], ...]:
    """Per format: the format, its numeric regex (or ``None``: strptime) and its year group (``Y`` or ``y``)."""
    parsers = []
    for fmt in formats:
        pattern = _numeric_pattern(fmt)
        parsers.append((fmt, pattern, "" if pattern is None else ("Y" if "Y" in pattern.groupindex else "y")))
    return tuple(parsers)


#: ``(today, the time.time() at which it stops being today)``: date.today() costs about a
#: microsecond, as much as the rest of reading a date, and every distinct date checks against it.
_today_until: tuple[dt.date, float] = (dt.date.min, 0.0)


def _today() -> dt.date:
    global _today_until
    if time.time() >= _today_until[1]:
        today = dt.date.today()
        midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time())
        # Read again at the next local midnight (and at least every minute, should the clock move back).
        _today_until = (today, min(midnight.timestamp(), time.time() + 60))
    return _today_until[0]


def _checked(year: int, month: int, day: int) -> str:
    try:
        date = dt.date(year, month, day)
    except ValueError:
        raise InvalidValue("not a calendar date") from None
    if date < _EARLIEST or date > _today():
        raise InvalidValue("date is before 1900 or in the future")
    return date.isoformat()


def _two_digit_year(year: int) -> int:
    # Two-digit years are births: never in the future, so 30 is 1930 (and 15 is 2015).
    year += 2000
    return year - 100 if year > _today().year else year


@lru_cache(maxsize=_CACHE)
def normalise_date(value: str, formats: tuple[str, ...]) -> str:
    """Parse a date in one of ``formats`` (strptime patterns, tried in order) to ``YYYY-MM-DD``.

    Formats made only of ``%d``, ``%m``, ``%Y`` or ``%y`` and separators take a regex fast path;
    others go through ``strptime``. A value that has a format's shape but is not a valid date
    (``31/02/2010``) goes on to the next format, and gives that reason if none reads it. A two-digit
    year (``%y``) is the latest year not in the future: ``05/03/85`` is 1985, ``05/03/15`` is 2015.

    Raises:
        InvalidValue: matches none of the formats, is not a real date, or is outside 1900..today.
    """
    value = value.strip()
    if not value:
        return ""
    error: InvalidValue | None = None
    for fmt, pattern, year_code in _date_parsers(formats):
        if pattern is not None:
            m = pattern.match(value)
            if not m:
                continue
            y, mm, dd = m.group(year_code, "m", "d")
            year = int(y) if year_code == "Y" else _two_digit_year(int(y))
            month, day = int(mm), int(dd)
        else:
            try:
                parsed = dt.datetime.strptime(value, fmt).date()
            except ValueError:
                continue
            year, month, day = parsed.year, parsed.month, parsed.day
            if "%y" in fmt:
                year = _two_digit_year(year % 100)
        try:
            return _checked(year, month, day)
        except InvalidValue as exc:
            error = error or exc
    if error is not None:
        raise error
    raise InvalidValue(f"date matches none of the formats {', '.join(formats)}")


_SEX = {"m": "m", "male": "m", "f": "f", "female": "f"}
#: Recorded "unknown" values are missing, not invalid: NHS data uses them routinely.
_SEX_MISSING = {"", "u", "unknown", "not known", "x", "i", "indeterminate", "9", "0"}


@lru_cache(maxsize=64)
def normalise_sex(value: str) -> str:
    """``M``/``F``/``Male``/``Female`` in any case to ``m``/``f``; recorded unknowns to ``""``.

    Raises:
        InvalidValue: any other value.
    """
    key = value.strip().casefold()
    if key in _SEX:
        return _SEX[key]
    if key in _SEX_MISSING:
        return ""
    raise InvalidValue("sex must be M, F, Male or Female (or unknown)")


_POSTCODE = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)([0-9][A-Z]{2})$")
_CANONICAL_POSTCODE = re.compile(r"[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}\Z")


@lru_cache(maxsize=_CACHE)
def normalise_postcode(value: str) -> str:
    """A UK postcode in any spacing or case to ``OUTWARD INWARD`` upper case.

    Raises:
        InvalidValue: not of the UK postcode shape.
    """
    if _CANONICAL_POSTCODE.match(value):  # already as written here (most exports): nothing to rebuild
        return value
    compact = "".join(value.split()).upper()
    if not compact:
        return ""
    m = _POSTCODE.match(compact)
    if not m:
        raise InvalidValue("not a UK postcode")
    return f"{m[1]} {m[2]}"


def _compact_date(formats: tuple[str, ...]) -> Callable[[str], str]:
    # Hashed as YYYYMMDD: the ISO hyphens would be positional tokens every date shares.
    return lambda value: normalise_date(value, formats).replace("-", "")


def _swap_tolerant(date: str) -> str:
    """``YYYYMMDD`` followed by month and day in ascending order, so a day/month swap keeps those four.

    >>> _swap_tolerant("20110311"), _swap_tolerant("20111103"), _swap_tolerant("")
    ('201103110311', '201111030311', '')
    """
    if not date:
        return ""
    month, day = date[4:6], date[6:8]
    return date + min(month, day) + max(month, day)


def _birth_date(formats: tuple[str, ...]) -> Callable[[str], str]:
    def birth_date(value: str) -> str:
        # _swap_tolerant of the compact date, built from the ISO text in one step (a call per distinct date).
        iso = normalise_date(value, formats)
        if not iso:
            return ""
        month, day = iso[5:7], iso[8:10]
        return iso[:4] + month + day + min(month, day) + max(month, day)

    return birth_date


def hashed_form(kind: str, date_formats: tuple[str, ...]) -> Callable[[str], str]:
    """The normaliser giving the form a node hashes for an identifier kind (``FieldKind`` value).

    The same as the per-kind normalisers, except that dates are compacted to ``YYYYMMDD``, and
    ``birth_date`` appends the month and day once more, the smaller first (``MMDD`` or ``DDMM``): hashed
    as positional unigrams, a date and its day/month swap then agree on those four positions. One
    definition for the node's encoder and for the attack harness, which must hash exactly alike.

    >>> hashed_form("date", ("%d/%m/%Y",))("03/02/2011"), hashed_form("name", ())(" O'Brien ")
    ('20110203', 'obrien')
    >>> hashed_form("birth_date", ("%d/%m/%Y",))("03/02/2011"), hashed_form("birth_date", ("%d/%m/%Y",))("02/03/2011")
    ('201102030203', '201103020203')

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "date":
        return _compact_date(date_formats)
    if kind == "birth_date":
        return _birth_date(date_formats)
    plain: dict[str, Callable[[str], str]] = {
        "name": normalise_name,
        "given_name": normalise_given_name,
        "sex": normalise_sex,
        "postcode": normalise_postcode,
        "text": normalise_text,
    }
    if kind not in plain:
        raise ValueError(f"no normaliser for identifier kind {kind!r}")
    return plain[kind]
