"""The file-based match round: inputs verified first, nothing written on refusal, every row mapped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from coordinator.linkage.match_round import run_match_round
from coordinator.linkage.state import STATE_FILE, load_linkage_state
from nodes.encode import encode_file
from nodes.resolve import resolve_files
from pplink.agreement import canonical_json
from pplink.crypto import verify
from pplink.errors import KeyFileError, MatchError, SignatureError
from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth
from pplink.lab.synth import generate_synth, write_synth
from tests.support import AGENCIES, Setup


@pytest.fixture
def round_inputs(setup: Setup, tmp_path: Path) -> dict[str, Path]:
    """Encodings from all four agencies of 400 synthetic people."""
    write_synth(generate_synth(400, AGENCIES, seed=5), tmp_path / "records")
    out = {}
    for agency in AGENCIES:
        out[agency] = encode_file(setup.agreement, agency, setup.secret, setup.key(agency),
                                  tmp_path / "records" / f"{agency}.csv", tmp_path / "nodes" / f"{agency}.enc",
                                  skip_invalid=True).output
    return out


def test_round_maps_every_row_and_links_well(setup: Setup, round_inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "linkage"
    summary = run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), out, workers=1)
    for agency in AGENCIES:
        tokens = tmp_path / "nodes" / f"{agency}.tokens"
        with open(out / f"{agency}.map.csv") as fh:
            rows = list(csv.DictReader(fh))
        # One line for every row sent, linked or not: a node cannot tell which of its rows linked.
        assert len(rows) == summary.records[agency] == len(tokens.read_text().splitlines()) - 1
        resolve_files(setup.agreement, agency, tokens, out / f"{agency}.map.csv",
                      tmp_path / "nodes" / f"{agency}.entities.csv")
    report = evaluate_linkage_by_agency(read_truth(tmp_path / "records" / "truth.csv"),
                                        read_predictions([tmp_path / "nodes"]))
    assert report.overall.f1 > 0.95
    state = load_linkage_state(out / STATE_FILE, setup.agreement.agreement_id)
    assert state.n_clusters == summary.entities
    assert set(state.attributes["school"]) == {"area", "deprivation_quintile", "age_band"}


def test_manifest_is_signed_by_the_coordinator(setup: Setup, round_inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "linkage"
    run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), out, workers=1)
    body = (out / "manifest.json").read_bytes()
    sig = bytes.fromhex((out / "manifest.json.sig").read_text().strip())
    verify(setup.agreement.coordinator.public_key, body, sig, what="manifest")
    manifest = json.loads(body)
    assert body == canonical_json(manifest)
    assert manifest["agreement_id"] == setup.agreement.agreement_id
    assert set(manifest["maps"]) == set(AGENCIES)
    # 4 x ~400 records is far below ALL_PAIRS_LIMIT: the round names its blocking as all pairs.
    assert manifest["blocking"] == {"method": "all-pairs", "bits_per_band": None, "bands": None}
    report = json.loads((out / "coordinator" / "match.json").read_text())
    assert report["blocking_choice"]["method"] == "all-pairs" and report["blocking_choice"]["all_pairs"] > 0


def test_entity_pseudonyms_are_fresh_per_round(setup: Setup, round_inputs: dict[str, Path], tmp_path: Path) -> None:
    # Pseudonyms are random, unrelated to tokens or order: two rounds on the same files share none.
    run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), tmp_path / "a", workers=1)
    run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), tmp_path / "b", workers=1)
    ids_a = {r.split(",")[1] for r in (tmp_path / "a" / "school.map.csv").read_text().splitlines()[1:]}
    ids_b = {r.split(",")[1] for r in (tmp_path / "b" / "school.map.csv").read_text().splitlines()[1:]}
    assert ids_a and not ids_a & ids_b


@pytest.mark.parametrize("problem", ["duplicate_party", "replay", "missing", "tampered", "wrong_key", "one_party"])
def test_refusals_write_nothing(setup: Setup, round_inputs: dict[str, Path], tmp_path: Path, problem: str) -> None:
    paths = list(round_inputs.values())
    key = setup.key("coordinator")
    expected: type[Exception] = MatchError
    if problem == "duplicate_party":
        again = encode_file(setup.agreement, "school", setup.secret, setup.key("school"),
                            tmp_path / "records" / "school.csv", tmp_path / "again.enc", skip_invalid=True).output
        paths.append(again)
        match = "a second file from school"
    elif problem == "replay":
        copy = tmp_path / "copy.enc"
        shutil.copy(round_inputs["police"], copy)
        paths.append(copy)
        match = "replayed file"
    elif problem == "missing":
        paths.remove(round_inputs["police"])
        match = "no encodings from police"
    elif problem == "tampered":
        raw = bytearray(round_inputs["health"].read_bytes())
        raw[500] ^= 0xFF
        round_inputs["health"].write_bytes(bytes(raw))
        expected, match = SignatureError, "health.enc"
    elif problem == "wrong_key":
        key = setup.key("school")
        expected, match = KeyFileError, "not the coordinator's key"
    else:
        paths = paths[:1]
        match = "at least two agencies"
    out = tmp_path / "linkage"
    with pytest.raises(expected, match=match):
        run_match_round(setup.agreement, key, paths, out, workers=1)
    assert not out.exists() or not any(out.rglob("*"))


def test_missing_party_allowed_by_agreement(tmp_path: Path) -> None:
    from tests.support import make_setup

    setup = make_setup(tmp_path / "s",
                       edit=lambda t: t.replace("allow_missing_parties = false", "allow_missing_parties = true"))
    write_synth(generate_synth(150, AGENCIES, seed=9), tmp_path / "records")
    paths = [encode_file(setup.agreement, a, setup.secret, setup.key(a), tmp_path / "records" / f"{a}.csv",
                         tmp_path / f"{a}.enc", skip_invalid=True).output for a in ("school", "health")]
    summary = run_match_round(setup.agreement, setup.key("coordinator"), paths, tmp_path / "out", workers=1)
    assert summary.missing == ("social_care", "police")
    assert sorted(summary.maps) == ["health", "school"]


def test_suggest_threshold_cli_finds_the_valley(setup: Setup, round_inputs: dict[str, Path]) -> None:
    import json as _json

    from click.testing import CliRunner

    from pplink.cli.main import cli

    args = ["coordinator", "suggest-threshold", "--agreement", str(setup.agreement_path),
            *map(str, round_inputs.values()), "--workers", "1"]
    text = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert text.exit_code == 0 and "suggested threshold" in text.output
    data = _json.loads(CliRunner().invoke(cli, [*args, "--format", "json"]).output)
    # Synthetic matches score ~0.9+, strangers ~0.45 (XOR folding lifts both): the valley lies
    # between them; on 400 people it has been measured from 0.52 to 0.83.
    assert 0.45 < data["suggestion"]["threshold"] < 0.92
    assert sum(data["counts"]) > 0


def test_a_round_publishes_only_dp_estimates_and_its_ledger_audits(setup: Setup, round_inputs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """Invariant: the signed manifest carries the threshold and method but no estimate; the estimates in
    calibration.json come from a link-scores entry on the round's ledger, which the auditor re-derives."""
    from coordinator.release.binding import DEFAULT_LEDGER
    from pplink.audit.verify import verify_ledger
    from pplink.ledger import read_ledger

    out = tmp_path / "linkage"
    summary = run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), out, workers=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["calibration"]) == {"method", "threshold"}
    published = json.loads((out / "calibration.json").read_text())
    assert published == summary.published_calibration and published["threshold"] == manifest["threshold"]
    entries = read_ledger(out / DEFAULT_LEDGER, setup.agreement)
    assert [e.query.kind.value for e in entries] == ["link-scores"] and entries[0].seq == published["dp"]["ledger_seq"]
    assert 0.0 <= published["precision"] <= 1.0 and published["precision_interval"] is not None
    verdict = verify_ledger(setup.agreement, out / DEFAULT_LEDGER)
    assert verdict.ok, verdict.findings


