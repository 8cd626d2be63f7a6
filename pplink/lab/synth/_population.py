"""Synthetic households and people: identities, ages, areas, deprivation and latent risk.

Everything here is one row per person, vectorised with numpy. Names come from pools drawn once per
seed from Faker (several locales, so that names are as varied as in an English local authority);
postcodes are built from real outward codes of each area with random inward codes, so a postcode
says which area a family lives in, as it does in real data.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

#: Ages and age bands are computed at this fixed date, never "today", so output does not drift.
REFERENCE_DATE = np.datetime64("2025-04-01", "D")

#: Age bands used as a release attribute (children in school phases, then all adults).
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("0-4", 0, 4),
    ("5-10", 5, 10),
    ("11-15", 11, 15),
    ("16-17", 16, 17),
    ("18+", 18, 200),
)


@dataclass(frozen=True)
class Area:
    """A local-authority-like area.

    Attributes:
        code: an ONS-style local-authority code (the release attribute ``area``).
        districts: postcode outward codes inside the area.
        weight: relative population.
        quintiles: probabilities of deprivation quintiles 1 (most deprived) .. 5.
    """

    code: str
    districts: tuple[str, ...]
    weight: float
    quintiles: tuple[float, float, float, float, float]


#: Eight areas modelled on North-East and North-West unitary authorities; deprivation profiles
#: differ on purpose so that area and deprivation are correlated, as they are in England.
AREAS: tuple[Area, ...] = (
    Area("E06000001", ("TS24", "TS25", "TS26", "TS27"), 0.07, (0.42, 0.22, 0.16, 0.12, 0.08)),
    Area("E06000002", ("TS1", "TS3", "TS4", "TS5", "TS7", "TS8"), 0.11, (0.48, 0.20, 0.13, 0.11, 0.08)),
    Area("E06000003", ("TS10", "TS11", "TS12", "TS13", "TS14"), 0.10, (0.30, 0.24, 0.20, 0.15, 0.11)),
    Area("E06000004", ("TS16", "TS17", "TS18", "TS19", "TS20", "TS21"), 0.15, (0.24, 0.18, 0.18, 0.20, 0.20)),
    Area("E06000005", ("DL1", "DL2", "DL3"), 0.08, (0.22, 0.20, 0.20, 0.19, 0.19)),
    Area("E06000006", ("WA7", "WA8"), 0.09, (0.32, 0.24, 0.18, 0.15, 0.11)),
    Area("E06000007", ("WA1", "WA2", "WA3", "WA4", "WA5"), 0.16, (0.12, 0.16, 0.20, 0.24, 0.28)),
    Area("E06000008", ("BB1", "BB2", "BB3"), 0.11, (0.40, 0.20, 0.16, 0.13, 0.11)),
)

#: Faker locales and the share of households whose family name comes from each. Arabic-script and
#: Bengali-script locales are left out: English agencies record names in Latin script, and en_PK
#: gives transliterated South Asian Muslim names.
LOCALES: tuple[tuple[str, float], ...] = (
    ("en_GB", 0.745),
    ("en_IE", 0.03),
    ("en_IN", 0.05),
    ("en_PK", 0.05),
    ("pl_PL", 0.04),
    ("ro_RO", 0.02),
    ("yo_NG", 0.02),
    ("ig_NG", 0.015),
    ("tw_GH", 0.015),
    ("tr_TR", 0.01),
    ("lt_LT", 0.005),
)

# Letters allowed in the last two characters of a UK postcode (no C, I, K, M, O, V).
_UNIT_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_UNITS = np.array([a + b for a in _UNIT_LETTERS for b in _UNIT_LETTERS], dtype=object)
_DISTRICTS = np.array([d for area in AREAS for d in area.districts], dtype=object)
_DISTRICT_COUNT = np.array([len(area.districts) for area in AREAS])
_DISTRICT_START = np.concatenate([[0], np.cumsum(_DISTRICT_COUNT)[:-1]])

_FIRST_NAME_POOL = 2000
_SURNAME_POOL = 3000

# Latent-risk model: a household effect (shared by siblings, as family circumstances are), an
# individual effect and a modest deprivation effect; the outcome is logistic in the risk.
_HOUSEHOLD_SD = 0.6
_INDIVIDUAL_SD = 0.8
_DEPRIVATION_EFFECT = 0.35
_OUTCOME_INTERCEPT = -2.8
_OUTCOME_SLOPE = 1.3


@dataclass(frozen=True, eq=False)
class NamePools:
    """Name pools per locale (index as in :data:`LOCALES`); repeats keep Faker's frequencies."""

    female: tuple[np.ndarray, ...]
    male: tuple[np.ndarray, ...]
    surname: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class Population:
    """Synthetic people, one array element per person (the person number is the index).

    Attributes:
        household: household number of each person.
        locale: index into :data:`LOCALES` of the family name's origin.
        given_name: true given name.
        surname: true surname.
        female: True for female.
        date_of_birth: true date of birth (``datetime64[D]``).
        age: whole years at :data:`REFERENCE_DATE`.
        area: index into :data:`AREAS`.
        deprivation_quintile: 1 (most deprived) .. 5.
        postcode: canonical postcode of the home (``"TS24 7AB"``).
        risk: latent risk that drives every agency's features and the outcome.
        deprivation: centred deprivation (+1 most deprived .. -1 least).
        outcome: 0/1 outcome drawn from a logistic model of ``risk``.
        pools: the name pools the identities were drawn from (used again for surname changes).
    """

    household: np.ndarray
    locale: np.ndarray
    given_name: np.ndarray
    surname: np.ndarray
    female: np.ndarray
    date_of_birth: np.ndarray
    age: np.ndarray
    area: np.ndarray
    deprivation_quintile: np.ndarray
    postcode: np.ndarray
    risk: np.ndarray
    deprivation: np.ndarray
    outcome: np.ndarray
    pools: NamePools

    @property
    def size(self) -> int:
        """Number of people."""
        return int(self.household.shape[0])


