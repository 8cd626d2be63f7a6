"""What the attacks run on: synthetic plaintext, the attacker's public knowledge, and encodings of it.

The attacker is the coordinator: it holds every agency's encodings and the agreement (so it knows
the fields, n-gram settings, bits per token and hardening), but not the linkage secret, so it
cannot encode a guess and compare. What it may also hold:

* a public frequency list per field (a census of names, dates of birth, postcodes): here the
  synthetic population's own value counts, the best list an attacker could have;
* for the graph attack, a plaintext database that overlaps the encoded records, which it encodes
  with the agreement's schema under a key of its own (it knows the schema, not the secret).

:func:`synth_corpus` builds the plaintext side from ``pplink synth`` data: every agency's records
pooled, as the coordinator sees them, for a seeded share of the people; the other people's records
are the attacker's non-overlapping material. Identifier values are normalised as a node would
normalise them. :func:`encode_corpus` encodes any subset of the five identifier columns with any
identifier schema, so weak and hardened encodings of the same people can be compared.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pplink.agreement import FieldKind, Hardening, IdentifierField, IdentifierSchema
from pplink.agreement_template import default_agreement_toml
from pplink.encoding import ClkEncoder
from pplink.errors import ConfigError
from pplink.normalise import InvalidValue, hashed_form

__all__ = [
    "COLUMNS",
    "PlaintextCorpus",
    "attack_settings",
    "attacker_database",
    "default_identifiers",
    "encode_corpus",
    "synth_corpus",
]

#: The identifier columns of ``pplink synth`` data, in order, with their kinds.
COLUMNS: tuple[tuple[str, FieldKind], ...] = (
    ("given_name", FieldKind.GIVEN_NAME),
    ("surname", FieldKind.NAME),
    ("date_of_birth", FieldKind.BIRTH_DATE),
    ("sex", FieldKind.SEX),
    ("postcode", FieldKind.POSTCODE),
)
_SYNTH_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y")


def _normalise(kind: FieldKind, value: str) -> str:
    # Exactly the form a node hashes. An invalid value counts as missing: a node would reject the
    # row, which changes nothing for an attack on the others.
    try:
        return hashed_form(kind, _SYNTH_DATE_FORMATS)(value)
    except InvalidValue:
        return ""


@dataclass(frozen=True, eq=False)
class PlaintextCorpus:
    """Normalised identifier values of the encoded records, kept apart from what the attacker sees.

    Attributes:
        columns: identifier column names, as in :data:`COLUMNS`.
        records: normalised values of every encoded record (one tuple per record, in ``columns``
            order): the truth the attacks are scored against, never an attack input.
        persons: person number of each encoded record.
        agencies: agency index of each encoded record (the coordinator knows who sent what).
        agency_names: agency names by index.
        outside: normalised values of records of people whose records are not encoded.
        outside_persons: person number of each of those records.
        public: the attacker's public frequency list per column: ``(value, count)`` pairs, most
            frequent first, from the whole synthetic population's true values.
    """

    columns: tuple[str, ...]
    records: list[tuple[str, ...]]
    persons: np.ndarray
    agencies: np.ndarray
    agency_names: tuple[str, ...]
    outside: list[tuple[str, ...]]
    outside_persons: np.ndarray
    public: Mapping[str, list[tuple[str, int]]]

    def column(self, name: str) -> list[str]:
        """Normalised values of column ``name`` for every encoded record."""
        at = self.columns.index(name)
        return [row[at] for row in self.records]


def synth_corpus(people: int, seed: int = 0, *, encoded_share: float = 0.5) -> PlaintextCorpus:
    """Build a plaintext corpus from ``pplink synth`` data.

    Args:
        people: synthetic population size; the encoded records are every agency's records of a
            seeded ``encoded_share`` of the people (the four agencies hold about 1.7 records per
            person: 24,000 people give about 20,000 encoded records at the default share).
        seed: seed for the synthetic data and the split.
        encoded_share: share of people whose records are encoded; the rest are the attacker's
            non-overlapping material.

    Returns:
        The corpus. Opted-out records are left out, as a node would leave them out.

    Raises:
        ConfigError: ``encoded_share`` outside (0, 1], or synth arguments out of range.
    """
    from pplink.lab.synth import generate_synth

    if not 0.0 < encoded_share <= 1.0:
        raise ConfigError("encoded_share must lie in (0, 1]")
    data = generate_synth(people, seed=seed)
    rng = np.random.default_rng([seed, 7_351])
    encoded_person = rng.random(people) < encoded_share
    names = [name for name, _ in COLUMNS]
    kinds = [kind for _, kind in COLUMNS]
    records: list[tuple[str, ...]] = []
    outside: list[tuple[str, ...]] = []
    outside_persons: list[int] = []
    persons: list[int] = []
    agencies: list[int] = []
    agency_names = tuple(data.tables)
    for code, table in enumerate(data.tables.values()):
        at = [table.columns.index(name) for name in names]
        opt = table.columns.index("opt_out")
        for row, person in zip(table.rows, table.persons.tolist(), strict=True):
            if row[opt].strip().upper() == "Y":
                continue
            values = tuple(_normalise(kind, row[i]) for kind, i in zip(kinds, at, strict=True))
            if encoded_person[person]:
                records.append(values)
                persons.append(person)
                agencies.append(code)
            else:
                outside.append(values)
                outside_persons.append(person)
    pop = data.population
    dob = np.datetime_as_string(pop.date_of_birth, unit="D")
    true_values = {
        "given_name": [_normalise(FieldKind.GIVEN_NAME, v) for v in pop.given_name.tolist()],
        "surname": [_normalise(FieldKind.NAME, v) for v in pop.surname.tolist()],
        "date_of_birth": [_normalise(FieldKind.BIRTH_DATE, d) for d in dob.tolist()],
        "sex": ["f" if f else "m" for f in pop.female.tolist()],
        "postcode": [_normalise(FieldKind.POSTCODE, v) for v in pop.postcode.tolist()],
    }
    public = {name: Counter(v for v in values if v).most_common() for name, values in true_values.items()}
    return PlaintextCorpus(
        columns=tuple(names),
        records=records,
        persons=np.asarray(persons, dtype=np.int64),
        agencies=np.asarray(agencies, dtype=np.int64),
        agency_names=agency_names,
        outside=outside,
        outside_persons=np.asarray(outside_persons, dtype=np.int64),
        public=public,
    )


def attacker_database(corpus: PlaintextCorpus, overlap: float,
                      seed: int = 0) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Draw the plaintext database of a graph attacker.

    It has as many records as are encoded, of which a share ``overlap`` are copies of encoded
    records and the rest records of people never encoded.

    Args:
        corpus: the encoded records and the outside records to draw from.
        overlap: the share of the database that are copies of encoded records, in [0, 1].
        seed: seeds the draw; the same seed gives the same database.

    Returns:
        The records (normalised values, in :data:`COLUMNS` order) and each one's person.

    Raises:
        ConfigError: ``overlap`` outside [0, 1], or too few outside records for the rest.
    """
    if not 0.0 <= overlap <= 1.0:
        raise ConfigError("overlap must lie in 0..1")
    rng = np.random.default_rng([seed, 4_241])
    n = len(corpus.records)
    inside = round(overlap * n)
    if n - inside > len(corpus.outside):
        raise ConfigError("too few records outside the encoded set for this overlap: use a smaller encoded_share")
    pick_in = np.sort(rng.choice(n, size=inside, replace=False))
    pick_out = np.sort(rng.choice(len(corpus.outside), size=n - inside, replace=False))
    records = [corpus.records[i] for i in pick_in.tolist()] + [corpus.outside[i] for i in pick_out.tolist()]
    persons = np.concatenate([corpus.persons[pick_in], corpus.outside_persons[pick_out]])
    return records, persons


