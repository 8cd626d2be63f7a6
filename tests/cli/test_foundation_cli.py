"""The foundation commands end to end through click: exit codes, files, and no identifiers in output."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from pplink.cli.main import cli
from pplink.errors import KeyFileError, RecordValidationError
from tests.support import write_records

SENTINEL = "Sentinelname"


def run(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_init_check_encode_resolve(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    agr = tmp_path / "agreement.toml"
    r = run("agreement", "init", "--parties", "social_care,school", "--keys-dir", tmp_path / "keys", "-o", agr)
    assert r.exit_code == 0, r.output
    r = run("agreement", "check", agr)
    assert r.exit_code == 0 and "valid" in r.output and "social_care, school" in r.output
    r = run("agreement", "check", agr, "--format", "json")
    assert '"agreement_id"' in r.output
    r = run("secret", "new", "-o", tmp_path / "s.secret")
    assert r.exit_code == 0
    rows = people(25)
    rows[0]["given_name"] = SENTINEL
    rows[1]["opt_out"] = "y"
    records = write_records(tmp_path / "school.csv", rows)
    r = run("node", "encode", "--agreement", agr, "--party", "school", "--secret", tmp_path / "s.secret",
            "--key", tmp_path / "keys/school.key", records, "-o", tmp_path / "school.enc")
    assert r.exit_code == 0, r.output
    assert "encoded 24 records" in r.output and "opted out (not encoded): 1" in r.output
    assert SENTINEL not in r.output


def test_format_anonlink_json_writes_the_data61_layout(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: `--format anonlink-json` (the issue's spelling) and `--output-format anonlink-json`
    write the same {"clks": [...]} layout, one base64 CLK per encoded record; contradicting flags fail."""
    import base64
    import json

    agr = tmp_path / "agreement.toml"
    run("agreement", "init", "--parties", "social_care,school", "--keys-dir", tmp_path / "keys", "-o", agr)
    run("secret", "new", "-o", tmp_path / "s.secret")
    records = write_records(tmp_path / "school.csv", people(12))
    common = ["node", "encode", "--agreement", agr, "--party", "school", "--secret", tmp_path / "s.secret",
              "--key", tmp_path / "keys/school.key", records]
    r = run(*common, "-o", tmp_path / "a.json", "--format", "anonlink-json")
    assert r.exit_code == 0, r.output
    assert "encoded 12 records" in r.output
    r = run(*common, "-o", tmp_path / "b.json", "--output-format", "anonlink-json")
    assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert list(a) == ["clks"] and len(a["clks"]) == 12 and a["clks"] == b["clks"]
    assert all(len(base64.b64decode(c)) == 128 for c in a["clks"])
    r = CliRunner().invoke(cli, [str(x) for x in [*common, "-o", tmp_path / "c.json", "--format", "anonlink-json",
                                                  "--output-format", "pplink"]])
    assert r.exit_code != 0 and "disagree" in r.output


def test_validation_failure_exit_code_and_no_values(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    agr = tmp_path / "agreement.toml"
    run("agreement", "init", "--parties", "social_care,school", "-o", agr)
    run("secret", "new", "-o", tmp_path / "s.secret")
    rows = people(3)
    rows[1]["given_name"] = SENTINEL
    rows[1]["date_of_birth"] = "2999-01-01"
    records = write_records(tmp_path / "school.csv", rows)
    r = CliRunner().invoke(cli, ["node", "encode", "--agreement", str(agr), "--party", "school", "--secret",
                                 str(tmp_path / "s.secret"), "--key", str(tmp_path / "keys/school.key"), str(records),
                                 "-o", str(tmp_path / "school.enc")])
    assert r.exit_code == RecordValidationError.code // 100 * 20 + 1
    assert "error PPL301" in r.output and "row 3, field date_of_birth" in r.output
    assert SENTINEL not in r.output and "2999" not in r.output


def test_loose_key_permissions_fail_cleanly(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    agr = tmp_path / "agreement.toml"
    run("agreement", "init", "--parties", "a,b", "-o", agr)
    run("secret", "new", "-o", tmp_path / "s.secret")
    os.chmod(tmp_path / "keys/a.key", 0o644)
    records = write_records(tmp_path / "a.csv", people(2))
    r = CliRunner().invoke(cli, ["node", "encode", "--agreement", str(agr), "--party", "a", "--secret",
                                 str(tmp_path / "s.secret"), "--key", str(tmp_path / "keys/a.key"), str(records),
                                 "-o", str(tmp_path / "a.enc")])
    assert r.exit_code == KeyFileError("x").exit_code
    assert "chmod 600" in r.output and "Traceback" not in r.output


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    agr = tmp_path / "agreement.toml"
    run("agreement", "init", "--parties", "a,b", "-o", agr)
    r = CliRunner().invoke(cli, ["agreement", "init", "--parties", "a,b", "-o", str(agr)])
    assert r.exit_code != 0 and "refusing to overwrite" in r.output


def test_keys_new(tmp_path: Path) -> None:
    r = run("keys", "new", "--party", "school", "--out-dir", tmp_path)
    assert r.exit_code == 0 and "ed25519:" in r.output
    assert ((tmp_path / "school.key").stat().st_mode & 0o777) == 0o600


def test_errors_follow_the_parsed_format_not_argv_text(tmp_path: Path) -> None:
    # The error boundary renders in the format the command parsed: JSON for `--format json`, and
    # plain text where "json" merely appears as an argument (a file named json).
    bad = tmp_path / "agreement.toml"
    bad.write_text("not = [valid toml", encoding="utf-8")
    runner = CliRunner(mix_stderr=False)
    done = runner.invoke(cli, ["agreement", "check", "--format", "json", str(bad)])
    assert done.exit_code == 21
    payload = json.loads(done.stderr.strip().splitlines()[-1])
    assert payload["code"] == 101 and payload["error"] == "AgreementError"
    named_json = tmp_path / "json"
    named_json.write_text("not = [valid toml", encoding="utf-8")
    done = runner.invoke(cli, ["agreement", "check", "--format", "text", str(named_json)])
    assert done.exit_code == 21
    assert done.stderr.startswith("error PPL101:")