def age_bands(ages: np.ndarray) -> np.ndarray:
    """Age band label (:data:`AGE_BANDS`) of each age in whole years.

    >>> age_bands(np.array([0, 4, 5, 15, 16, 17, 18, 90])).tolist()
    ['0-4', '0-4', '5-10', '11-15', '16-17', '16-17', '18+', '18+']
    """
    labels = np.array([band for band, _, _ in AGE_BANDS], dtype=object)
    upper = np.array([high for _, _, high in AGE_BANDS])
    return labels[np.searchsorted(upper, ages)]


@functools.cache
def _faker(locale: str):  # noqa: ANN202 - Faker's generator type is a proxy without public typing
    # Import lazily: Faker is only needed to build name pools, and its import is slow.
    from faker import Faker

    return Faker(locale)


def draw_name_pools(seed: int) -> NamePools:
    """Draw first-name and surname pools from Faker, once per seed.

    Args:
        seed: the generation seed; the same seed gives the same pools.

    Returns:
        The pools, one array per locale and kind.
    """
    female, male, surname = [], [], []
    for i, (locale, _) in enumerate(LOCALES):
        fake = _faker(locale)
        fake.seed_instance(seed * 1009 + i)
        female.append(np.array([fake.first_name_female() for _ in range(_FIRST_NAME_POOL)], dtype=object))
        male.append(np.array([fake.first_name_male() for _ in range(_FIRST_NAME_POOL)], dtype=object))
        surname.append(np.array([fake.last_name() for _ in range(_SURNAME_POOL)], dtype=object))
    return NamePools(female=tuple(female), male=tuple(male), surname=tuple(surname))


