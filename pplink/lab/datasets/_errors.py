"""The UK-style generator's error model: how a clerk's keyboard and a family's life change a record.

Independent of ``pplink.lab.synth``'s error model on purpose (different nickname table, typo
kinds, rates and date habits), so that linkage defaults are not tuned to the errors of the data
that shaped them. Every function takes a :class:`random.Random` and a clean value and returns the
recorded value.
"""

from __future__ import annotations

import random

__all__ = [
    "ErrorRates",
    "KNOWN_AS",
    "record_date",
    "record_name",
    "record_postcode",
    "record_sex",
    "swap_day_month",
    "typo",
]

#: Known-as forms, formal name first. Kept apart from ``pplink.lab.synth``'s table on purpose.
KNOWN_AS: dict[str, tuple[str, ...]] = {
    "Alexander": ("Alex", "Xander"),
    "Andrew": ("Andy",),
    "Anthony": ("Tony", "Ant"),
    "Benjamin": ("Ben",),
    "Bethany": ("Beth",),
    "Callum": ("Cal",),
    "Charlotte": ("Charlie", "Lottie"),
    "Christopher": ("Chris", "Kit"),
    "Daniel": ("Dan", "Danny"),
    "David": ("Dave", "Davey"),
    "Elizabeth": ("Liz", "Eliza", "Betty"),
    "Ellie": ("Elle",),
    "Gemma": ("Gem",),
    "Jacob": ("Jake",),
    "Jessica": ("Jess",),
    "Jonathan": ("Jon", "Jonny"),
    "Joseph": ("Joe", "Joey"),
    "Joshua": ("Josh",),
    "Katherine": ("Kate", "Katie", "Kath"),
    "Kimberley": ("Kim",),
    "Lewis": ("Lew",),
    "Margaret": ("Maggie", "Peggy"),
    "Matthew": ("Matt",),
    "Michael": ("Mike", "Mikey"),
    "Nathan": ("Nate",),
    "Nicholas": ("Nick", "Nicky"),
    "Olivia": ("Liv",),
    "Rebecca": ("Becky", "Becca"),
    "Richard": ("Rich", "Dick"),
    "Robert": ("Rob", "Bob", "Robbie"),
    "Samuel": ("Sam",),
    "Samantha": ("Sam", "Sammy"),
    "Stephen": ("Steve",),
    "Thomas": ("Tom", "Tommy"),
    "Victoria": ("Vicky", "Tori"),
    "William": ("Will", "Bill", "Billy"),
}

#: Keys near each other on a UK keyboard: a slip hits a neighbour.
_NEIGHBOURS = {
    row[i]: row[max(0, i - 1) : i] + row[i + 1 : i + 2]
    for row in ("qwertyuiop", "asdfghjkl", "zxcvbnm")
    for i in range(len(row))
}
#: Sounds written one way by one clerk and another way by the next.
_PHONETIC = (("ph", "f"), ("ck", "k"), ("y", "ie"), ("ie", "y"), ("ll", "l"), ("nn", "n"), ("ey", "y"),
             ("ou", "ow"), ("ai", "ay"), ("z", "s"), ("c", "k"), ("th", "t"))


class ErrorRates:
    """Per-field error probabilities of one agency (a plain value object).

    Attributes:
        typo: a keyboard slip (neighbour key, doubled, dropped or swapped letters) in a name.
        phonetic: a name spelt as it sounds.
        known_as: a given name recorded in its known-as form.
        surname_change: a surname changed (marriage, double-barrelling, a step-parent's name).
        blank: a field left empty.
        day_month: a date of birth with day and month swapped (when both are at most 12).
        date_typo: one digit of a date of birth mistyped.
        moved: the postcode is a different address (a move the other agency has not seen).
        postcode_typo: one character of the inward code mistyped.
        sex_wrong: sex recorded as the other value.
    """

    __slots__ = ("blank", "date_typo", "day_month", "known_as", "moved", "phonetic", "postcode_typo", "sex_wrong",
                 "surname_change", "typo")

    def __init__(self, scale: float = 1.0) -> None:
        """Rates of a typical agency, multiplied by ``scale``."""
        self.typo = 0.04 * scale
        self.phonetic = 0.015 * scale
        self.known_as = 0.07 * scale
        self.surname_change = 0.03 * scale
        self.blank = 0.02 * scale
        self.day_month = 0.02 * scale
        self.date_typo = 0.02 * scale
        self.moved = 0.07 * scale
        self.postcode_typo = 0.015 * scale
        self.sex_wrong = 0.004 * scale