def encode_corpus(records: Sequence[tuple[str, ...]], identifiers: IdentifierSchema, key: bytes,
                  columns: Sequence[str] = tuple(name for name, _ in COLUMNS)) -> np.ndarray:
    """Encode normalised records with ``identifiers`` (any subset of ``columns``) under ``key``.

    Raises:
        ConfigError: the schema names a column the records do not have.
    """
    index = {name: i for i, name in enumerate(columns)}
    missing = [f.column for f in identifiers.fields if f.column not in index]
    if missing:
        raise ConfigError(f"the corpus has no column {', '.join(missing)}")
    at = [index[f.column] for f in identifiers.fields]
    rows = [tuple(record[i] for i in at) for record in records]
    return ClkEncoder(identifiers, key).encode(rows)


def default_identifiers() -> IdentifierSchema:
    """The identifier section of the agreement ``pplink agreement init`` writes (the defaults)."""
    names = ["agency_a", "agency_b", "coordinator", "auditor"]
    text = default_agreement_toml(names[:2], {name: "" for name in names})
    return IdentifierSchema.model_validate(tomllib.loads(text)["identifiers"])


def attack_settings(defaults: IdentifierSchema | None = None) -> dict[str, IdentifierSchema]:
    """Named encodings of the synthetic identifiers, from deliberately weak to the defaults.

    * ``abf-given`` / ``abf-surname``: an attribute-level Bloom filter of one name alone (1024 bits,
      20 bits per bigram): the textbook weak encoding.
    * ``clk-heavy-surname``: a record-level CLK whose surname outweighs everything else (60 bits
      per bigram, 2 for the other fields).
    * ``clk-plain``: the default fields and weights with every hardening off.
    * ``default``: the defaults as ``pplink agreement init`` writes them.

    Args:
        defaults: the default identifier section (read from the template when ``None``).
    """
    defaults = defaults or default_identifiers()

    def abf(column: str) -> IdentifierSchema:
        field = IdentifierField(column=column, kind=FieldKind.NAME, bits_per_token=20, required=False)
        return IdentifierSchema(fields=(field,), filter_bits=1024, min_fields=0)

    heavy = tuple(
        f.model_copy(update={"bits_per_token": 60 if f.column == "surname" else 2}) for f in defaults.fields
    )
    return {
        "abf-given": abf("given_name"),
        "abf-surname": abf("surname"),
        "clk-heavy-surname": defaults.model_copy(update={"fields": heavy, "hardening": Hardening()}),
        "clk-plain": defaults.model_copy(update={"hardening": Hardening()}),
        "default": defaults,
    }
