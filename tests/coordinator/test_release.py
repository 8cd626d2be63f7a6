"""The release engine: exact query vectors, per-person sensitivity, budget refusal before noise, ledger first."""

from __future__ import annotations

import logging
import math
import random
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import coordinator.release.engine as release_module
import pplink.ledger_writer as ledger_writer_module
from coordinator.linkage.state import LinkageState
from coordinator.release.engine import release_confusion_counts, release_query, release_vector
from coordinator.release.queries import (
    MISSING,
    QueryVector,
    combination_keys,
    compute_query,
    derive_link_rates,
)
from pplink.accounting import BUDGET_SLACK, QueryKind, Sensitivity
from pplink.agreement import AgreementConfig, parse_agreement
from pplink.agreement_template import DEFAULT_AREAS, default_agreement_toml
from pplink.audit.verify import verify_ledger
from pplink.crypto import generate_signing_key, public_key_text
from pplink.errors import AgreementMismatchError, BudgetExceededError, LedgerError, ReleaseError, SignatureError
from pplink.ledger import Cell, ReleaseQuery, read_ledger
from pplink.queries import query_sensitivity

AGENCIES = ("social_care", "school", "health")
COLUMNS = ("area", "deprivation_quintile", "age_band", "age_years")
Person = dict[str, dict[str, str | None]]


def make_agreement(accounting: str = "pure", epsilon: float = 1.0, min_cell: int = 10,
                   agencies: tuple[str, ...] = AGENCIES) -> tuple[AgreementConfig, Ed25519PrivateKey]:
    """Default agreement plus a numeric attribute age_years (0..18 in 6 bins); fresh in-memory keys."""
    keys = {p: generate_signing_key() for p in (*agencies, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(agencies), {p: public_key_text(k) for p, k in keys.items()}))
    data["budget"] = {"epsilon": epsilon, "delta": 1e-6, "accounting": accounting}
    data["release"]["min_cell_size"] = min_cell
    data["release"]["attributes"].append({"column": "age_years", "lower": 0.0, "upper": 18.0, "bins": 6})
    return parse_agreement(data), keys["coordinator"]


def make_state(agreement: AgreementConfig, people: list[Person], parties: tuple[str, ...] = AGENCIES) -> LinkageState:
    """One cluster per person; a row at each agency the person maps, with that agency's attribute values."""
    cluster_of: dict[str, list[int]] = {p: [] for p in parties}
    attributes: dict[str, dict[str, list[str | None]]] = {p: {c: [] for c in COLUMNS} for p in parties}
    for i, person in enumerate(people):
        for party, attrs in person.items():
            cluster_of[party].append(i)
            for column in COLUMNS:
                attributes[party][column].append(attrs.get(column))
    return LinkageState(
        agreement_id=agreement.agreement_id, parties=parties,
        cluster_of={p: np.array(v, dtype=np.int64) for p, v in cluster_of.items()},
        pseudonyms=np.zeros((len(people), 16), dtype=np.uint8), attributes=attributes, threshold=0.8,
    )


def random_people(n: int, seed: int, parties: tuple[str, ...] = AGENCIES) -> list[Person]:
    """Seeded synthetic people: a random non-empty set of agencies, values sometimes missing per agency."""
    rng = random.Random(seed)
    people: list[Person] = []
    for _ in range(n):
        at = [p for p in parties if rng.random() < 0.5] or [rng.choice(parties)]
        area = rng.choice(DEFAULT_AREAS)
        quintile = str(rng.randint(1, 5))
        people.append({p: {"area": area if rng.random() < 0.85 else None,
                           "deprivation_quintile": quintile if rng.random() < 0.9 else None,
                           "age_years": f"{rng.uniform(-1, 19):.1f}"} for p in at})
    return people


def vector(agreement: AgreementConfig, state: LinkageState, **query) -> dict[tuple[str, ...], int]:  # type: ignore[no-untyped-def]
    q = ReleaseQuery.model_validate({**query, "parties": state.parties})
    v = compute_query(agreement, state, q)
    return dict(zip(v.keys, (int(c) for c in v.counts), strict=True))


