"""The Flower deployment commands through click's CliRunner (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from coordinator.run_records import RunPhase, RunRecord, RunStatus, timestamp, write_run_record
from pplink.cli.main import cli
from pplink.errors import KeyFileError, UsageError
from tests.support import Setup


def _run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner(mix_stderr=False).invoke(cli, list(args))


def test_certs_command_writes_the_ca_and_server_files(tmp_path: Path) -> None:
    """Invariant: exit 0 and the four files; a second call refuses with the key-file exit code."""
    result = _run("coordinator", "certs", "--dir", str(tmp_path / "certs"))
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in (tmp_path / "certs").iterdir()} == {"ca.crt", "ca.key", "server.pem", "server.key"}
    again = _run("coordinator", "certs", "--dir", str(tmp_path / "certs"))
    assert again.exit_code == KeyFileError("x").exit_code and "already exists" in again.stderr


def test_keys_new_can_add_the_flower_node_key(tmp_path: Path) -> None:
    """Invariant: --flower-node-key creates <party>.flwr (0600) and .flwr.pub, also for a party
    whose signing key already exists, without touching that key."""
    assert _run("keys", "new", "--party", "school", "--out-dir", str(tmp_path)).exit_code == 0
    signing = (tmp_path / "school.key").read_bytes()
    result = _run("keys", "new", "--party", "school", "--out-dir", str(tmp_path), "--flower-node-key")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "school.flwr").stat().st_mode & 0o077 == 0
    assert (tmp_path / "school.flwr.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (tmp_path / "school.key").read_bytes() == signing


def test_agreement_init_creates_flower_node_keys_for_agencies_only(tmp_path: Path) -> None:
    """Invariant: every agency gets a Flower node key; the coordinator and auditor do not need one."""
    result = _run("agreement", "init", "--parties", "school,health", "-o", str(tmp_path / "agreement.toml"))
    assert result.exit_code == 0, result.stderr
    keys = tmp_path / "keys"
    assert sorted(p.name for p in keys.glob("*.flwr.pub")) == ["health.flwr.pub", "school.flwr.pub"]
    assert "Flower node keys" in result.stdout


def test_run_without_a_running_superlink_is_a_usage_error(setup: Setup, tmp_path: Path) -> None:
    """Invariant: `coordinator run` refuses at once, telling the operator to start `serve`."""
    result = _run("coordinator", "run", "--agreement", str(setup.agreement_path), "--dir", str(tmp_path),
                  "--key", str(setup.key_path("coordinator")))
    assert result.exit_code == UsageError("x").exit_code
    assert "coordinator serve" in result.stderr


def test_run_refuses_a_key_that_is_not_the_coordinators(setup: Setup, tmp_path: Path) -> None:
    """Invariant: an agency's key cannot launch a round."""
    result = _run("coordinator", "run", "--agreement", str(setup.agreement_path), "--dir", str(tmp_path),
                  "--key", str(setup.key_path("school")))
    assert result.exit_code == KeyFileError("x").exit_code


def test_runs_lists_what_finished_and_failed(tmp_path: Path) -> None:
    """Invariant: `coordinator runs` shows every recorded run with its status, as text and JSON."""
    assert "no runs recorded" in _run("coordinator", "runs", "--dir", str(tmp_path)).stdout
    now = timestamp()
    write_run_record(tmp_path, RunRecord(run_id="a" * 16, agreement_id="c" * 64, status=RunStatus.FINISHED,
                                         phase=RunPhase.DONE, started=now, updated=now, entities=12))
    write_run_record(tmp_path, RunRecord(run_id="b" * 16, agreement_id="c" * 64, status=RunStatus.FAILED,
                                         phase=RunPhase.ENCODE, started=now, updated=now,
                                         error="round failed at query.encode (police): no reply"))
    text = _run("coordinator", "runs", "--dir", str(tmp_path)).stdout
    assert "finished" in text and "12 entities" in text and "police" in text
    listed = json.loads(_run("coordinator", "runs", "--dir", str(tmp_path), "--format", "json").stdout)
    assert [r["status"] for r in listed] == ["finished", "failed"]
    one = _run("coordinator", "runs", "--dir", str(tmp_path), "--run", "b" * 16)
    assert one.exit_code == 0 and "failed" in one.stdout


def test_a_run_shows_linked_entities_only_when_it_knows_them(tmp_path: Path) -> None:
    """Invariant: a scoring run (no linked count) is shown without a made-up or 'None' count."""
    now = timestamp()
    write_run_record(tmp_path, RunRecord(run_id="d" * 16, agreement_id="c" * 64, status=RunStatus.FINISHED,
                                         phase=RunPhase.DONE, started=now, updated=now, entities=269))
    write_run_record(tmp_path, RunRecord(run_id="e" * 16, agreement_id="c" * 64, status=RunStatus.FINISHED,
                                         phase=RunPhase.DONE, started=now, updated=now, entities=269,
                                         linked_entities=112))
    scoring = _run("coordinator", "runs", "--dir", str(tmp_path), "--run", "d" * 16).stdout
    assert "entities: 269\n" in scoring and "None" not in scoring
    match = _run("coordinator", "runs", "--dir", str(tmp_path), "--run", "e" * 16).stdout
    assert "entities: 269 (112 found at two or more agencies)" in match
