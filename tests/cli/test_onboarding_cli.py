"""Onboarding an agency's own export through the CLI: node settings, validate, and messages that say how to fix.

The target of issue #15: an export with its own headers, semicolons and DD.MM.YYYY dates encodes
through node settings alone, under the very agreement (same id) the other agencies use.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from pplink.cli.main import cli
from pplink.encfile import read_encodings, write_encodings
from pplink.errors import AgreementError, KeyFileError, MatchError, RecordValidationError, UsageError
from tests.support import Setup, make_setup, write_records

SETTINGS = """\
delimiter = ";"
encoding = "cp1252"
date_format = "%d.%m.%Y"

[columns]
NHS_REF = "record_id"
Forename = "given_name"
"Family name" = "surname"
DOB = "date_of_birth"
Gender = "sex"
"Post Code" = "postcode"
Objection = "opt_out"

[opt_out_values]
"No objection" = "n"
"Objection recorded" = "y"
"""


def run(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _health_export(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="cp1252") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["NHS_REF", "Forename", "Family name", "DOB", "Gender", "Post Code", "Objection"])
        for i, r in enumerate(rows):
            dob = dt.date.fromisoformat(r["date_of_birth"]).strftime("%d.%m.%Y")
            w.writerow([f"H{i}", r["given_name"], r["surname"], dob, r["sex"], r["postcode"],
                        "Objection recorded" if i == 0 else "No objection"])
    return path


def test_agency_export_encodes_through_node_settings_alone(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: with node settings only, the export encodes under the unchanged agreement, links
    to another agency's records, and validate first says what is wrong and then that it is ready."""
    setup = make_setup(tmp_path / "setup", agencies=("school", "health"))
    rows = people(30)
    before = setup.agreement_path.read_bytes()
    school = write_records(tmp_path / "school.csv", rows)
    health = _health_export(tmp_path / "health.csv", rows)
    settings = tmp_path / "node.toml"
    settings.write_text(SETTINGS)
    common = ["--agreement", setup.agreement_path, "--party", "health", health]

    r = run("node", "validate", *common)
    assert r.exit_code == RecordValidationError("").exit_code
    assert 'delimiter = ";"' in r.output and "the file has: NHS_REF, Forename" in r.output

    r = run("node", "validate", *common, "--settings", settings, "--format", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["would_encode"] == 29 and report["opted_out"] == 1
    dob = next(c for c in report["columns"] if c["column"] == "date_of_birth")
    assert dob["source"] == "DOB" and dob["formats"] == ["DD.MM.YYYY (%d.%m.%Y): 29 different dates"]
    assert not list(tmp_path.glob("*.enc"))  # validate writes nothing

    keys = setup.keys_dir
    for party, path, extra in (("health", health, ["--settings", settings]), ("school", school, [])):
        r = run("node", "encode", "--agreement", setup.agreement_path, "--party", party, path, *extra,
                "--secret", setup.secret_path, "--key", keys / f"{party}.key", "-o", tmp_path / f"{party}.enc")
        assert r.exit_code == 0, r.output
    assert setup.agreement_path.read_bytes() == before
    ids = {read_encodings(tmp_path / f"{p}.enc", setup.agreement).header.agreement_id for p in ("health", "school")}
    assert ids == {setup.agreement.agreement_id}
    r = run("coordinator", "match", "--agreement", setup.agreement_path, "--key", keys / "coordinator.key",
            tmp_path / "health.enc", tmp_path / "school.enc", "-o", tmp_path / "round", "--no-progress")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "round" / "health.map.csv") as fh:
        n_rows = sum(1 for _ in fh) - 1
    assert n_rows == 29


def test_upper_case_header_gets_a_mapping_hint(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: columns that differ only in case are named with the [columns] lines that map them."""
    rows = [{k.upper(): v for k, v in r.items()} for r in people(3)]
    from tests.support import COLUMNS

    path = write_records(tmp_path / "s.csv", rows, [c.upper() for c in COLUMNS])
    r = run("node", "validate", "--agreement", setup.agreement_path, "--party", "school", path)
    assert r.exit_code != 0
    assert "UPPER CASE" in r.output and '"GIVEN_NAME" = "given_name"' in r.output


def test_messages_say_how_to_fix(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a typo'd party lists the valid ids, a public key is called one, and a missing input
    file is PPL501 (docs/errors.md), not click's usage exit."""
    records = write_records(tmp_path / "s.csv", people(3))
    base = ["node", "encode", "--agreement", setup.agreement_path, "--secret", setup.secret_path, "-o",
            tmp_path / "s.enc"]
    r = run(*base, "--party", "schol", "--key", setup.keys_dir / "school.key", records)
    assert r.exit_code == AgreementError("").exit_code
    assert "did you mean 'school'" in r.output and "social_care, school, health, police" in r.output
    r = run(*base, "--party", "school", "--key", setup.keys_dir / "school.pub", records)
    assert r.exit_code == KeyFileError("").exit_code
    assert "this is a public key" in r.output and "chmod" not in r.output
    r = run(*base, "--party", "school", "--key", setup.keys_dir / "school.key", tmp_path / "nope.csv")
    assert r.exit_code == UsageError("").exit_code and "PPL501" in r.output and "nope.csv" in r.output


def test_coordinator_refuses_an_empty_encodings_file(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a signed but empty .enc does not join a round as "0 records"."""
    width = setup.agreement.identifiers.filter_bits // 8
    write_encodings(tmp_path / "school.enc", agreement=setup.agreement, party="school",
                    tokens=np.zeros((0, 16), np.uint8), clks=np.zeros((0, width), np.uint8), attributes={},
                    key=setup.key("school"))
    r = run("node", "encode", "--agreement", setup.agreement_path, "--party", "health",
            write_records(tmp_path / "h.csv", people(5)), "--secret", setup.secret_path,
            "--key", setup.keys_dir / "health.key", "-o", tmp_path / "health.enc")
    assert r.exit_code == 0, r.output
    r = run("coordinator", "match", "--agreement", setup.agreement_path, "--key", setup.keys_dir / "coordinator.key",
            tmp_path / "health.enc", tmp_path / "school.enc", "-o", tmp_path / "round", "--no-progress")
    assert r.exit_code == MatchError("").exit_code and "holds no records" in r.output