def sample_by_locale(rng: np.random.Generator, pools: tuple[np.ndarray, ...], locale: np.ndarray) -> np.ndarray:
    """Draw one name per element from the pool of that element's locale.

    Args:
        rng: random generator.
        pools: one pool per locale index.
        locale: locale index per element.

    Returns:
        Object array of names, same length as ``locale``.
    """
    out = np.empty(locale.shape[0], dtype=object)
    for index, pool in enumerate(pools):
        where = np.flatnonzero(locale == index)
        if where.size:
            out[where] = pool[rng.integers(0, pool.shape[0], size=where.size)]
    return out


def make_postcodes(rng: np.random.Generator, area: np.ndarray) -> np.ndarray:
    """Draw canonical postcodes (``"TS24 7AB"``) inside each element's area.

    Args:
        rng: random generator.
        area: area index per element.

    Returns:
        Object array of postcodes.
    """
    n = area.shape[0]
    district = _DISTRICT_START[area] + (rng.random(n) * _DISTRICT_COUNT[area]).astype(np.int64)
    sector = rng.integers(1, 10, size=n)
    unit = rng.integers(0, _UNITS.shape[0], size=n)
    return np.array(
        [f"{d} {s}{u}" for d, s, u in zip(_DISTRICTS[district], sector.tolist(), _UNITS[unit], strict=True)],
        dtype=object,
    )


