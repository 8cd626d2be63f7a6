"""String-level identifier errors: typos, nicknames, case, whitespace, diacritics, blanks.

Each function picks the affected elements with vectorised draws and changes them in place, so the
cost grows with the number of errors, not the number of records.
"""

from __future__ import annotations

import functools
import unicodedata

import numpy as np

#: Known-as forms recorded instead of the formal given name.
NICKNAMES: dict[str, tuple[str, ...]] = {
    "Abigail": ("Abbie", "Abby"),
    "Alexander": ("Alex", "Sandy"),
    "Alexandra": ("Alex", "Lexi"),
    "Andrew": ("Andy", "Drew"),
    "Anthony": ("Tony",),
    "Benjamin": ("Ben", "Benji"),
    "Catherine": ("Cathy", "Kate"),
    "Charles": ("Charlie", "Chas"),
    "Charlotte": ("Lottie", "Charlie"),
    "Christopher": ("Chris",),
    "Daniel": ("Dan", "Danny"),
    "David": ("Dave",),
    "Deborah": ("Debbie", "Debs"),
    "Edward": ("Ed", "Ted", "Eddie"),
    "Elizabeth": ("Liz", "Beth", "Lizzie"),
    "Frederick": ("Fred", "Freddie"),
    "Gareth": ("Gaz",),
    "Henry": ("Harry",),
    "Jacqueline": ("Jackie",),
    "James": ("Jim", "Jamie"),
    "Jennifer": ("Jen", "Jenny"),
    "Jonathan": ("Jon",),
    "Joseph": ("Joe",),
    "Joshua": ("Josh",),
    "Katherine": ("Kate", "Kathy"),
    "Kimberley": ("Kim",),
    "Margaret": ("Maggie", "Peggy"),
    "Matthew": ("Matt",),
    "Michael": ("Mike", "Mick"),
    "Mohammed": ("Mo",),
    "Muhammad": ("Mo",),
    "Nicholas": ("Nick",),
    "Oliver": ("Ollie",),
    "Patricia": ("Pat", "Trish"),
    "Peter": ("Pete",),
    "Rebecca": ("Becky", "Becca"),
    "Richard": ("Rich", "Rick"),
    "Robert": ("Bob", "Rob"),
    "Samantha": ("Sam",),
    "Samuel": ("Sam",),
    "Stephen": ("Steve",),
    "Susan": ("Sue",),
    "Thomas": ("Tom", "Tommy"),
    "Victoria": ("Vicky", "Tori"),
    "William": ("Bill", "Will", "Billy"),
    "Aleksander": ("Olek",),
    "Katarzyna": ("Kasia",),
    "Krzysztof": ("Krzyś",),
    "Małgorzata": ("Gosia",),
    "Oluwaseun": ("Seun",),
    "Oluwatobi": ("Tobi",),
}

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Letters that NFKD does not decompose but legacy ASCII systems still flatten.
_ASCII_EXTRA = str.maketrans({"Ł": "L", "ł": "l", "ı": "i", "ß": "ss", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d"})


def choose(rng: np.random.Generator, n: int, rate: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the elements hit by an event of probability ``rate`` (among ``eligible`` ones).

    Args:
        rng: random generator.
        n: number of elements.
        rate: probability per element.
        eligible: optional boolean mask; ineligible elements are never chosen.

    Returns:
        Sorted indices.
    """
    hit = rng.random(n) < rate
    if eligible is not None:
        hit &= eligible
    return np.flatnonzero(hit)


def typo(value: str, op: int, where: float, letter: str) -> str:
    """One keyboard error in ``value``.

    Args:
        value: the text.
        op: 0 substitution, 1 insertion, 2 deletion, 3 transposition of neighbours.
        where: position as a fraction of the length, in [0, 1).
        letter: a lower-case letter for substitution or insertion (matched to the case there).

    Returns:
        The text with the error; texts of fewer than two characters only get insertions.

    >>> typo("Smith", 0, 0.0, "x"), typo("Smith", 1, 0.99, "x"), typo("Smith", 2, 0.5, "x"), typo("Smith", 3, 0.2, "x")
    ('Xmith', 'Smitxh', 'Smth', 'Simth')
    """
    n = len(value)
    i = min(int(where * n), n - 1) if n else 0
    if n and value[i].isupper():
        letter = letter.upper()
    if op == 1 or n < 2:
        return value[:i] + letter + value[i:]
    if op == 0:
        if value[i].lower() == letter.lower():
            letter = _LETTERS[(_LETTERS.index(letter.lower()) + 1) % 26]
            letter = letter.upper() if value[i].isupper() else letter
        return value[:i] + letter + value[i + 1 :]
    if op == 2:
        return value[:i] + value[i + 1 :]
    i = min(i, n - 2)
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def apply_typos(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Put one typo into a share ``rate`` of the non-empty ``values`` (in place).

    Returns:
        Indices that were changed.
    """
    hit = choose(rng, values.shape[0], rate)
    ops = rng.integers(0, 4, size=hit.size).tolist()
    where = rng.random(hit.size).tolist()
    letters = rng.integers(0, 26, size=hit.size).tolist()
    values[hit] = [
        typo(v, op, w, _LETTERS[c]) if v else v
        for v, op, w, c in zip(values[hit], ops, where, letters, strict=True)
    ]
    return hit


def apply_nicknames(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Record a known-as form for a share ``rate`` of the given names that have one (in place).

    Returns:
        Indices that were changed.
    """
    has_nickname = np.fromiter((v in NICKNAMES for v in values), dtype=bool, count=values.shape[0])
    hit = choose(rng, values.shape[0], rate, has_nickname)
    pick = rng.random(hit.size).tolist()
    values[hit] = [
        NICKNAMES[v][int(p * len(NICKNAMES[v]))] for v, p in zip(values[hit], pick, strict=True)
    ]
    return hit


@functools.lru_cache(maxsize=65536)
def to_ascii(value: str) -> str:
    """Strip diacritics as a legacy ASCII-only system does.

    >>> to_ascii("Łuczyk"), to_ascii("Grațian"), to_ascii("Şekim")
    ('Luczyk', 'Gratian', 'Sekim')
    """
    flat = unicodedata.normalize("NFKD", value.translate(_ASCII_EXTRA))
    return "".join(ch for ch in flat if not unicodedata.combining(ch))


def apply_ascii(values: np.ndarray) -> None:
    """Strip diacritics from every element (in place)."""
    values[:] = [to_ascii(v) for v in values]


def apply_case(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Write a share ``rate`` of ``values`` all upper or all lower case (in place).

    Returns:
        Indices that were changed.
    """
    hit = choose(rng, values.shape[0], rate)
    upper = (rng.random(hit.size) < 0.5).tolist()
    values[hit] = [v.upper() if u else v.lower() for v, u in zip(values[hit], upper, strict=True)]
    return hit


def apply_whitespace(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Add a stray leading, trailing or doubled space to a share ``rate`` of the non-empty ``values``.

    Returns:
        Indices that were changed.
    """
    hit = choose(rng, values.shape[0], rate)
    kind = rng.integers(0, 3, size=hit.size).tolist()
    values[hit] = [_space(v, k) if v else v for v, k in zip(values[hit], kind, strict=True)]
    return hit


def _space(value: str, kind: int) -> str:
    if kind == 0:
        return " " + value
    if kind == 1:
        return value + " "
    return value.replace(" ", "  ", 1) if " " in value else value + "  "


def apply_blanks(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Empty a share ``rate`` of ``values`` (in place).

    Returns:
        Indices that were emptied.
    """
    hit = choose(rng, values.shape[0], rate)
    values[hit] = ""
    return hit
