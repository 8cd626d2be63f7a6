"""Party key files on disk: ``<dir>/<party>.key`` (private, 0600) and ``<dir>/<party>.pub``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pplink.crypto import generate_signing_key, load_public_key_file, public_key_text, write_private_key
from pplink.errors import KeyFileError

__all__ = ["ensure_party_keys", "new_party_keys", "private_key_path", "public_key_path"]


def private_key_path(keys_dir: Path, party: str) -> Path:
    """Where a party's private key lives in a keys directory."""
    return Path(keys_dir) / f"{party}.key"


def public_key_path(keys_dir: Path, party: str) -> Path:
    """Where a party's public key lives in a keys directory."""
    return Path(keys_dir) / f"{party}.pub"


def new_party_keys(keys_dir: Path, party: str) -> str:
    """Create a party's key pair; refuses to overwrite. Returns the public key text."""
    key = generate_signing_key()
    priv, pub = private_key_path(keys_dir, party), public_key_path(keys_dir, party)
    if pub.exists():
        raise KeyFileError(f"{pub}: already exists; refusing to overwrite a key")
    write_private_key(key, priv)
    text = public_key_text(key)
    pub.write_text(text + "\n", encoding="ascii")
    return text


def ensure_party_keys(keys_dir: Path, parties: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Public keys for every party, creating the key pairs that do not exist yet.

    Returns:
        ``({party: public key text}, [parties whose keys were created])``.
    """
    out: dict[str, str] = {}
    created: list[str] = []
    for party in parties:
        pub = public_key_path(keys_dir, party)
        if pub.exists():
            out[party] = load_public_key_file(pub)
        else:
            out[party] = new_party_keys(keys_dir, party)
            created.append(party)
    return out, created