def date_parts(dates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``datetime64[D]`` values into year, month (1..12) and day (1..31) arrays.

    >>> y, m, d = date_parts(np.array(["2012-02-29"], dtype="datetime64[D]"))
    >>> int(y[0]), int(m[0]), int(d[0])
    (2012, 2, 29)
    """
    months = dates.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


def make_dates(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Build ``datetime64[D]`` values from parts, clamping the day to the month's length.

    >>> str(make_dates(np.array([2013]), np.array([2]), np.array([29]))[0])
    '2013-02-28'
    """
    first = ((year - 1970) * 12 + (month - 1)).astype("datetime64[M]")
    length = ((first + 1).astype("datetime64[D]") - first.astype("datetime64[D]")).astype(np.int64)
    return first.astype("datetime64[D]") + (np.minimum(day, length) - 1)


def _ages(dob: np.ndarray) -> np.ndarray:
    year, month, day = date_parts(dob)
    ref_year, ref_month, ref_day = (int(x[0]) for x in date_parts(np.array([REFERENCE_DATE])))
    before_birthday = (month > ref_month) | ((month == ref_month) & (day > ref_day))
    return (ref_year - year - before_birthday).astype(np.int64)


def build_population(people: int, seed: int) -> Population:
    """Generate ``people`` synthetic people in families.

    Households hold one or two adults and zero to four children; siblings share surname, postcode and
    area; a second adult keeps their own surname in about a third of couples. About 3% of siblings
    are twins (same date of birth), which makes hard near-duplicates real.

    Args:
        people: number of people, at least 1.
        seed: generation seed.

    Returns:
        The population.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    pools = draw_name_pools(seed)

    # Household composition: draw `people` households (always enough, each has >= 1 person), keep
    # as many as needed and truncate the last one.
    n_adults = np.where(rng.random(people) < 0.35, 1, 2)
    n_children = rng.choice(5, size=people, p=[0.30, 0.24, 0.25, 0.14, 0.07])
    size = n_adults + n_children
    households = int(np.searchsorted(np.cumsum(size), people)) + 1
    n_adults, n_children, size = n_adults[:households], n_children[:households], size[:households].copy()
    size[-1] -= int(size.sum()) - people
    household = np.repeat(np.arange(households), size)
    position = np.arange(people) - (np.cumsum(size) - size)[household]
    adult = position < n_adults[household]
    child = ~adult

    locale_weights = np.array([w for _, w in LOCALES])
    hh_locale = rng.choice(len(LOCALES), size=households, p=locale_weights / locale_weights.sum())
    area_weights = np.array([a.weight for a in AREAS])
    hh_area = rng.choice(len(AREAS), size=households, p=area_weights / area_weights.sum())
    quintile_cdf = np.cumsum(np.array([a.quintiles for a in AREAS]), axis=1)
    quintile_cdf /= quintile_cdf[:, -1:]
    hh_quintile = (rng.random(households)[:, None] > quintile_cdf[hh_area]).sum(axis=1) + 1
    hh_postcode = make_postcodes(rng, hh_area)
    hh_surname = sample_by_locale(rng, pools.surname, hh_locale)

    locale = hh_locale[household]
    surname = hh_surname[household]
    partner_own_name = np.flatnonzero((position == 1) & adult & (rng.random(people) < 0.3))
    surname[partner_own_name] = sample_by_locale(rng, pools.surname, locale[partner_own_name])

    has_children = n_children[household] > 0
    female = np.empty(people, dtype=bool)
    first_adult = adult & (position == 0)
    female[first_adult] = rng.random(int(first_adult.sum())) < np.where(has_children[first_adult], 0.8, 0.5)
    second_adult = adult & (position == 1)
    opposite = rng.random(int(second_adult.sum())) < 0.95
    partner_of = female[np.flatnonzero(second_adult) - 1]
    female[second_adult] = np.where(opposite, ~partner_of, partner_of)
    female[child] = rng.random(int(child.sum())) < 0.5

    # Second-generation families often give children English names.
    english = rng.random(people) < np.where(child, 0.25, 0.08)
    name_locale = np.where(english, 0, locale)
    given_name = np.empty(people, dtype=object)
    given_name[female] = sample_by_locale(rng, pools.female, name_locale[female])
    given_name[~female] = sample_by_locale(rng, pools.male, name_locale[~female])

    # Dates of birth: children 0..17; parents 18..42 years older than their eldest child.
    age_days = np.empty(people, dtype=np.int64)
    age_days[child] = rng.integers(0, 18 * 365, size=int(child.sum()))
    twin = np.flatnonzero(child & (position > n_adults[household]) & (rng.random(people) < 0.03))
    age_days[twin] = age_days[twin - 1]
    eldest = np.zeros(households, dtype=np.int64)
    np.maximum.at(eldest, household[child], age_days[child])
    first = np.flatnonzero(first_adult)
    parent_gap = rng.integers(18 * 366, 42 * 365, size=first.size)
    alone = rng.integers(18 * 366, 85 * 365, size=first.size)
    age_days[first] = np.where(has_children[first], eldest[household[first]] + parent_gap, alone)
    second = np.flatnonzero(second_adult)
    partner_gap = np.rint(rng.normal(0.0, 3 * 365.25, size=second.size)).astype(np.int64)
    # A partner is about as old as the first adult, adult, and at least 16 years older than the eldest child.
    floor = np.where(has_children[second], eldest[household[second]] + 16 * 366, 0)
    age_days[second] = np.maximum(age_days[second - 1] + partner_gap, np.maximum(floor, 18 * 366))
    date_of_birth = REFERENCE_DATE - age_days.astype("timedelta64[D]")

    deprivation_quintile = hh_quintile[household].astype(np.int64)
    deprivation = (3.0 - deprivation_quintile) / 2.0
    risk = (
        _DEPRIVATION_EFFECT * deprivation
        + rng.normal(0.0, _HOUSEHOLD_SD, size=households)[household]
        + rng.normal(0.0, _INDIVIDUAL_SD, size=people)
    )
    outcome_p = 1.0 / (1.0 + np.exp(-(_OUTCOME_INTERCEPT + _OUTCOME_SLOPE * risk)))
    outcome = (rng.random(people) < outcome_p).astype(np.int64)

    return Population(
        household=household,
        locale=locale,
        given_name=given_name,
        surname=surname,
        female=female,
        date_of_birth=date_of_birth,
        age=_ages(date_of_birth),
        area=hh_area[household],
        deprivation_quintile=deprivation_quintile,
        postcode=hh_postcode[household],
        risk=risk,
        deprivation=deprivation,
        outcome=outcome,
        pools=pools,
    )
