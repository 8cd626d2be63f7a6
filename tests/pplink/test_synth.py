"""Behaviour of `pplink.lab.synth`: determinism, truth bookkeeping, formats, corruption, families, signal."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pplink.errors import ConfigError
from pplink.lab.synth import (
    AREAS,
    DEFAULT_AGENCIES,
    IDENTIFIER_COLUMNS,
    NICKNAMES,
    RELEASE_COLUMNS,
    SynthData,
    agency_profile,
    generate_synth,
    write_synth,
)
from pplink.normalise import normalise_date, normalise_name, normalise_postcode, normalise_sex

PEOPLE = 4000
SEED = 11


@pytest.fixture(scope="module")
def data() -> SynthData:
    return generate_synth(PEOPLE, DEFAULT_AGENCIES, seed=SEED)


@pytest.fixture(scope="module")
def clean() -> SynthData:
    """The same population with every error rate at zero."""
    return generate_synth(PEOPLE, DEFAULT_AGENCIES, seed=SEED, corruption=0.0)


def _fold(value: str) -> str:
    flat = unicodedata.normalize("NFKD", value.translate(str.maketrans({"ł": "l", "Ł": "L", "ı": "i"})))
    return re.sub(r"[^a-z]", "", "".join(ch for ch in flat if not unicodedata.combining(ch)).lower())


def _canonical(table_columns: tuple[str, ...], row: tuple[str, ...]) -> tuple[str, ...]:
    """Identifiers as a careful linker would normalise them (case, spacing, format, diacritics)."""
    r = dict(zip(table_columns, row, strict=True))
    dob = r["date_of_birth"].strip()
    if "/" in dob:
        day, month, year = dob.split("/")
        dob = f"{year}-{month}-{day}"
    return (
        _fold(r["given_name"]),
        _fold(r["surname"]),
        dob,
        r["sex"].strip()[:1].upper(),
        "".join(r["postcode"].split()).upper(),
    )


def _pairs_by_person(data: SynthData) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Canonical identifier tuples of the same person at two different agencies."""
    seen: dict[int, list[tuple[str, ...]]] = {}
    for table in data.tables.values():
        for row, person in zip(table.rows, table.persons.tolist(), strict=True):
            seen.setdefault(person, []).append(_canonical(table.columns, row))
    return [(a[i], a[j]) for a in seen.values() for i in range(len(a)) for j in range(i + 1, len(a))]


