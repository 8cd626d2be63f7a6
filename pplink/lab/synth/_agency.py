"""One agency's extract: who is on its books, and their identifiers as that agency wrote them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from pplink.lab.synth._corruption import (
    apply_ascii,
    apply_blanks,
    apply_case,
    apply_nicknames,
    apply_typos,
    apply_whitespace,
    choose,
)
from pplink.lab.synth._population import (
    AREAS,
    REFERENCE_DATE,
    Population,
    age_bands,
    date_parts,
    make_dates,
    make_postcodes,
    sample_by_locale,
)
from pplink.lab.synth._profiles import AgencyProfile, CorruptionRates, FeatureSpec

#: Identifier columns of every agency file, in order.
IDENTIFIER_COLUMNS: tuple[str, ...] = (
    "record_id",
    "given_name",
    "surname",
    "date_of_birth",
    "sex",
    "postcode",
    "opt_out",
)
#: Release attributes declared in the agreement and sent to the coordinator.
RELEASE_COLUMNS: tuple[str, ...] = ("area", "deprivation_quintile", "age_band")
#: The label owner's outcome column.
OUTCOME_COLUMN = "outcome"

_AREA_CODES = np.array([a.code for a in AREAS], dtype=object)
_FEATURE_NOISE_SD = 0.5
_PERCENT_NOISE_SD = 3.0
_MOVE_WITHIN_AREA = 0.7


@dataclass(frozen=True, eq=False)
class AgencyExtract:
    """Columns of one agency file plus the true person of each row.

    Attributes:
        columns: column names, in file order.
        values: one list of strings per column, rows in file order.
        persons: person number of each row (the truth, never written into the agency's file).
    """

    columns: tuple[str, ...]
    values: tuple[list[str], ...]
    persons: np.ndarray


def agency_rng(seed: int, agency: str) -> np.random.Generator:
    """A generator for one agency that depends on the seed and the agency's name only.

    Adding or reordering agencies therefore leaves every other agency's rows unchanged.
    """
    return np.random.default_rng([seed, zlib.crc32(agency.encode("utf-8"))])


def _presence(pop: Population, profile: AgencyProfile, rng: np.random.Generator) -> np.ndarray:
    adult = pop.age >= 18
    base = np.where(adult, profile.presence_adult, profile.presence_child)
    base = np.where((pop.age >= profile.min_age) & (pop.age <= profile.max_age), base, 0.0)
    clipped = np.clip(base, 1e-9, 1 - 1e-9)
    logit = np.log(clipped / (1 - clipped)) + profile.risk_tilt * pop.risk
    p = np.where(base > 0, 1.0 / (1.0 + np.exp(-logit)), 0.0)
    return np.flatnonzero(rng.random(pop.size) < p)


def _int_strings(values: np.ndarray) -> np.ndarray:
    # A lookup table of str(i) is much faster than formatting a million small integers one by one.
    table = np.array([str(i) for i in range(int(values.max(initial=0)) + 1)], dtype=object)
    return table[values]


def _date_strings(dates: np.ndarray, dmy: np.ndarray) -> np.ndarray:
    # Format each distinct date once (there are far fewer dates than records).
    unique, inverse = np.unique(dates, return_inverse=True)
    iso = np.array(np.datetime_as_string(unique, unit="D").tolist(), dtype=object)
    day_first = np.array([f"{s[8:10]}/{s[5:7]}/{s[0:4]}" for s in iso], dtype=object)
    return np.where(dmy, day_first[inverse], iso[inverse])


def _feature_values(
    spec: FeatureSpec, risk: np.ndarray, deprivation: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    n = risk.shape[0]
    if spec.kind == "percent":
        raw = spec.intercept + spec.risk * risk + spec.deprivation * deprivation
        raw = raw + rng.normal(0.0, _PERCENT_NOISE_SD, size=n)
        tenths = np.rint(np.clip(raw, 0.0, 100.0) * 10).astype(np.int64)
        table = np.array([f"{t / 10:.1f}" for t in range(1001)], dtype=object)
        return table[tenths]
    log_rate = spec.intercept + spec.risk * risk + spec.deprivation * deprivation
    log_rate = log_rate + rng.normal(0.0, _FEATURE_NOISE_SD, size=n)
    return _int_strings(rng.poisson(np.exp(np.minimum(log_rate, 6.0))))


def _corrupt_surnames(
    pop: Population, persons: np.ndarray, surname: np.ndarray, rates: CorruptionRates, rng: np.random.Generator
) -> None:
    adult = pop.age[persons] >= 18
    changed = choose(rng, persons.size, rates.surname_change, adult)
    surname[changed] = sample_by_locale(rng, pop.pools.surname, pop.locale[persons[changed]])
    hyphen = choose(rng, persons.size, rates.hyphenation)
    other = sample_by_locale(rng, pop.pools.surname, pop.locale[persons[hyphen]])
    first = (rng.random(hyphen.size) < 0.5).tolist()
    surname[hyphen] = [
        f"{s}-{o}" if f else f"{o}-{s}" for s, o, f in zip(surname[hyphen], other, first, strict=True)
    ]


def _corrupt_dates(dob: np.ndarray, rates: CorruptionRates, rng: np.random.Generator) -> None:
    true_dob = dob.copy()
    year, month, day = date_parts(dob)
    swap = choose(rng, dob.shape[0], rates.dob_swap, (day <= 12) & (day != month))
    dob[swap] = make_dates(year[swap], day[swap], month[swap])
    off_year = choose(rng, dob.shape[0], rates.dob_year)
    step = np.where(rng.random(off_year.size) < 0.5, -1, 1)
    dob[off_year] = make_dates(year[off_year] + step, month[off_year], day[off_year])
    off_day = choose(rng, dob.shape[0], rates.dob_day)
    dob[off_day] += np.where(rng.random(off_day.size) < 0.5, -1, 1).astype("timedelta64[D]")
    # An error never moves a birth past the reference date: encoders rightly refuse future dates.
    future = dob > REFERENCE_DATE
    dob[future] = true_dob[future]


def _postcodes(
    pop: Population,
    persons: np.ndarray,
    profile: AgencyProfile,
    rates: CorruptionRates,
    rng: np.random.Generator,
) -> np.ndarray:
    postcode = pop.postcode[persons].copy()
    moved = choose(rng, persons.size, rates.moved)
    area = pop.area[persons[moved]]
    area = np.where(rng.random(moved.size) < _MOVE_WITHIN_AREA, area, rng.integers(0, len(AREAS), size=moved.size))
    postcode[moved] = make_postcodes(rng, area)
    nospace = choose(rng, persons.size, profile.postcode_nospace)
    postcode[nospace] = [p.replace(" ", "") for p in postcode[nospace]]
    lower = choose(rng, persons.size, profile.postcode_lower)
    postcode[lower] = [p.lower() for p in postcode[lower]]
    apply_whitespace(rng, postcode, rates.whitespace)
    return postcode


def build_extract(
    pop: Population,
    agency: str,
    profile: AgencyProfile,
    *,
    seed: int,
    rates: CorruptionRates,
    opt_out_rate: float,
    with_outcome: bool,
) -> AgencyExtract:
    """Build one agency's extract.

    Args:
        pop: the population.
        agency: agency name (seeds the agency's own generator).
        profile: how the agency sees people and writes identifiers.
        seed: generation seed.
        rates: error rates before the profile's quality factor.
        opt_out_rate: probability that a record is marked opted out (``Y``).
        with_outcome: add the outcome column (the label owner).

    Returns:
        The extract, rows shuffled so that row order says nothing about people.
    """
    rng = agency_rng(seed, agency)
    rates = rates.scaled(profile.quality)
    persons = _presence(pop, profile, rng)
    persons = persons[rng.permutation(persons.size)]
    n = persons.size

    given = pop.given_name[persons].copy()
    surname = pop.surname[persons].copy()
    _corrupt_surnames(pop, persons, surname, rates, rng)
    apply_nicknames(rng, given, rates.nickname)
    apply_typos(rng, given, rates.typo_given)
    apply_typos(rng, surname, rates.typo_surname)
    if profile.ascii_only:
        apply_ascii(given)
        apply_ascii(surname)
    if profile.surname_upper:
        surname[:] = [s.upper() for s in surname]
    for names in (given, surname):
        apply_case(rng, names, rates.case)
        apply_whitespace(rng, names, rates.whitespace)

    dob = pop.date_of_birth[persons].copy()
    _corrupt_dates(dob, rates, rng)
    dob_text = _date_strings(dob, rng.random(n) < profile.dmy_share)

    female, male = profile.sex_labels
    sex = np.where(pop.female[persons], female, male).astype(object)
    apply_case(rng, sex, rates.case)

    postcode = _postcodes(pop, persons, profile, rates, rng)

    apply_blanks(rng, given, rates.missing_given)
    apply_blanks(rng, surname, rates.missing_surname)
    apply_blanks(rng, dob_text, rates.missing_dob)
    apply_blanks(rng, sex, rates.missing_sex)
    apply_blanks(rng, postcode, rates.missing_postcode)

    opted_out = rng.random(n) < opt_out_rate
    blank_no = rng.random(n) < profile.opt_out_blank
    opt_out = np.where(opted_out, "Y", np.where(blank_no, "", "N")).astype(object)

    first_id = int(rng.integers(1, 100_000))
    width = max(6, len(str(first_id + n)))
    record_id = [f"{profile.prefix}{i:0{width}d}" for i in range(first_id, first_id + n)]

    columns = [*IDENTIFIER_COLUMNS, *RELEASE_COLUMNS]
    values = [
        record_id,
        given.tolist(),
        surname.tolist(),
        dob_text.tolist(),
        sex.tolist(),
        postcode.tolist(),
        opt_out.tolist(),
        _AREA_CODES[pop.area[persons]].tolist(),
        _int_strings(pop.deprivation_quintile[persons]).tolist(),
        age_bands(pop.age[persons]).tolist(),
    ]
    risk, deprivation = pop.risk[persons], pop.deprivation[persons]
    for spec in profile.features:
        columns.append(spec.name)
        values.append(_feature_values(spec, risk, deprivation, rng).tolist())
    if with_outcome:
        columns.append(OUTCOME_COLUMN)
        values.append(_int_strings(pop.outcome[persons]).tolist())
    return AgencyExtract(columns=tuple(columns), values=tuple(values), persons=persons)
