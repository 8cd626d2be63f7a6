"""UK-style linkage data, independent of ``pplink synth``: people or households over several agencies.

Names come from Faker's en_GB tables only (surnames by Faker's own frequency weights, given names
with a Zipf-like weight by table position), postcodes from Faker's en_GB postcode generator, and
errors from :mod:`pplink.lab.datasets._errors` (known-as names, keyboard slips, phonetic spellings,
surname changes, day/month swaps, digit slips, moves the other agency has not seen, blanks, dates in
``yyyy-mm-dd`` or ``dd/mm/yyyy``, case and spacing habits).

With ``households=False`` everyone lives alone (the UK-style set). With ``households=True`` people
come in households: one or two adults and one to four children who share the surname and postcode,
siblings born one to five years apart, and about 3% of children twins (1.5% of births; same date of birth,
same surname, same postcode: a twin's only difference is the given name and perhaps the sex). A household
moves as a whole. Either way an agency holds a person with its own probability and, rarely, twice
(a within-agency duplicate with its own errors).

Seeded and deterministic: the same arguments give the same dataset.

Example:
    >>> data = generate_uk_style(300, seed=1)
    >>> data.agencies, data.columns[:3]
    (('social_care', 'school', 'health', 'police'), ('given_name', 'surname', 'date_of_birth'))
    >>> generate_uk_style(300, seed=1) == data
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pplink.lab.datasets import AgencyRecords, LinkageDataset
from pplink.lab.datasets._errors import (
    ErrorRates,
    record_date,
    record_name,
    record_postcode,
    record_sex,
)

__all__ = ["COLUMNS", "DEFAULT_AGENCIES", "generate_uk_style"]

#: Identifier columns, in row order (the default agreement's).
COLUMNS: tuple[str, ...] = ("given_name", "surname", "date_of_birth", "sex", "postcode")
#: Agencies, their coverage (chance of holding a person), error scale and share of ISO dates.
DEFAULT_AGENCIES: tuple[tuple[str, float, float, float], ...] = (
    ("social_care", 0.75, 1.0, 1.0),
    ("school", 0.65, 0.8, 0.0),
    ("health", 0.6, 0.7, 0.5),
    ("police", 0.45, 1.5, 0.3),
)
_MAX_PEOPLE = 2_000_000


@dataclass(frozen=True)
class _Person:
    id: str
    given: str
    surname: str
    birth: tuple[int, int, int]
    sex: str
    household: int
    other_surnames: tuple[str, ...]


class _Names:
    """Faker en_GB name and postcode tables behind one seeded random source."""

    def __init__(self, rng: random.Random, seed: int) -> None:
        from faker import Faker
        from faker.providers.person.en_GB import Provider

        self.rng = rng
        self.male = tuple(dict.fromkeys(Provider.first_names_male))
        self.female = tuple(dict.fromkeys(Provider.first_names_female))
        self.given_weights = [1.0 / (rank + 10) ** 0.8 for rank in range(max(len(self.male), len(self.female)))]
        surnames = Provider.last_names
        self.surnames = tuple(surnames)
        self.surname_weights = [float(w) for w in surnames.values()]
        self.faker = Faker("en_GB")
        self.faker.seed_instance(seed)

    def given(self, sex: str) -> str:
        pool = self.male if sex == "m" else self.female
        return self.rng.choices(pool, weights=self.given_weights[: len(pool)])[0]

    def surname(self) -> str:
        return self.rng.choices(self.surnames, weights=self.surname_weights)[0]

    def postcode(self) -> str:
        return self.faker.postcode()


def _birth(rng: random.Random, year: int) -> tuple[int, int, int]:
    return year, rng.randint(1, 12), rng.randint(1, 28)


def _household(rng: random.Random, names: _Names, number: int, first_id: int) -> list[_Person]:
    surname = names.surname()
    partner = names.surname() if rng.random() < 0.35 else surname
    people: list[_Person] = []
    adults = 1 if rng.random() < 0.3 else 2
    for k in range(adults):
        sex = ("f", "m")[k] if adults == 2 else rng.choice("fm")
        year = rng.randint(1960, 1998)
        people.append(_Person("", names.given(sex), surname if k == 0 else partner, _birth(rng, year), sex, number,
                              (partner,) if partner != surname else ()))
    children = rng.choices((1, 2, 3, 4), weights=(0.35, 0.38, 0.18, 0.09))[0]
    year = rng.randint(2003, 2022)
    while children > 0:
        birth = _birth(rng, year)
        twins = 2 if rng.random() < 0.015 else 1
        for _ in range(twins):
            sex = rng.choice("fm")
            given = names.given(sex)
            while any(p.given == given and p.birth == birth for p in people):
                given = names.given(sex)
            people.append(_Person("", given, surname, birth, sex, number, (partner,) if partner != surname else ()))
        children -= twins
        year = min(2024, year + rng.randint(1, 5))
    return [
        _Person(f"P{first_id + i:07d}", p.given, p.surname, p.birth, p.sex, p.household, p.other_surnames)
        for i, p in enumerate(people)
    ]


def _alone(rng: random.Random, names: _Names, number: int) -> _Person:
    sex = rng.choice("fm")
    others = (names.surname(),)
    return _Person(f"P{number:07d}", names.given(sex), names.surname(), _birth(rng, rng.randint(1935, 2022)), sex,
                   number, others)


def _tags(people: Sequence[_Person], households: bool) -> dict[str, frozenset[str]]:
    tags: dict[str, frozenset[str]] = {}
    by_household: dict[int, list[_Person]] = {}
    for p in people:
        by_household.setdefault(p.household, []).append(p)
    for members in by_household.values():
        for p in members:
            found = set()
            if households and any(q is not p and q.birth[0] >= 2003 and p.birth[0] >= 2003 for q in members):
                found.add("sibling")
            if any(q is not p and q.birth == p.birth for q in members):
                found.add("twin")
            tags[p.id] = frozenset(found)
    return tags


def generate_uk_style(
    units: int,
    *,
    households: bool = False,
    seed: int = 0,
    agencies: Sequence[tuple[str, float, float, float]] = DEFAULT_AGENCIES,
    duplicate_rate: float = 0.01,
) -> LinkageDataset:
    """Generate UK-style records of several agencies with the truth.

    Args:
        units: people (``households=False``) or households (``households=True``).
        households: whether people live in households with siblings and twins.
        seed: the random seed; the same arguments give the same dataset.
        agencies: ``(name, coverage, error scale, share of ISO dates)`` per agency.
        duplicate_rate: chance that an agency holds a person twice (a within-agency duplicate).

    Returns:
        The dataset, named ``households`` or ``uk_style``.

    Raises:
        ValueError: ``units`` below 1 or too large, fewer than two agencies, or a rate outside [0, 1].
    """
    if not 1 <= units <= _MAX_PEOPLE:
        raise ValueError(f"units must be in 1..{_MAX_PEOPLE}")
    if len(agencies) < 2:
        raise ValueError("at least two agencies are needed")
    if not 0.0 <= duplicate_rate <= 1.0 or any(not 0.0 <= a[1] <= 1.0 for a in agencies):
        raise ValueError("rates must be in [0, 1]")
    rng = random.Random(seed)
    names = _Names(rng, seed)
    people: list[_Person] = []
    postcodes: list[str] = []
    for number in range(units):
        if households:
            people.extend(_household(rng, names, number, len(people)))
        else:
            people.append(_alone(rng, names, number))
        postcodes.append(names.postcode())
    extracts: dict[str, AgencyRecords] = {}
    duplicated: set[str] = set()
    for a, (agency, coverage, scale, iso_share) in enumerate(agencies):
        arng = random.Random(f"{seed}:{a}:{agency}")
        rates = ErrorRates(scale)
        # A move the agency has not (or has) seen: one postcode per household at this agency.
        moved = {h: names.postcode() for h in range(units) if arng.random() < rates.moved}
        held: list[tuple[tuple[str, ...], str]] = []
        for p in people:
            if arng.random() >= coverage:
                continue
            copies = 2 if arng.random() < duplicate_rate else 1
            if copies == 2:
                duplicated.add(p.id)
            postcode = moved.get(p.household, postcodes[p.household])
            for _ in range(copies):
                row = (
                    record_name(arng, p.given, rates, given=True, other_surnames=()),
                    record_name(arng, p.surname, rates, given=False, other_surnames=p.other_surnames),
                    record_date(arng, *p.birth, rates, iso_share),
                    record_sex(arng, p.sex, rates),
                    record_postcode(arng, postcode, rates),
                )
                held.append((row, p.id))
        arng.shuffle(held)
        prefix = agency[:2].upper()
        extracts[agency] = AgencyRecords(
            record_ids=tuple(f"{prefix}{i:07d}" for i in range(len(held))),
            rows=tuple(row for row, _ in held),
            persons=tuple(person for _, person in held),
        )
    tags = _tags(people, households)
    for pid in duplicated:
        tags[pid] = tags[pid] | {"duplicate"}
    return LinkageDataset(
        name="households" if households else "uk_style",
        columns=COLUMNS,
        agencies=tuple(a[0] for a in agencies),
        extracts=extracts,
        tags=tags,
        households={p.id: p.household for p in people},
    )