def test_overlap_counts_each_person_once_in_their_exact_combination() -> None:
    """Keys are all 2^N - 1 combinations (public); a person with two rows at one agency counts once."""
    agreement, _ = make_agreement()
    people: list[Person] = [{"social_care": {}}, {"social_care": {}, "school": {}},
                            {"social_care": {}, "school": {}, "health": {}}, {"school": {}, "health": {}},
                            {"health": {}}]
    state = make_state(agreement, people)
    # A duplicate row of person 4 at health: still one person.
    state.cluster_of["health"] = np.append(state.cluster_of["health"], 4)
    counts = vector(agreement, state, kind="overlap")
    assert list(counts) == [(label,) for _, label in combination_keys(AGENCIES)]
    assert len(counts) == 7
    assert counts == {("social_care",): 1, ("school",): 0, ("health",): 1, ("social_care+school",): 1,
                      ("social_care+health",): 0, ("school+health",): 1, ("social_care+school+health",): 1}


def test_a_persons_attribute_is_the_first_non_null_in_party_order() -> None:
    """Documented rule: agencies in state order, rows in file order; none anywhere -> (missing)."""
    agreement, _ = make_agreement()
    people: list[Person] = [
        {"social_care": {"area": None}, "school": {"area": "E06000002"}, "health": {"area": "E06000003"}},
        {"health": {"area": "E06000003"}},
        {"social_care": {"area": None}, "school": {"area": None}},
    ]
    state = make_state(agreement, people)
    counts = vector(agreement, state, kind="count-by", attribute="area")
    assert counts[("E06000002",)] == 1 and counts[("E06000003",)] == 1 and counts[(MISSING,)] == 1
    assert list(counts) == [(a,) for a in DEFAULT_AREAS] + [(MISSING,)]
    # Within one agency, the earlier row wins.
    state.cluster_of["school"] = np.append(state.cluster_of["school"], 2)
    state.attributes["school"]["area"].append("E06000008")
    for column in ("deprivation_quintile", "age_band", "age_years"):
        state.attributes["school"][column].append(None)
    assert vector(agreement, state, kind="count-by", attribute="area")[("E06000008",)] == 1


def test_count_by_combination_is_a_refinement_of_count_by() -> None:
    """Crossed with combination, summing over combinations gives the plain count-by; every person once."""
    agreement, _ = make_agreement()
    state = make_state(agreement, random_people(300, seed=1))
    plain = vector(agreement, state, kind="count-by", attribute="deprivation_quintile")
    crossed = vector(agreement, state, kind="count-by", attribute="deprivation_quintile", by_combination=True)
    assert len(crossed) == 7 * 6
    for (value,), count in plain.items():
        assert sum(c for (combo, v), c in crossed.items() if v == value) == count
    assert sum(plain.values()) == 300


def test_histogram_bins_clamp_out_of_range_values_and_count_missing() -> None:
    """Bins of width 3 over [0, 18]; below 0 goes to the first bin, 18 and above to the last."""
    agreement, _ = make_agreement()
    ages = ["-3", "0", "2.9", "3", "17.9", "18", "40", None]
    state = make_state(agreement, [{"school": {"age_years": a}} for a in ages])
    counts = vector(agreement, state, kind="histogram", attribute="age_years")
    assert counts == {("[0, 3)",): 3, ("[3, 6)",): 1, ("[6, 9)",): 0, ("[9, 12)",): 0, ("[12, 15)",): 0,
                      ("[15, 18]",): 3, (MISSING,): 1}
    with pytest.raises(ReleaseError, match="categorical"):
        vector(agreement, state, kind="histogram", attribute="area")


@pytest.mark.parametrize(("column", "bad"), [("area", "SENTINEL-AREA-Q9"), ("age_years", "SENTINEL-nan")])
def test_bad_attribute_values_name_agency_row_column_but_not_the_value(column: str, bad: str) -> None:
    """An undeclared or non-numeric value stops the release; the message never echoes the value."""
    agreement, _ = make_agreement()
    state = make_state(agreement, [{"school": {column: "E06000001" if column == "area" else "4"}},
                                   {"school": {column: bad}}])
    kind = "count-by" if column == "area" else "histogram"
    with pytest.raises(ReleaseError) as info:
        vector(agreement, state, kind=kind, attribute=column)
    message = str(info.value)
    assert "school" in message and "row 1" in message and column in message and "SENTINEL" not in message


