"""Clean boundaries: party ids are safe slugs before any file is named, and a node signs only with its own key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from pplink.agreement import parse_agreement
from pplink.cli.main import cli
from pplink.errors import AgreementError, KeyFileError, UsageError
from tests.support import make_setup, write_records


def run(*args: str | Path):  # type: ignore[no-untyped-def]
    return CliRunner(mix_stderr=False).invoke(cli, [str(a) for a in args])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


@pytest.mark.parametrize("parties", ["../x,school", "Social Care,school", "school,a/b", "school,coordinator",
                                     "school,x.y", "school," + "a" * 41])
def test_agreement_init_refuses_unsafe_party_ids_and_writes_nothing(tmp_path: Path, parties: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    r = run("agreement", "init", "--parties", parties, "-o", work / "agreement.toml")
    assert r.exit_code == UsageError("").exit_code, r.stdout + r.stderr
    assert "error PPL501" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert _files(tmp_path) == [work], "a refused init wrote files"


@pytest.mark.parametrize("party", ["../../evil", "/tmp/evil", "Evil", "e vil", ""])
def test_keys_new_refuses_unsafe_party_ids_and_writes_nothing(tmp_path: Path, party: str) -> None:
    out = tmp_path / "deep" / "keys"
    r = run("keys", "new", "--party", party, "--out-dir", out, "--flower-node-key")
    assert r.exit_code == UsageError("").exit_code, r.stdout + r.stderr
    assert _files(tmp_path) == [], "a refused keys new wrote files"


def test_agreement_model_refuses_a_party_id_that_is_a_path(tmp_path: Path) -> None:
    setup = make_setup(tmp_path, agencies=("social_care", "school"))
    text = setup.agreement_path.read_text().replace('id = "school"', 'id = "../school"')
    with pytest.raises(AgreementError, match="parties"):
        parse_agreement(tomllib.loads(text))


@pytest.mark.parametrize("signer", ["social_care", "coordinator"])
def test_node_encode_refuses_a_key_that_is_not_the_partys(tmp_path: Path, people, signer: str) -> None:  # type: ignore[no-untyped-def]
    setup = make_setup(tmp_path, agencies=("social_care", "school"))
    records = write_records(tmp_path / "school.csv", people(5))
    r = run("node", "encode", "--agreement", setup.agreement_path, "--party", "school", "--secret", setup.secret_path,
            "--key", setup.key_path(signer), records, "-o", tmp_path / "out" / "school.enc")
    assert r.exit_code == KeyFileError("").exit_code, r.stdout + r.stderr
    assert "not school's key in the agreement" in r.stderr
    assert not (tmp_path / "out").exists()