def test_same_seed_gives_byte_identical_files_and_other_seeds_differ(tmp_path: Path) -> None:
    """Invariant: output is a function of the arguments only; a new seed gives new data."""
    first = write_synth(generate_synth(300, DEFAULT_AGENCIES, seed=5), tmp_path / "a")
    second = write_synth(generate_synth(300, DEFAULT_AGENCIES, seed=5), tmp_path / "b")
    third = write_synth(generate_synth(300, DEFAULT_AGENCIES, seed=6), tmp_path / "c")
    assert [p.name for p in first] == [*(f"{a}.csv" for a in DEFAULT_AGENCIES), "truth.csv"]
    for a, b, c in zip(first, second, third, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
    assert not list((tmp_path / "a").glob(".*")), "no partial files are left behind"


def test_an_agency_does_not_depend_on_which_other_agencies_are_generated() -> None:
    """Invariant: each agency has its own random stream, so adding agencies leaves it unchanged."""
    alone = generate_synth(500, ["health"], seed=3, label_owner="health").tables["health"]
    together = generate_synth(500, ["police", "health"], seed=3, label_owner="police").tables["health"]
    assert alone.columns[:-1] == together.columns  # only the outcome column differs
    assert [row[:-1] for row in alone.rows] == together.rows
    assert alone.persons.tolist() == together.persons.tolist()


def test_truth_covers_every_record_exactly_once(data: SynthData, tmp_path: Path) -> None:
    """Invariant: truth.csv has one row per agency record; nobody is twice at one agency."""
    paths = write_synth(data, tmp_path)
    truth_rows = list(csv.reader(paths[-1].read_text(encoding="utf-8").splitlines()))
    assert truth_rows[0] == ["agency", "record_id", "person"]
    truth_keys = Counter((agency, record_id) for agency, record_id, _ in truth_rows[1:])
    file_keys: Counter[tuple[str, str]] = Counter()
    for agency, path in zip(data.tables, paths, strict=False):
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == len(data.tables[agency].rows)
        file_keys.update((agency, row["record_id"]) for row in rows)
    assert truth_keys == file_keys
    assert set(truth_keys.values()) == {1}
    for table in data.tables.values():
        assert len(set(table.persons.tolist())) == len(table.rows), "a person appears twice at one agency"
        assert all(row[0] for row in table.rows), "record_id is never empty"
    # The person id reveals nothing of the agency's own ids, and truth maps to the right person.
    truth = data.truth()
    table = data.tables["health"]
    assert truth[("health", table.rows[0][0])] == data.person_label(int(table.persons[0]))


def test_columns_are_identifiers_then_release_attributes_then_features(data: SynthData) -> None:
    """Invariant: the exact identifier columns, the declared release attributes, agency features."""
    expected = {
        "social_care": ("referrals", "prior_assessments", "outcome"),
        "school": ("attendance_pct", "exclusions"),
        "health": ("ae_visits", "missed_appointments"),
        "police": ("callouts", "dv_incidents"),
    }
    for agency, table in data.tables.items():
        assert table.columns == (*IDENTIFIER_COLUMNS, *RELEASE_COLUMNS, *expected[agency])
    other = generate_synth(50, ["housing", "health"], seed=1, label_owner="housing").tables["housing"]
    assert other.columns[-3:] == ("housing_contacts", "housing_flags", "outcome")


def test_every_value_passes_the_encoders_normalisers(data: SynthData) -> None:
    """Invariant: synthetic identifiers are messy but valid: pplink.normalise accepts every non-empty one."""
    for table in data.tables.values():
        for name in ("given_name", "surname"):
            assert all(normalise_name(v) for v in table.column(name) if v.strip())
        assert all(normalise_date(v, ("%Y-%m-%d", "%d/%m/%Y")) for v in table.column("date_of_birth") if v)
        assert all(normalise_sex(v) for v in table.column("sex") if v)
        assert all(normalise_postcode(v) for v in table.column("postcode") if v.strip())


def test_formats_follow_each_agency(data: SynthData) -> None:
    """Invariant: school writes DD/MM/YYYY, health ISO; sex labels vary in case; postcodes in spacing."""
    school_dates = [v for v in data.tables["school"].column("date_of_birth") if v]
    assert all(re.fullmatch(r"\d\d/\d\d/\d{4}", v) for v in school_dates)
    health_dates = [v for v in data.tables["health"].column("date_of_birth") if v]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", v) for v in health_dates)
    sexes = {v for t in data.tables.values() for v in t.column("sex")}
    assert {v.casefold() for v in sexes} == {"", "m", "f", "male", "female"}
    assert len(sexes) > 6, "labels vary in case across agencies"
    postcodes = [v for t in data.tables.values() for v in t.column("postcode") if v]
    assert any(" " not in v for v in postcodes) and any(" " in v.strip() for v in postcodes)
    assert any(v != v.upper() for v in postcodes)


def test_release_attributes_are_valid_and_true(data: SynthData) -> None:
    """Invariant: area, deprivation quintile and age band come from the true person, within declared values."""
    codes = {a.code for a in AREAS}
    pop = data.population
    for table in data.tables.values():
        assert set(table.column("area")) <= codes
        assert set(table.column("deprivation_quintile")) <= {"1", "2", "3", "4", "5"}
        bands = table.column("age_band")
        ages = pop.age[table.persons]
        for band, age in zip(bands, ages.tolist(), strict=True):
            low, _, high = band.partition("-")
            assert int(low.rstrip("+")) <= age <= (int(high) if high else 200)
    school_ages = pop.age[data.tables["school"].persons]
    assert school_ages.min() >= 4 and school_ages.max() <= 17


def test_opt_out_share_is_as_configured(data: SynthData) -> None:
    """Invariant: about opt_out_rate of records say Y; the rest say N or leave it empty."""
    values = [v for t in data.tables.values() for v in t.column("opt_out")]
    assert set(values) == {"Y", "N", ""}
    assert abs(values.count("Y") / len(values) - 0.02) < 0.008
    high = generate_synth(1000, DEFAULT_AGENCIES, seed=2, opt_out_rate=0.25)
    values = [v for t in high.tables.values() for v in t.column("opt_out")]
    assert abs(values.count("Y") / len(values) - 0.25) < 0.03


def test_presence_follows_agency_probabilities(data: SynthData) -> None:
    """Invariant: each agency holds roughly its configured share of the people it serves."""
    pop = data.population
    for agency, table in data.tables.items():
        profile = agency_profile(agency)
        served = (pop.age >= profile.min_age) & (pop.age <= profile.max_age)
        base = np.where(pop.age >= 18, profile.presence_adult, profile.presence_child)[served].mean()
        share = len(table.rows) / served.sum()
        # Social care and police see families in difficulty more often, which lifts their share a bit.
        assert base - 0.03 < share < base + 0.08, agency


def test_without_corruption_the_same_person_has_equal_identifiers(clean: SynthData) -> None:
    """Invariant: corruption=0 leaves only formatting differences, which normalisation removes."""
    pairs = _pairs_by_person(clean)
    assert pairs and all(a == b for a, b in pairs)


def test_corruption_happens_at_modest_rates(data: SynthData) -> None:
    """Invariant: errors are real (not every pair agrees) but modest (most pairs still agree exactly)."""
    pairs = _pairs_by_person(data)
    agree = sum(a == b for a, b in pairs) / len(pairs)
    assert 0.6 < agree < 0.95
    for field, floor, ceiling in ((0, 0.02, 0.15), (1, 0.03, 0.15), (2, 0.01, 0.08), (4, 0.05, 0.2)):
        differ = sum(a[field] != b[field] for a, b in pairs) / len(pairs)
        assert floor < differ < ceiling, field


def test_every_kind_of_error_occurs(data: SynthData, clean: SynthData) -> None:
    """Invariant: typos, nicknames, hyphenation, day/month swaps, moves and blanks all appear."""
    nick = {n for names in NICKNAMES.values() for n in names}
    kinds: Counter[str] = Counter()
    for agency, table in data.tables.items():
        true_rows = dict(zip(clean.tables[agency].persons.tolist(), clean.tables[agency].rows, strict=True))
        for row, person in zip(table.rows, table.persons.tolist(), strict=True):
            true = _canonical(table.columns, true_rows[person])
            seen = _canonical(table.columns, row)
            given, surname, dob = row[1].strip(), row[2].strip(), seen[2]
            if given in nick and seen[0] != true[0]:
                kinds["nickname"] += 1
            elif seen[0] and seen[0] != true[0] and abs(len(seen[0]) - len(true[0])) <= 1:
                kinds["typo"] += 1
            if "-" in surname and "-" not in true_rows[person][2]:
                kinds["hyphenation"] += 1
            if dob and dob != true[2] and dob[:4] == true[2][:4] and dob[5:7] == true[2][8:10]:
                kinds["dob_swap"] += 1
            if seen[4] and seen[4] != true[4]:
                kinds["moved"] += 1
            kinds["blank"] += sum(1 for v in row[1:6] if not v)
            kinds["case"] += given.isupper() and len(given) > 1 and agency != "police"
            kinds["whitespace"] += row[1] != row[1].strip() or "  " in row[1]
    for kind in ("nickname", "typo", "hyphenation", "dob_swap", "moved", "blank", "case", "whitespace"):
        assert kinds[kind] > 5, kind


def test_families_share_surname_and_postcode(data: SynthData) -> None:
    """Invariant: children of one household share surname and postcode; twins exist."""
    pop = data.population
    child = pop.age < 18
    by_household: dict[int, list[int]] = {}
    for person in np.flatnonzero(child).tolist():
        by_household.setdefault(int(pop.household[person]), []).append(person)
    siblings = [members for members in by_household.values() if len(members) >= 2]
    assert len(siblings) > PEOPLE // 20
    for members in siblings:
        assert len({pop.surname[m] for m in members}) == 1
        assert len({pop.postcode[m] for m in members}) == 1
    twins = sum(len(members) - len({pop.date_of_birth[m] for m in members}) for members in siblings)
    assert twins > 0
    assert len(set(pop.surname.tolist())) > 300, "surnames are diverse"


def test_outcome_prevalence_and_its_lean_on_deprivation(data: SynthData) -> None:
    """Invariant: 10-20% positives at the label owner, more in the most deprived quintile."""
    table = data.tables["social_care"]
    outcome = np.array(table.column("outcome"), dtype=int)
    quintile = np.array(table.column("deprivation_quintile"), dtype=int)
    assert 0.10 <= outcome.mean() <= 0.20
    assert outcome[quintile == 1].mean() > outcome[quintile == 5].mean()


def test_every_agency_carries_signal_about_the_latent_risk(data: SynthData) -> None:
    """Invariant: each agency's features track the risk behind the outcome, so pooling them helps."""
    pop = data.population
    for table in data.tables.values():
        risk = pop.risk[table.persons]
        features = [c for c in table.columns[len(IDENTIFIER_COLUMNS) + len(RELEASE_COLUMNS):] if c != "outcome"]
        for feature in features:
            values = np.array(table.column(feature), dtype=float)
            assert abs(np.corrcoef(values, risk)[0, 1]) > 0.1, feature


@pytest.mark.slow
def test_a_model_over_all_agencies_beats_the_label_owner_alone() -> None:
    """Invariant: features at other agencies add information about the outcome (vertical FL pays)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    data = generate_synth(30_000, DEFAULT_AGENCIES, seed=21)
    owner = data.tables["social_care"]
    index = {p: i for i, p in enumerate(owner.persons.tolist())}
    columns = [np.array(owner.column(c), dtype=float) for c in ("referrals", "prior_assessments")]
    for agency in ("school", "health", "police"):
        table = data.tables[agency]
        rows = [index.get(p) for p in table.persons.tolist()]
        for feature in table.columns[-2:]:
            values = np.zeros(len(owner.rows))
            for at, value in zip(rows, table.column(feature), strict=True):
                if at is not None:
                    values[at] = float(value)
            columns.append(values)
    x = np.log1p(np.column_stack(columns))
    y = np.array(owner.column("outcome"), dtype=int)

    def auc(features: np.ndarray) -> float:
        p = cross_val_predict(LogisticRegression(max_iter=500), features, y, cv=5, method="predict_proba")[:, 1]
        return float(roc_auc_score(y, p))

    assert auc(x) > auc(x[:, :2]) + 0.01


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"people": 0}, "people"),
        ({"people": -5}, "people"),
        ({"people": True}, "people"),
        ({"agencies": ["health", "health"]}, "twice"),
        ({"agencies": ["health", ""]}, "agency name 2"),
        ({"agencies": ["Health Visitors"]}, "agency name 1"),
        ({"agencies": ["truth", "health"]}, "agency name 1"),
        ({"agencies": []}, "non-empty"),
        ({"agencies": "health"}, "non-empty"),
        ({"label_owner": "housing"}, "label owner"),
        ({"seed": -1}, "seed"),
        ({"opt_out_rate": 1.5}, "opt_out_rate"),
        ({"corruption": -1.0}, "corruption"),
    ],
)
def test_nonsense_arguments_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    """Invariant: bad arguments raise ConfigError naming the argument, before any work."""
    arguments: dict[str, object] = {"people": 10, "agencies": ["social_care", "health"], "seed": 0}
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=fragment):
        generate_synth(**arguments)  # type: ignore[arg-type]