def test_an_undeclared_attribute_is_refused() -> None:
    """Only attributes the agreement declares may be released."""
    agreement, _ = make_agreement()
    state = make_state(agreement, random_people(5, seed=2))
    with pytest.raises(ReleaseError, match="not a release attribute"):
        vector(agreement, state, kind="count-by", attribute="ethnicity")


def test_link_rate_counts_match_a_direct_count() -> None:
    """at(A, v) = people at A with value v; both(A, B, v) = people at A and B with value v."""
    agreement, _ = make_agreement()
    people = random_people(400, seed=3)
    state = make_state(agreement, people)
    counts = vector(agreement, state, kind="link-rate", attribute="deprivation_quintile")

    def value_of(person: Person) -> str:
        for party in AGENCIES:
            if party in person and person[party].get("deprivation_quintile") is not None:
                return person[party]["deprivation_quintile"]  # type: ignore[return-value]
        return MISSING

    for a in AGENCIES:
        for v in ["1", "2", "3", "4", "5", MISSING]:
            assert counts[("at", a, v)] == sum(1 for p in people if a in p and value_of(p) == v)
    for i, a in enumerate(AGENCIES):
        for b in AGENCIES[i + 1:]:
            for v in ["1", "5", MISSING]:
                assert counts[("both", a, b, v)] == sum(1 for p in people if a in p and b in p and value_of(p) == v)
    overall = vector(agreement, state, kind="link-rate")
    assert overall[("at", "school", "all")] == sum(1 for p in people if "school" in p)


@pytest.mark.parametrize("agencies", [("social_care", "school"), AGENCIES,
                                      ("social_care", "school", "health", "police")])