def typo(rng: random.Random, value: str) -> str:
    """One keyboard slip in ``value``: a neighbouring key, a doubled, dropped or swapped letter.

    >>> typo(random.Random(3), "Smith") != "Smith"
    True
    """
    if len(value) < 3:
        return value
    i = rng.randrange(1, len(value))
    kind = rng.randrange(4)
    if kind == 0:
        lower = value[i].lower()
        near = _NEIGHBOURS.get(lower)
        if not near:
            return value[:i] + value[i + 1 :]
        return value[:i] + rng.choice(near) + value[i + 1 :]
    if kind == 1:
        return value[:i] + value[i] + value[i:]
    if kind == 2:
        return value[:i] + value[i + 1 :]
    if i == len(value) - 1:
        i -= 1
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def _phonetic(rng: random.Random, value: str) -> str:
    lower = value.lower()
    options = [(a, b) for a, b in _PHONETIC if a in lower[1:]]
    if not options:
        return value
    a, b = rng.choice(options)
    at = lower.index(a, 1)
    out = value[:at] + b + value[at + len(a) :]
    return out[:1].upper() + out[1:]


def record_name(
    rng: random.Random, value: str, rates: ErrorRates, *, given: bool, other_surnames: tuple[str, ...]
) -> str:
    """How one agency records a given name or surname.

    Args:
        rng: the random source.
        value: the true name.
        rates: the agency's error rates.
        given: a given name (known-as forms apply) rather than a surname (changes apply).
        other_surnames: surnames a changed surname may take (a parent's, a partner's).

    Returns:
        The recorded name, possibly ``""``.
    """
    if rng.random() < rates.blank:
        return ""
    if given and value in KNOWN_AS and rng.random() < rates.known_as * 3:
        value = rng.choice(KNOWN_AS[value])
    if not given and other_surnames and rng.random() < rates.surname_change:
        other = rng.choice(other_surnames)
        value = rng.choice((other, f"{value}-{other}", f"{other} {value}"))
    if rng.random() < rates.phonetic:
        value = _phonetic(rng, value)
    if rng.random() < rates.typo:
        value = typo(rng, value)
    style = rng.random()
    if style < 0.2:
        return value.upper()
    if style < 0.25:
        return f" {value.lower()} "
    return value


def swap_day_month(year: int, month: int, day: int) -> tuple[int, int, int]:
    """The date with day and month swapped, when that is still a date; else unchanged.

    >>> swap_day_month(2010, 3, 11), swap_day_month(2010, 3, 25)
    ((2010, 11, 3), (2010, 3, 25))
    """
    return (year, day, month) if day <= 12 else (year, month, day)


def record_date(rng: random.Random, year: int, month: int, day: int, rates: ErrorRates, iso_share: float) -> str:
    """How one agency records a date of birth: ISO or ``dd/mm/yyyy``, with its errors.

    Args:
        rng: the random source.
        year: true year.
        month: true month.
        day: true day.
        rates: the agency's error rates.
        iso_share: the share of this agency's records written ``yyyy-mm-dd`` (else ``dd/mm/yyyy``).

    Returns:
        The recorded date, possibly ``""``; always a real calendar date when not empty.
    """
    if rng.random() < rates.blank:
        return ""
    if rng.random() < rates.day_month:
        year, month, day = swap_day_month(year, month, day)
    if rng.random() < rates.date_typo:
        which = rng.randrange(3)
        if which == 0:
            year += rng.choice((-1, 1, -10))
            year = year - 2 if year > 2024 else year  # a date in the future would be rejected, not linked
        elif which == 1 and day >= 10:
            day = min(28, (day // 10) * 10 + rng.randrange(10)) or 1
        else:
            day = rng.choice([d for d in range(max(1, day - 3), min(28, day + 3) + 1) if d != day] or [day])
    if rng.random() < iso_share:
        return f"{year:04d}-{month:02d}-{day:02d}"
    sep_day = f"{day:02d}" if rng.random() < 0.8 else str(day)
    return f"{sep_day}/{month:02d}/{year:04d}"


def record_sex(rng: random.Random, value: str, rates: ErrorRates) -> str:
    """How one agency records sex (``m``/``f``): M, Male, F, Female, U or blank, rarely wrong."""
    if rng.random() < rates.blank * 1.5:
        return rng.choice(("", "U"))
    if rng.random() < rates.sex_wrong:
        value = "f" if value == "m" else "m"
    return rng.choice(("M", "Male", "male")) if value == "m" else rng.choice(("F", "Female", "female"))


def record_postcode(rng: random.Random, value: str, rates: ErrorRates) -> str:
    """How one agency records a postcode: spacing and case vary, the inward code may be mistyped."""
    if rng.random() < rates.blank * 1.5:
        return ""
    outward, inward = value.split()
    if rng.random() < rates.postcode_typo:
        at = rng.randrange(1, 3)
        inward = inward[:at] + rng.choice("ABDEFGHJLNPQRSTUWXYZ") + inward[at + 1 :]
    style = rng.random()
    if style < 0.15:
        return f"{outward}{inward}"
    if style < 0.25:
        return f"{outward} {inward}".lower()
    return f"{outward} {inward}"
