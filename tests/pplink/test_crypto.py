"""Keys and secret: private material is owner-only, signatures bind data, keys are per agreement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pplink.crypto import (
    SecretBytes,
    derive_linkage_key,
    generate_signing_key,
    load_private_key,
    load_secret,
    new_secret,
    public_key_text,
    sign,
    verify,
    write_private_key,
    write_secret,
)
from pplink.errors import KeyFileError, SecretError, SignatureError


def test_private_key_file_is_0600_and_loads(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = tmp_path / "a.key"
    write_private_key(key, path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert public_key_text(load_private_key(path)) == public_key_text(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_private_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "a.key"
    write_private_key(generate_signing_key(), path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="group or others"):
        load_private_key(path)


def test_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "a.key"
    write_private_key(generate_signing_key(), path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_private_key(generate_signing_key(), path)


def test_signature_binds_data_and_key() -> None:
    a, b = generate_signing_key(), generate_signing_key()
    sig = sign(a, b"hello")
    verify(public_key_text(a), b"hello", sig, what="x")
    with pytest.raises(SignatureError):
        verify(public_key_text(a), b"hellO", sig, what="x")
    with pytest.raises(SignatureError):
        verify(public_key_text(b), b"hello", sig, what="x")


def test_secret_roundtrip_permissions_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = new_secret()
    path = tmp_path / "s.secret"
    write_secret(secret, path)
    assert load_secret(path) == secret
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="group or others"):
        load_secret(path)
    monkeypatch.setenv("PPLINK_SECRET", secret.reveal().hex())
    assert load_secret(None) == secret
    monkeypatch.setenv("PPLINK_SECRET", "abc")
    with pytest.raises(SecretError):
        load_secret(None)


def test_secret_never_shows_in_repr() -> None:
    secret = SecretBytes(bytes(range(32)))
    assert secret.reveal().hex() not in repr(secret) + str(secret)


def test_linkage_key_depends_on_agreement_and_secret() -> None:
    s1, s2 = SecretBytes(bytes(32)), SecretBytes(bytes([1] * 32))
    a, b = "0" * 64, "1" * 64
    keys = {derive_linkage_key(s, x) for s in (s1, s2) for x in (a, b)}
    assert len(keys) == 4
    assert derive_linkage_key(s1, a) == derive_linkage_key(s1, a)
