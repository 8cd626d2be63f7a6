"""Sharing the secret: only the addressed agency can open it; forgeries and wrong secrets are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodes.encode import encode_file
from nodes.secret_sharing import (
    exchange_key_paths,
    load_exchange_key,
    new_exchange_key,
    open_secret,
    seal_secret,
)
from pplink.cli.main import cli
from pplink.crypto import SecretBytes, new_secret, secret_check
from pplink.errors import KeyFileError, SecretError, SignatureError
from tests.support import Setup, make_setup, write_records


def _sealed(setup: Setup, tmp_path: Path, secret: SecretBytes, to: str = "school") -> Path:
    new_exchange_key(setup.keys_dir, to, setup.key(to))
    sealed = seal_secret(setup.agreement, secret, sender="social_care", signing_key=setup.key("social_care"),
                         recipient_public=exchange_key_paths(setup.keys_dir, to)[1])
    path = tmp_path / f"{to}.sealed"
    path.write_text(sealed.model_dump_json())
    return path


def test_roundtrip_only_for_the_recipient(setup: Setup, tmp_path: Path) -> None:
    secret = new_secret()
    path = _sealed(setup, tmp_path, secret)
    key = load_exchange_key(exchange_key_paths(setup.keys_dir, "school")[0])
    assert open_secret(setup.agreement, path, party="school", exchange_key=key) == secret
    # The sealed file never contains the secret's bytes in any form we can see.
    assert secret.reveal().hex() not in path.read_text()
    # Another agency's exchange key cannot open it, even if it claims to be the recipient.
    new_exchange_key(setup.keys_dir, "health", setup.key("health"))
    other = load_exchange_key(exchange_key_paths(setup.keys_dir, "health")[0])
    with pytest.raises(SecretError, match="does not decrypt"):
        open_secret(setup.agreement, path, party="school", exchange_key=other)
    with pytest.raises(SecretError, match="sealed for 'school'"):
        open_secret(setup.agreement, path, party="health", exchange_key=other)


def test_tampering_is_refused(setup: Setup, tmp_path: Path) -> None:
    path = _sealed(setup, tmp_path, new_secret())
    key = load_exchange_key(exchange_key_paths(setup.keys_dir, "school")[0])
    data = json.loads(path.read_text())
    for field in ("ciphertext", "nonce", "ephemeral", "sender"):
        bad = dict(data)
        if field == "sender":
            bad[field] = "health"  # claims another sender: its signature cannot match
        else:
            raw = bytearray(__import__("base64").b64decode(bad[field]))
            raw[0] ^= 1
            bad[field] = __import__("base64").b64encode(bytes(raw)).decode()
        path.write_text(json.dumps(bad))
        with pytest.raises((SignatureError, SecretError)):
            open_secret(setup.agreement, path, party="school", exchange_key=key)


def test_never_sealed_to_the_coordinator(setup: Setup, tmp_path: Path) -> None:
    # The coordinator makes an exchange key "for itself": sealing to it is refused.
    new_exchange_key(setup.keys_dir, "coordinator", setup.key("coordinator"))
    with pytest.raises(SecretError, match="not an agency"):
        seal_secret(setup.agreement, new_secret(), sender="social_care", signing_key=setup.key("social_care"),
                    recipient_public=exchange_key_paths(setup.keys_dir, "coordinator")[1])


def test_forged_exchange_key_is_refused(setup: Setup, tmp_path: Path) -> None:
    # The coordinator substitutes its own exchange key but labels it as the school's.
    new_exchange_key(tmp_path / "evil", "school", setup.key("coordinator"))
    with pytest.raises(SignatureError, match="exchange key of school"):
        seal_secret(setup.agreement, new_secret(), sender="social_care", signing_key=setup.key("social_care"),
                    recipient_public=exchange_key_paths(tmp_path / "evil", "school")[1])
    with pytest.raises(KeyFileError, match="not social_care's key"):
        seal_secret(setup.agreement, new_secret(), sender="social_care", signing_key=setup.key("health"),
                    recipient_public=exchange_key_paths(tmp_path / "evil", "school")[1])


def test_rotated_secret_is_stopped_before_encoding(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    old = new_secret()
    setup = make_setup(tmp_path, edit=lambda t: t.replace('name = "Early help linkage pilot"',
                                                          'name = "Early help linkage pilot"\n'
                                                          f'secret_check = "{secret_check(old)}"'))
    records = write_records(tmp_path / "s.csv", people(5))
    # setup.secret is a fresh secret, not the one the agreement names.
    with pytest.raises(SecretError, match="does not match the agreement's secret_check"):
        encode_file(setup.agreement, "school", setup.secret, setup.key("school"), records, tmp_path / "s.enc")
    assert not (tmp_path / "s.enc").exists()
    summary = encode_file(setup.agreement, "school", old, setup.key("school"), records, tmp_path / "s.enc")
    assert summary.encoded == 5


def test_cli_seal_and_open(setup: Setup, tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["secret", "exchange-key", "--party", "school", "--key", str(setup.key_path("school")),
                  "--keys-dir", str(setup.keys_dir)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = run(cli, ["secret", "seal", "--agreement", str(setup.agreement_path), "--from", "social_care", "--key",
                  str(setup.key_path("social_care")), "--to", str(setup.keys_dir / "school.x25519.json"),
                  "--secret", str(setup.secret_path), "-o", str(tmp_path / "s.sealed")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = run(cli, ["secret", "open", "--agreement", str(setup.agreement_path), "--party", "school",
                  "--exchange-key", str(setup.keys_dir / "school.x25519"), str(tmp_path / "s.sealed"),
                  "-o", str(tmp_path / "school.secret")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "school.secret").read_text() == setup.secret_path.read_text()
    r = run(cli, ["secret", "check", str(tmp_path / "school.secret")])
    assert r.output.strip() == secret_check(setup.secret)
