"""Node deltas: only new, changed and withdrawn rows leave the node; unchanged rows keep their tokens."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.linkage.incremental import run_incremental_round
from coordinator.linkage.state import STATE_FILE, load_linkage_state
from nodes.delta import encode_delta, snapshot_path
from nodes.encode import encode_file
from nodes.resolve import resolve_files
from pplink.cli.main import cli
from pplink.deltafile import WithdrawReason, file_digest, read_delta
from pplink.entity_files import read_tokens
from pplink.errors import EncodingFileError, LinkageMapError, RoundIntegrityError, SignatureError
from tests.support import Setup, make_setup, write_records


def encode(setup: Setup, party: str, rows: list[dict[str, str]], path: Path) -> Path:
    records = write_records(path.with_suffix(".csv"), rows)
    encode_file(setup.agreement, party, setup.secret, setup.key(party), records, path, workers=1)
    return path


def delta(setup: Setup, party: str, rows: list[dict[str, str]], path: Path, previous: Path, **kwargs):  # type: ignore[no-untyped-def]
    records = write_records(path.with_suffix(".csv"), rows)
    return encode_delta(setup.agreement, party, setup.secret, setup.key(party), records, path, previous, workers=1,
                        **kwargs)


def test_delta_sends_only_what_changed(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(40)
    full = encode(setup, "school", rows, tmp_path / "school.enc")
    before = {rid: token for token, rid in read_tokens(full.with_suffix(".tokens")).items()}
    now = [dict(r) for r in rows[3:]] + [dict(r) for r in rows[:3]]
    now = [r for r in now if r["record_id"] != rows[0]["record_id"]]  # deleted
    next(r for r in now if r["record_id"] == rows[1]["record_id"])["opt_out"] = "Y"  # opted out after linking
    next(r for r in now if r["record_id"] == rows[2]["record_id"])["surname"] = "Changed"  # corrected
    now += people(45, seed=99)[40:]  # five new referrals (fresh ids R000040..44)
    summary = delta(setup, "school", now, tmp_path / "school.d1", full)
    assert (summary.added, summary.changed, summary.withdrawn, summary.unchanged) == (5, 1, 2, 37)
    d = read_delta(tmp_path / "school.d1", setup.agreement)
    assert d.header.previous == file_digest(full.read_bytes()) and d.header.sequence == 1
    assert d.added.header.n_records == 6
    withdrawn = {t.tobytes().hex(): int(r) for t, r in zip(d.withdrawn, d.reasons, strict=True)}
    assert withdrawn == {before[rows[0]["record_id"]]: WithdrawReason.WITHDRAWN,
                         before[rows[1]["record_id"]]: WithdrawReason.WITHDRAWN,
                         before[rows[2]["record_id"]]: WithdrawReason.CHANGED}
    after = {rid: token for token, rid in read_tokens(summary.tokens).items()}
    assert len(after) == 43
    assert all(after[r["record_id"]] == before[r["record_id"]] for r in rows[3:])  # stable tokens
    assert after[rows[2]["record_id"]] != before[rows[2]["record_id"]]
    again = delta(setup, "school", now, tmp_path / "school.d2", tmp_path / "school.d1")
    assert (again.added, again.changed, again.withdrawn, again.sequence) == (0, 0, 0, 2)


def test_rows_past_retention_are_withdrawn_once(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(10)
    full = encode(setup, "school", rows, tmp_path / "school.enc")
    later = datetime.now(UTC) + timedelta(days=setup.agreement.retention.linkage_days)
    expired = delta(setup, "school", rows, tmp_path / "school.d1", full, now=later)
    assert (expired.expired, expired.added, expired.unchanged) == (10, 0, 0)
    quiet = delta(setup, "school", rows, tmp_path / "school.d2", tmp_path / "school.d1", now=later)
    assert (quiet.added, quiet.expired) == (0, 0)  # expired records are not sent again


def test_a_snapshot_from_another_file_or_a_foreign_delta_is_refused(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(10)
    full = encode(setup, "school", rows, tmp_path / "school.enc")
    delta(setup, "school", rows, tmp_path / "school.d1", full)
    delta(setup, "school", rows[:5], tmp_path / "other.d1", full)
    snapshot_path(tmp_path / "school.d1").write_bytes(snapshot_path(tmp_path / "other.d1").read_bytes())
    with pytest.raises(EncodingFileError, match="another file"):
        delta(setup, "school", rows, tmp_path / "school.d2", tmp_path / "school.d1")
    with pytest.raises((EncodingFileError, SignatureError)):
        delta(setup, "health", rows, tmp_path / "health.d1", full, previous_tokens=full.with_suffix(".tokens"))


@pytest.fixture
def pair(tmp_path: Path) -> Setup:
    """An agreement between two agencies, so that a round may run with just them."""
    return make_setup(tmp_path / "pair", agencies=("school", "health"))


def test_delta_round_trip_through_the_coordinator_and_resolve(pair: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    setup = pair
    rows = people(60)
    full = {p: encode(setup, p, rows[i * 10 : i * 10 + 40], tmp_path / f"{p}.enc")
            for i, p in enumerate(("school", "health"))}
    coordinator = setup.key("coordinator")
    first = run_incremental_round(setup.agreement, coordinator, list(full.values()), tmp_path / "r1", tmp_path / "st")
    entity = {}
    for p in full:
        resolve_files(setup.agreement, p, full[p].with_suffix(".tokens"), first.maps[p], tmp_path / f"{p}.r1.csv")
        with open(tmp_path / f"{p}.r1.csv") as fh:
            entity[p] = {r["record_id"]: r["entity_id"] for r in csv.DictReader(fh)}
    assert first.linked_entities == 30  # R10..R39 are at both agencies
    school = rows[10:50]  # R0..R9 leave school, R40..R49 are new there (health has them)
    d = delta(setup, "school", school, tmp_path / "school.d1", full["school"])
    second = run_incremental_round(setup.agreement, coordinator, [d.output], tmp_path / "r2", tmp_path / "st")
    assert second.linked_entities == 40 and second.added == 10
    resolve_files(setup.agreement, "school", d.tokens, second.maps["school"], tmp_path / "school.r2.csv")
    with open(tmp_path / "school.r2.csv") as fh:
        now = {r["record_id"]: r["entity_id"] for r in csv.DictReader(fh)}
    # The people stay who they were; a new referral takes the pseudonym health's record already had.
    assert all(now[r] == entity["school"][r] for r in now if r in entity["school"])
    assert all(now[f"R{i:06d}"] == entity["health"][f"R{i:06d}"] for i in range(40, 50))
    with pytest.raises(LinkageMapError):
        resolve_files(setup.agreement, "school", full["school"].with_suffix(".tokens"), second.maps["school"],
                      tmp_path / "x.csv")
    # The release engine's view carries each live row's attributes, in the map's row order.
    view = load_linkage_state(tmp_path / "r2" / STATE_FILE, setup.agreement.agreement_id)
    with open(second.maps["school"]) as fh:
        order = [read_tokens(d.tokens)[r["row_token"]] for r in csv.DictReader(fh)]
    quintile = {r["record_id"]: r["deprivation_quintile"] for r in school}
    assert view.attributes["school"]["deprivation_quintile"] == [quintile[rid] for rid in order]


def test_cli_delta_and_incremental_match(pair: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    setup = pair
    rows = people(30)
    for p in ("school", "health"):
        encode(setup, p, rows, tmp_path / f"{p}.enc")

    def run(*args: str | Path):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    common = ("--agreement", setup.agreement_path, "--key", setup.key_path("coordinator"), "--state", tmp_path / "st")
    r = run("coordinator", "match", *common, tmp_path / "school.enc", tmp_path / "health.enc", "-o", tmp_path / "r1")
    assert r.exit_code == 0, r.output
    assert "round 1" in r.output and "entities: 30 (30 at two or more agencies)" in r.output
    records = write_records(tmp_path / "school-now.csv", rows[:25])
    r = run("node", "encode", "--agreement", setup.agreement_path, "--party", "school", "--secret", setup.secret_path,
            "--key", setup.key_path("school"), records, "-o", tmp_path / "school.d1", "--delta-from",
            tmp_path / "school.enc", "--format", "json")
    assert r.exit_code == 0, r.output
    assert '"withdrawn": 5' in r.output and '"unchanged": 25' in r.output
    r = run("coordinator", "match", *common, tmp_path / "school.d1", "-o", tmp_path / "r2")
    assert r.exit_code == 0, r.output
    assert "removed: withdrawn 5" in r.output and "entities: 30 (25 at two or more agencies)" in r.output
    r = run("node", "resolve", "--agreement", setup.agreement_path, "--party", "school", "--tokens",
            tmp_path / "school.d1.tokens", "--map", tmp_path / "r2" / "school.map.csv",
            "-o", tmp_path / "school.entities.csv")
    assert r.exit_code == 0, r.output


def test_rows_the_coordinator_expired_are_left_out_when_resolving(pair: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    setup, rows = pair, people(20)
    full = {p: encode(setup, p, rows, tmp_path / f"{p}.enc") for p in ("school", "health")}
    coordinator = setup.key("coordinator")
    run_incremental_round(setup.agreement, coordinator, list(full.values()), tmp_path / "r1", tmp_path / "st")
    d = delta(setup, "school", rows, tmp_path / "school.d1", full["school"])
    later = datetime.now(UTC) + timedelta(days=setup.agreement.retention.linkage_days)
    # health sent nothing this round, so its rows are judged at the round's date: expired.
    second = run_incremental_round(setup.agreement, coordinator, [d.output], tmp_path / "r2", tmp_path / "st",
                                   now=later)
    assert second.removed == {"retention": 20} and second.records == {"school": 20, "health": 0}
    tokens = full["health"].with_suffix(".tokens")
    with pytest.raises(LinkageMapError):
        resolve_files(setup.agreement, "health", tokens, second.maps["health"], tmp_path / "health.csv")
    withdrawn = tmp_path / "r2" / "health.withdrawn.csv"
    summary = resolve_files(setup.agreement, "health", tokens, second.maps["health"], tmp_path / "health.csv",
                            withdrawn=[withdrawn])
    assert summary.rows == 0
    # The withdrawn list is vouched for by its round's signed manifest like the map: an edited one is refused.
    withdrawn.write_text(withdrawn.read_text().replace("retention", "withdrawn"))
    with pytest.raises(RoundIntegrityError):
        resolve_files(setup.agreement, "health", tokens, second.maps["health"], tmp_path / "health.csv",
                      withdrawn=[withdrawn])
