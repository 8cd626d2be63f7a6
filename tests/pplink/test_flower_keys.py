"""Flower node keys and the air-gapped environment every Flower process gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pplink.errors import KeyFileError, UsageError
from pplink.keystore import (
    ensure_flower_node_keys,
    flower_private_key_path,
    flower_public_key_path,
    load_flower_public_key,
    new_flower_node_key,
)
from pplink.transport.flower_env import flower_env, split_address


def test_flower_node_keys_are_ecdsa_openssh_and_private(tmp_path: Path) -> None:
    """Invariant: the private key is an OpenSSH ECDSA key readable by its owner only, and the
    public key loads into exactly the PEM form the SuperLink reports for the node."""
    pub = new_flower_node_key(tmp_path, "school")
    priv = flower_private_key_path(tmp_path, "school")
    assert pub == flower_public_key_path(tmp_path, "school")
    assert priv.stat().st_mode & 0o077 == 0
    key = serialization.load_ssh_private_key(priv.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert load_flower_public_key(pub) == pem
    with pytest.raises(KeyFileError, match="already exists"):
        new_flower_node_key(tmp_path, "school")


def test_ensure_creates_only_the_missing_flower_keys(tmp_path: Path) -> None:
    """Invariant: existing keys are kept, missing ones created, and the created ones reported."""
    new_flower_node_key(tmp_path, "school")
    before = flower_public_key_path(tmp_path, "school").read_bytes()
    assert ensure_flower_node_keys(tmp_path, ["school", "health"]) == ["health"]
    assert flower_public_key_path(tmp_path, "school").read_bytes() == before


def test_non_nist_or_malformed_public_keys_are_refused(tmp_path: Path) -> None:
    """Invariant: only ECDSA keys on NIST curves are accepted, as Flower requires."""
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "ed.flwr.pub"
    path.write_bytes(ed.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(KeyFileError, match="NIST"):
        load_flower_public_key(path)
    path.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an OpenSSH public key"):
        load_flower_public_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_flower_public_key(tmp_path / "missing.pub")


def test_flower_processes_are_air_gapped() -> None:
    """Invariant: telemetry and the update check are off whatever the caller's environment says."""
    env = flower_env(None, base={"FLWR_TELEMETRY_ENABLED": "1", "PATH": "/bin"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["PATH"].endswith("/bin") and "FLWR_HOME" not in env


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:", ":9091", "host:99999", "host:x"])
def test_bad_addresses_are_refused(address: str) -> None:
    """Invariant: an address must be HOST:PORT with a valid port."""
    with pytest.raises(UsageError):
        split_address(address)
