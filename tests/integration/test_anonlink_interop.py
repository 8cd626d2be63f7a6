"""Interop both ways with the real anonlink-client 0.1.9 (issue #15).

anonlink-client runs in its own Python 3.11 environment (it pins pydantic 1 and needs
``setuptools<81`` for ``pkg_resources``), built here with uv from the package registry on first
use and kept in a folder this test owns (``$PPLINK_TEST_CACHE`` or ``~/.cache/pplink-tests``), so
CI on a fresh machine builds it once. The test never skips: a failed build fails it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodes.encode import encode_records
from pplink.cli.main import cli
from pplink.encoding import encodings_to_anonlink_json
from tests.support import make_setup, write_records

pytestmark = pytest.mark.slow

ANONLINK_CLIENT = "anonlink-client==0.1.9"


def _uv() -> list[str]:
    # `uv run` exports UV (its own executable); else the uv on PATH, else the module beside pytest.
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def anonlink_env() -> Path:
    """A Python 3.11 virtual environment with anonlink-client 0.1.9, built once and cached."""
    root = Path(os.environ.get("PPLINK_TEST_CACHE") or Path.home() / ".cache" / "pplink-tests")
    root.mkdir(parents=True, exist_ok=True)
    env = root / "anonlink-client-0.1.9-py311"
    with open(root / "anonlink-client.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others then find it complete
        if not (env / ".complete").is_file():
            shutil.rmtree(env, ignore_errors=True)
            # Outside the project (cwd, --no-config): its pins are not anonlink-client's. --python
            # names the environment: `python -m uv pip` would otherwise install into its own interpreter.
            uv = [*_uv(), "--no-config"]
            subprocess.run([*uv, "venv", "--quiet", "--python", "3.11", str(env)], check=True, cwd=root)
            subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(env / "bin" / "python"),
                            ANONLINK_CLIENT, "setuptools<81"], check=True, cwd=root)
            (env / ".complete").write_text(ANONLINK_CLIENT + "\n")
    return env


def run(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_anonlink_client_encodes_like_pplink_and_joins_a_round(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariants: with `agreement schema`, `secret derive-key` and `node normalise`, anonlink-client's
    CLKs are pplink's bit for bit (and pplink's anonlink-json output is anonlink's); the coordinator
    takes the anonlink JSON for the party the agreement marks, and links it to a pplink agency."""
    env = anonlink_env()
    setup = make_setup(tmp_path / "setup", agencies=("school", "health"), edit=lambda t: t.replace(
        'id = "health"\nrole = "agency"\n', 'id = "health"\nrole = "agency"\nencodings = "clkhash-json"\n'))
    rows = people(40)
    records = write_records(tmp_path / "records.csv", rows)
    common = ["--agreement", setup.agreement_path]

    assert run("agreement", "schema", setup.agreement_path, "-o", tmp_path / "schema.json").exit_code == 0
    r = run("secret", "derive-key", *common, "--party", "health", "--secret", setup.secret_path,
            "-o", tmp_path / "health.key.txt")
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and (tmp_path / "health.key.txt").stat().st_mode & 0o077 == 0
    r = run("secret", "derive-key", *common, "--party", "school", "--secret", setup.secret_path, "-o", tmp_path / "x")
    assert r.exit_code != 0 and not (tmp_path / "x").exists()
    r = run("node", "normalise", *common, "--party", "health", records, "-o", tmp_path / "health.norm.csv")
    assert r.exit_code == 0, r.output

    key_text = (tmp_path / "health.key.txt").read_text().strip()
    subprocess.run([str(env / "bin" / "anonlink"), "encode", str(tmp_path / "health.norm.csv"), key_text,
                    str(tmp_path / "schema.json"), str(tmp_path / "health.json")], check=True, capture_output=True)
    theirs = json.loads((tmp_path / "health.json").read_text())["clks"]
    ours = encode_records(setup.agreement, "health", setup.secret, records)
    assert theirs == encodings_to_anonlink_json(ours.clks)["clks"]
    assert len(theirs) == 40

    r = run("node", "encode", *common, "--party", "school", records, "--secret", setup.secret_path,
            "--key", setup.keys_dir / "school.key", "-o", tmp_path / "school.enc")
    assert r.exit_code == 0, r.output
    match = ["coordinator", "match", *common, "--key", setup.keys_dir / "coordinator.key", tmp_path / "school.enc",
             "--no-progress", "--format", "json"]
    r = run(*match, tmp_path / "health.json", "-o", tmp_path / "bad")
    assert r.exit_code != 0 and "--clks PARTY=PATH" in r.output
    r = run(*match, "--clks", f"health={tmp_path / 'health.json'}", "-o", tmp_path / "round")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["records"] == {"school": 40, "health": 40} and summary["linked_entities"] == 40
    r = run("node", "resolve", *common, "--party", "health", "--tokens", tmp_path / "health.norm.tokens", "--map",
            tmp_path / "round" / "health.map.csv", "-o", tmp_path / "health.entities.csv")
    assert r.exit_code == 0, r.output
    school = run("node", "resolve", *common, "--party", "school", "--tokens", tmp_path / "school.tokens", "--map",
                 tmp_path / "round" / "school.map.csv", "-o", tmp_path / "school.entities.csv")
    assert school.exit_code == 0, school.output
    a = dict(line.split(",") for line in (tmp_path / "health.entities.csv").read_text().splitlines()[1:])
    b = dict(line.split(",") for line in (tmp_path / "school.entities.csv").read_text().splitlines()[1:])
    assert a == b  # the same people, resolved to the same entity at both agencies


def test_coordinator_refuses_clks_json_for_a_party_not_marked(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: unsigned JSON is admitted only for a party the agreement marks clkhash-json."""
    from pplink.errors import AgreementError
    from pplink.interop import read_clks_json

    setup = make_setup(tmp_path, agencies=("school", "health"))
    out = encode_records(setup.agreement, "health", setup.secret, write_records(tmp_path / "h.csv", people(3)))
    (tmp_path / "h.json").write_text(json.dumps(encodings_to_anonlink_json(out.clks)))
    with pytest.raises(AgreementError, match='encodings = "clkhash-json"'):
        read_clks_json(tmp_path / "h.json", setup.agreement, "health")