def test_stated_sensitivities_bound_what_one_person_can_change(agencies: tuple[str, ...]) -> None:
    """Brute force: adding any one person (any combination of agencies, any value, values differing by
    agency) moves each query's vector by at most the stated L1 and L2, and link-rate's L1 bound is attained."""
    agreement, _ = make_agreement(agencies=agencies)
    base_people = random_people(60, seed=4, parties=agencies)
    base = make_state(agreement, base_people, agencies)
    specs = [dict(kind="overlap"), dict(kind="count-by", attribute="area"),
             dict(kind="count-by", attribute="area", by_combination=True),
             dict(kind="histogram", attribute="age_years"), dict(kind="link-rate", attribute="area"),
             dict(kind="link-rate")]
    before = {i: np.array(list(vector(agreement, base, **s).values())) for i, s in enumerate(specs)}
    worst_l1 = {i: 0 for i in range(len(specs))}
    for mask, _ in combination_keys(agencies):
        at = [p for j, p in enumerate(agencies) if mask >> j & 1]
        for first_value in [*DEFAULT_AREAS[:3], None]:
            person: Person = {p: {"area": first_value if k == 0 else DEFAULT_AREAS[-1], "age_years": "30"}
                              for k, p in enumerate(at)}
            state = make_state(agreement, [*base_people, person], agencies)
            for i, spec in enumerate(specs):
                diff = np.array(list(vector(agreement, state, **spec).values())) - before[i]
                stated = query_sensitivity(QueryKind(spec["kind"]), len(agencies))
                assert np.abs(diff).sum() <= stated.l1 and math.sqrt((diff**2).sum()) <= stated.l2
                worst_l1[i] = max(worst_l1[i], int(np.abs(diff).sum()))
    n = len(agencies)
    assert worst_l1 == {0: 1, 1: 1, 2: 1, 3: 1, 4: n * (n + 1) // 2, 5: n * (n + 1) // 2}


def test_derive_link_rates_from_released_cells() -> None:
    """rate = both / at, clipped to [0, 1]; a suppressed numerator gives an upper bound, a suppressed
    denominator nothing."""
    parties = ("a", "b")
    cells = (Cell(key=("at", "a", "x"), value=100), Cell(key=("at", "b", "x"), value=None),
             Cell(key=("both", "a", "b", "x"), value=25),
             Cell(key=("at", "a", "y"), value=200), Cell(key=("at", "b", "y"), value=40),
             Cell(key=("both", "a", "b", "y"), value=None))
    rates = {(r.source, r.target, r.value): r for r in derive_link_rates(cells, parties, 10)}
    assert rates[("a", "b", "x")].rate == 0.25
    assert rates[("b", "a", "x")].rate is None and rates[("b", "a", "x")].rate_below is None
    assert rates[("a", "b", "y")].rate is None and rates[("a", "b", "y")].rate_below == pytest.approx(0.05)


# --- the engine -------------------------------------------------------------------------------


def test_a_release_is_on_the_ledger_exactly_as_returned(tmp_path: Path) -> None:
    """Pure: Laplace with b = sensitivity / epsilon; the entry on disk is the release, and it audits clean."""
    agreement, key = make_agreement(epsilon=2.0)
    state = make_state(agreement, random_people(200, seed=5))
    ledger = tmp_path / "ledger.jsonl"
    r1 = release_query(agreement, state, ledger, key, ReleaseQuery(kind="overlap"), epsilon=0.5)
    r2 = release_query(agreement, state, ledger, key, ReleaseQuery(kind="link-rate", attribute="area"), epsilon=0.5)
    assert (r1.entry.mechanism.value, r1.entry.sensitivity, r1.entry.scale) == ("laplace", 1, 2.0)
    assert (r2.entry.sensitivity, r2.entry.scale) == (6, 12.0)
    assert r2.entry.query.parties == AGENCIES
    assert read_ledger(ledger, agreement) == [r1.entry, r2.entry]
    assert r2.remaining_epsilon == pytest.approx(1.0)
    verdict = verify_ledger(agreement, ledger, expected_hashes=[r1.entry_hash, r2.entry_hash])
    assert verdict.ok, verdict.findings


def test_small_noisy_counts_are_suppressed_never_released(tmp_path: Path) -> None:
    """With negligible noise (epsilon 40), cells whose count is under min_cell_size come back as None."""
    agreement, key = make_agreement(epsilon=50.0, min_cell=10)
    people: list[Person] = [{"school": {"area": DEFAULT_AREAS[0]}}] * 25 + [{"school": {"area": DEFAULT_AREAS[1]}}] * 3
    state = make_state(agreement, people)
    release = release_query(agreement, state, tmp_path / "l.jsonl", key,
                            ReleaseQuery(kind="count-by", attribute="area"), epsilon=40.0)
    shown = {cell.key[0]: cell.value for cell in release.cells}
    assert shown[DEFAULT_AREAS[0]] == 25
    assert shown[DEFAULT_AREAS[1]] is None and shown[DEFAULT_AREAS[2]] is None
    assert release.display(release.cells[1]) == "< 10"
    assert all(c.value is None or c.value >= 10 for c in release.cells)


def test_budget_exhaustion_is_refused_before_any_noise_is_drawn(tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """The refused query never reaches the sampler, leaves the ledger byte-identical, and is logged."""
    agreement, key = make_agreement(epsilon=1.0)
    state = make_state(agreement, random_people(50, seed=6))
    ledger = tmp_path / "l.jsonl"
    release_query(agreement, state, ledger, key, ReleaseQuery(kind="overlap"), epsilon=0.6)
    before = ledger.read_bytes()

    def no_noise(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("noise drawn for a refused release")

    monkeypatch.setattr(release_module, "_sample", no_noise)
    with (
        caplog.at_level(logging.WARNING, logger="coordinator.release.engine"),
        pytest.raises(BudgetExceededError) as info,
    ):
        release_query(agreement, state, ledger, key, ReleaseQuery(kind="overlap"), epsilon=0.6)
    message = str(info.value)
    assert "spent epsilon=0.6" in message and "requested epsilon=0.6" in message and "remaining epsilon=0.4" in message
    assert ledger.read_bytes() == before
    assert any("refused" in rec.getMessage() for rec in caplog.records)


def test_nothing_is_returned_when_the_ledger_append_fails(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Noise drawn, append fails: the caller gets an error, never the numbers."""
    agreement, key = make_agreement()
    state = make_state(agreement, random_people(50, seed=7))
    drawn: list[int] = []
    real_sample = release_module._sample
    monkeypatch.setattr(release_module, "_sample", lambda *a: drawn.append(1) or real_sample(*a))

    def disk_full(path: Path, line: bytes) -> None:
        raise LedgerError(f"{path}: append failed (No space left on device); the release was not shown")

    monkeypatch.setattr(ledger_writer_module, "_append_line", disk_full)
    with pytest.raises(LedgerError, match="not shown"):
        release_query(agreement, state, tmp_path / "l.jsonl", key, ReleaseQuery(kind="overlap"), epsilon=0.1)
    assert drawn == [1]
    assert (tmp_path / "l.jsonl").read_bytes() == b""  # locked (so created), never written


def test_zcdp_releases_cost_the_requested_epsilon_or_rho(tmp_path: Path) -> None:
    """Gaussian: asking epsilon gives that epsilon at the agreement's delta; asking rho gives that rho."""
    agreement, key = make_agreement("zcdp", epsilon=4.0)
    state = make_state(agreement, random_people(100, seed=8))
    ledger = tmp_path / "l.jsonl"
    r1 = release_query(agreement, state, ledger, key, ReleaseQuery(kind="overlap"), epsilon=0.5)
    assert r1.entry.mechanism.value == "gaussian" and r1.entry.loss.delta == 1e-6
    assert r1.entry.loss.epsilon == pytest.approx(0.5, rel=1e-6) and r1.entry.loss.epsilon <= 0.5 * (1 + BUDGET_SLACK)
    r2 = release_query(agreement, state, ledger, key, ReleaseQuery(kind="count-by", attribute="area"), rho=0.01)
    assert r2.entry.loss.rho == pytest.approx(0.01, rel=1e-12)
    assert r2.entry.cumulative.rho == pytest.approx(r1.entry.loss.rho + 0.01)
    assert r2.remaining_epsilon == pytest.approx(4.0 - r2.entry.cumulative.epsilon)
    assert verify_ledger(agreement, ledger).ok


def test_a_state_from_another_agreement_or_a_wrong_key_is_refused(tmp_path: Path) -> None:
    """Nothing is computed or written for a foreign linkage state or a key the agreement does not name."""
    agreement, key = make_agreement()
    other, _ = make_agreement()
    state = make_state(other, random_people(10, seed=9))
    with pytest.raises(AgreementMismatchError):
        release_query(agreement, state, tmp_path / "l.jsonl", key, ReleaseQuery(kind="overlap"), epsilon=0.1)
    own = make_state(agreement, random_people(10, seed=9))
    with pytest.raises(SignatureError):
        release_query(agreement, own, tmp_path / "l.jsonl", generate_signing_key(), ReleaseQuery(kind="overlap"),
                      epsilon=0.1)
    assert not (tmp_path / "l.jsonl").exists()


def test_confusion_counts_release_over_declared_groups(tmp_path: Path) -> None:
    """Keys are every declared group (plus missing) x tp/fp/fn/tn; undeclared groups or bad counts are refused."""
    agreement, key = make_agreement(epsilon=100.0, min_cell=0)
    counts = {"1": {"tp": 500, "fp": 300, "fn": 200, "tn": 4000}, "5": {"tp": 100, "fn": 90}}
    release = release_confusion_counts(agreement, tmp_path / "l.jsonl", key, counts, attribute="deprivation_quintile",
                                       epsilon=80.0, subject="model v1, holdout")
    assert len(release.cells) == 6 * 4
    shown = {cell.key: cell.value for cell in release.cells}
    assert shown[("1", "tn")] == pytest.approx(4000, abs=2) and shown[("5", "fn")] == pytest.approx(90, abs=2)
    assert release.entry.query.subject == "model v1, holdout" and release.entry.sensitivity == 1
    for bad in ({"6": {"tp": 1}}, {"1": {"xx": 1}}, {"1": {"tp": -1}}, {"1": {"tp": 1.5}}):
        with pytest.raises(ReleaseError):
            release_confusion_counts(agreement, tmp_path / "l.jsonl", key, bad, attribute="deprivation_quintile",
                                     epsilon=1.0)


# --- the noise the engine adds has the stated scale ---------------------------------------------
# Unseedable CSPRNG noise, so six-standard-error bounds on the sample variance (false alarm ~1e-9).


@pytest.mark.parametrize(("accounting", "kurtosis"), [("pure", 6.0), ("zcdp", 3.0)])
def test_engine_noise_variance_matches_the_recorded_scale(tmp_path: Path, accounting: str, kurtosis: float) -> None:
    """5,000 cells of true count 1,000: the released values' variance is 2b^2 (Laplace) or sigma^2 (Gaussian)."""
    agreement, key = make_agreement(accounting, epsilon=10.0)
    n = 5000
    # A score histogram of n/2 bins: any bin labels are a valid key set for it (the engine refuses cells
    # whose keys do not fit the query table).
    keys = tuple((f"bin {i // 2}", ("positive", "negative")[i % 2]) for i in range(n))
    vec = QueryVector(keys, np.full(n, 1000, dtype=np.int64), Sensitivity(l1=1, l2=1))
    query = ReleaseQuery(kind=QueryKind.SCORE_HISTOGRAM, subject="variance check")
    release = release_vector(agreement, tmp_path / "l.jsonl", key, query, vec, epsilon=0.1)
    scale = release.entry.scale
    noise = np.array([c.value for c in release.cells], dtype=float) - 1000
    if accounting == "pure":
        assert scale == pytest.approx(10.0)
        q = math.exp(-1 / scale)
        true_var = 2 * q / (1 - q) ** 2
    else:
        true_var = scale**2
    se = true_var * math.sqrt((kurtosis - 1) / n)
    assert true_var - 6 * se < noise.var() < true_var + 6 * se
    assert abs(noise.mean()) < 6 * math.sqrt(true_var / n)


# --- property: spend is monotone and within budget --------------------------------------------

_STATE_PEOPLE = random_people(120, seed=10)
_QUERIES = [ReleaseQuery(kind="overlap"), ReleaseQuery(kind="count-by", attribute="area"),
            ReleaseQuery(kind="count-by", attribute="age_band", by_combination=True),
            ReleaseQuery(kind="histogram", attribute="age_years"),
            ReleaseQuery(kind="link-rate", attribute="deprivation_quintile")]


@settings(max_examples=20, deadline=None)
@given(
    accounting=st.sampled_from(["pure", "zcdp"]),
    budget=st.floats(0.5, 3.0),
    requests=st.lists(st.tuples(st.integers(0, len(_QUERIES) - 1), st.floats(0.05, 1.5)), min_size=1, max_size=8),
)
def test_cumulative_spend_is_monotone_and_never_exceeds_the_budget(
    accounting: str, budget: float, requests: list[tuple[int, float]]
) -> None:
    """Property: across any sequence of releases, the ledger's running total never decreases and never
    passes the budget; each refused release leaves the ledger unchanged; the result audits clean."""
    agreement, key = make_agreement(accounting, epsilon=budget)
    state = make_state(agreement, _STATE_PEOPLE)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "l.jsonl"
        previous = 0.0
        for index, epsilon in requests:
            before = ledger.read_bytes() if ledger.exists() else b""
            try:
                release = release_query(agreement, state, ledger, key, _QUERIES[index], epsilon=epsilon)
            except BudgetExceededError:
                assert (ledger.read_bytes() if ledger.exists() else b"") == before
                continue
            total = release.entry.cumulative.epsilon
            assert total >= previous
            assert total <= budget * (1 + BUDGET_SLACK)
            previous = total
        verdict = verify_ledger(agreement, ledger) if ledger.exists() else None
        assert verdict is None or verdict.ok, verdict.findings if verdict else None