def test_a_round_past_the_all_pairs_limit_blocks_with_the_setting_it_chose(
        setup: Setup, round_inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant: past ALL_PAIRS_LIMIT (lowered here so that ~1,500 records pass it) the round compares with the
    setting the budget chose, and its stats, match.json and signed manifest all name that same setting."""
    import coordinator.linkage.blocking_budget as budget

    monkeypatch.setattr(budget, "ALL_PAIRS_LIMIT", 1000)
    out = tmp_path / "linkage"
    summary = run_match_round(setup.agreement, setup.key("coordinator"), list(round_inputs.values()), out, workers=1)
    report = json.loads((out / "coordinator" / "match.json").read_text())
    choice = report["blocking_choice"]
    assert choice["method"] == "budget" and (choice["bits_per_band"], choice["bands"]) in budget.LADDER
    assert choice["estimated_comparisons"] <= choice["budget"] or (choice["bits_per_band"], choice["bands"]) == \
        budget.LADDER[0]
    used = summary.result.stats.blocking
    assert used is not None and (used.bits_per_band, used.bands) == (choice["bits_per_band"], choice["bands"])
    assert report["stats"]["blocking"]["bands"] == choice["bands"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["blocking"] == {"method": "budget", "bits_per_band": choice["bits_per_band"],
                                    "bands": choice["bands"]}
