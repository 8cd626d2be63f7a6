"""Synthetic multi-agency records of synthetic families, with the truth kept apart for evaluation.

:func:`generate_synth` builds a population of families (siblings share surname and postcode, about
3% of siblings are twins) and, for each agency, the extract that agency would hold: each person is on
an agency's books with an agency-specific probability, at most once, under an agency-local record id,
with identifiers written in that agency's habits (date format, sex labels, case, postcode spacing)
and with realistic errors (typos, nicknames, surname changes, day/month swaps, house moves, blanks).
Every agency also holds release attributes (``area``, ``deprivation_quintile``, ``age_band``) and two
numeric features; the label owner holds an ``outcome``. One latent risk per person drives the
features at every agency and the outcome, so a model over all agencies beats any single agency's;
the outcome also leans on deprivation, a realistic source of bias.

:func:`write_synth` writes ``<agency>.csv`` per agency and ``truth.csv`` (``agency,record_id,person``).
The same arguments give byte-identical files.

Example:
    >>> data = generate_synth(200, ["social_care", "health"], seed=7)
    >>> data.tables["health"].columns[:7]
    ('record_id', 'given_name', 'surname', 'date_of_birth', 'sex', 'postcode', 'opt_out')
    >>> "outcome" in data.tables["social_care"].columns, "outcome" in data.tables["health"].columns
    (True, False)
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from pplink.atomic import atomic_file
from pplink.errors import ConfigError
from pplink.lab.synth._agency import IDENTIFIER_COLUMNS, OUTCOME_COLUMN, RELEASE_COLUMNS, build_extract
from pplink.lab.synth._corruption import NICKNAMES
from pplink.lab.synth._population import AGE_BANDS, AREAS, LOCALES, REFERENCE_DATE, Population, build_population
from pplink.lab.synth._profiles import BASE_RATES, PROFILES, AgencyProfile, CorruptionRates, agency_profile

__all__ = [
    "AGE_BANDS",
    "AREAS",
    "AgencyProfile",
    "AgencyTable",
    "BASE_RATES",
    "CorruptionRates",
    "DEFAULT_AGENCIES",
    "IDENTIFIER_COLUMNS",
    "LOCALES",
    "MAX_PEOPLE",
    "NICKNAMES",
    "OUTCOME_COLUMN",
    "PROFILES",
    "Population",
    "REFERENCE_DATE",
    "RELEASE_COLUMNS",
    "SynthData",
    "TRUTH_COLUMNS",
    "agency_profile",
    "generate_synth",
    "write_synth",
]

#: The four agencies of the pilot.
DEFAULT_AGENCIES: tuple[str, ...] = ("social_care", "school", "health", "police")
#: Header of ``truth.csv``.
TRUTH_COLUMNS: tuple[str, ...] = ("agency", "record_id", "person")
#: Refuse populations larger than this (memory grows with it; 10M people need tens of GB).
MAX_PEOPLE = 5_000_000

# Agency names become file names (`<agency>.csv`, `<agency>.entities.csv`), so keep them plain.
_AGENCY_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_RESERVED = frozenset({"truth"})


@dataclass(frozen=True, eq=False)
class AgencyTable:
    """One agency's file, in memory.

    Attributes:
        agency: agency name.
        columns: header, in file order.
        rows: one tuple of strings per record, in file order.
        persons: person number of each row: the truth, kept apart from ``rows``.
    """

    agency: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    persons: np.ndarray

    def column(self, name: str) -> list[str]:
        """The values of column ``name``, in row order.

        Raises:
            KeyError: no such column.
        """
        try:
            index = self.columns.index(name)
        except ValueError:
            raise KeyError(name) from None
        return [row[index] for row in self.rows]


@dataclass(frozen=True, eq=False)
class SynthData:
    """Everything :func:`generate_synth` made.

    Attributes:
        seed: the seed.
        people: population size.
        label_owner: the agency holding the outcome.
        tables: one table per agency, in the order given.
        population: the people behind the records (true identities, latent risk, outcome).
    """

    seed: int
    people: int
    label_owner: str
    tables: Mapping[str, AgencyTable]
    population: Population

    def person_label(self, person: int) -> str:
        """The pseudonymous person id written in ``truth.csv`` (``P0000042``)."""
        return f"P{person:0{max(7, len(str(self.people - 1)))}d}"

    def truth_rows(self) -> Iterator[tuple[str, str, str]]:
        """``(agency, record_id, person)`` for every record of every agency, in file order."""
        width = max(7, len(str(self.people - 1)))
        for agency, table in self.tables.items():
            for row, person in zip(table.rows, table.persons.tolist(), strict=True):
                yield agency, row[0], f"P{person:0{width}d}"

    def truth(self) -> dict[tuple[str, str], str]:
        """The truth as ``{(agency, record_id): person}``, the shape :mod:`pplink.lab.linkage_eval` takes."""
        return {(agency, record_id): person for agency, record_id, person in self.truth_rows()}


def _check_arguments(
    people: int, agencies: Sequence[str], seed: int, label_owner: str, opt_out_rate: float, corruption: float
) -> None:
    if isinstance(people, bool) or not isinstance(people, int) or not 1 <= people <= MAX_PEOPLE:
        raise ConfigError(f"people must be a whole number from 1 to {MAX_PEOPLE}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed must be a whole number of 0 or more")
    if isinstance(agencies, str) or not agencies:
        raise ConfigError("agencies must be a non-empty list of agency names")
    seen: set[str] = set()
    for position, agency in enumerate(agencies, start=1):
        if not isinstance(agency, str) or not _AGENCY_NAME.fullmatch(agency) or agency in _RESERVED:
            raise ConfigError(
                f"agency name {position} is not allowed: use 1-40 lower-case letters, digits or _, "
                "starting with a letter, and not 'truth'"
            )
        if agency in seen:
            raise ConfigError(f"agency {agency!r} is listed twice")
        seen.add(agency)
    if label_owner not in seen:
        raise ConfigError(f"label owner {label_owner!r} is not among the agencies")
    if not 0.0 <= opt_out_rate <= 1.0:
        raise ConfigError("opt_out_rate must lie in 0..1")
    if not 0.0 <= corruption <= 10.0:
        raise ConfigError("corruption must lie in 0..10 (1 is the default level, 0 no errors)")


def generate_synth(
    people: int,
    agencies: Sequence[str] = DEFAULT_AGENCIES,
    seed: int = 0,
    label_owner: str = "social_care",
    *,
    opt_out_rate: float = 0.02,
    corruption: float = 1.0,
    rates: CorruptionRates = BASE_RATES,
) -> SynthData:
    """Generate synthetic agency extracts of one synthetic population.

    Args:
        people: population size (1 .. :data:`MAX_PEOPLE`); agencies hold a share of it each.
        agencies: agency names (lower-case, digits, ``_``); the four pilot agencies have their own
            profiles (:data:`PROFILES`), others a generic one.
        seed: seed; the same arguments give the same data, a different seed different data.
        label_owner: the agency that holds the ``outcome`` column.
        opt_out_rate: share of records marked ``opt_out=Y``.
        corruption: multiplier on every error rate (0: identifiers exactly as true, in each
            agency's format).
        rates: the error rates at ``corruption=1`` for an agency of average quality.

    Returns:
        The tables per agency, with the truth alongside.

    Raises:
        ConfigError: an argument is out of range, an agency name is malformed or repeated, or the
            label owner is not one of the agencies.
    """
    _check_arguments(people, agencies, seed, label_owner, opt_out_rate, corruption)
    population = build_population(people, seed)
    scaled = rates.scaled(corruption)
    tables: dict[str, AgencyTable] = {}
    for agency in agencies:
        extract = build_extract(
            population,
            agency,
            agency_profile(agency),
            seed=seed,
            rates=scaled,
            opt_out_rate=opt_out_rate,
            with_outcome=agency == label_owner,
        )
        rows = list(zip(*extract.values, strict=True)) if extract.persons.size else []
        tables[agency] = AgencyTable(agency=agency, columns=extract.columns, rows=rows, persons=extract.persons)
    return SynthData(
        seed=seed,
        people=people,
        label_owner=label_owner,
        tables=MappingProxyType(tables),
        population=population,
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[str]] | list[tuple[str, ...]]) -> None:
    with atomic_file(path, text=True) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_synth(data: SynthData, out_dir: Path) -> list[Path]:
    """Write ``<agency>.csv`` for every agency and ``truth.csv`` into ``out_dir`` (created if needed).

    Args:
        data: what :func:`generate_synth` returned.
        out_dir: output folder; existing files of the same names are replaced.

    Returns:
        The paths written: the agencies' files in order, then ``truth.csv``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for agency, table in data.tables.items():
        path = out_dir / f"{agency}.csv"
        _write_csv(path, table.columns, table.rows)
        paths.append(path)
    truth = out_dir / "truth.csv"
    _write_csv(truth, TRUTH_COLUMNS, data.truth_rows())
    paths.append(truth)
    return paths
