"""Party key files on disk.

* ``<dir>/<party>.key`` (private, 0600) and ``<dir>/<party>.pub``: the party's Ed25519 signing key,
  named in the agreement; it signs every artefact and message.
* ``<dir>/<party>.flwr`` (private, 0600) and ``<dir>/<party>.flwr.pub``: an agency's Flower
  node-authentication key (ECDSA P-384 in OpenSSH format, as Flower 1.41's SuperNode wants). The
  coordinator registers the ``.flwr.pub`` of every agency with its SuperLink; a SuperNode whose key
  is not registered is refused before it can receive anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pplink.agreement import check_party_id
from pplink.crypto import generate_signing_key, load_public_key_file, public_key_text, write_private_key
from pplink.errors import KeyFileError

__all__ = [
    "ensure_flower_node_keys",
    "ensure_party_keys",
    "flower_private_key_path",
    "flower_public_key_path",
    "load_flower_public_key",
    "new_flower_node_key",
    "new_party_keys",
    "private_key_path",
    "public_key_path",
]

#: Flower 1.41 accepts NIST curves only for node authentication.
_FLOWER_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def private_key_path(keys_dir: Path, party: str) -> Path:
    """Where a party's private key lives in a keys directory."""
    return Path(keys_dir) / f"{check_party_id(party)}.key"


def public_key_path(keys_dir: Path, party: str) -> Path:
    """Where a party's public key lives in a keys directory."""
    return Path(keys_dir) / f"{check_party_id(party)}.pub"


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
    for party in parties:  # every id checked before the first key is written
        check_party_id(party)
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


def flower_private_key_path(keys_dir: Path, party: str) -> Path:
    """Where an agency's Flower node-authentication private key lives (``<party>.flwr``)."""
    return Path(keys_dir) / f"{check_party_id(party)}.flwr"


def flower_public_key_path(keys_dir: Path, party: str) -> Path:
    """Where an agency's Flower node-authentication public key lives (``<party>.flwr.pub``)."""
    return Path(keys_dir) / f"{check_party_id(party)}.flwr.pub"


def new_flower_node_key(keys_dir: Path, party: str) -> Path:
    """Create an agency's Flower node-authentication key pair; refuses to overwrite.

    The private key is ECDSA P-384 in OpenSSH format, created 0600; the public key is one
    OpenSSH line (``ecdsa-sha2-nistp384 … pplink:<party>``).

    Returns:
        The public key path.

    Raises:
        KeyFileError: either file already exists.
    """
    priv, pub = flower_private_key_path(keys_dir, party), flower_public_key_path(keys_dir, party)
    for path in (priv, pub):
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    priv.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub.write_bytes(public + f" pplink:{party}\n".encode("ascii"))
    return pub


def ensure_flower_node_keys(keys_dir: Path, parties: Sequence[str]) -> list[str]:
    """Create the Flower node-authentication keys that do not exist yet.

    Returns:
        The parties whose keys were created.
    """
    for party in parties:  # every id checked before the first key is written
        check_party_id(party)
    created = []
    for party in parties:
        if not flower_public_key_path(keys_dir, party).exists():
            new_flower_node_key(keys_dir, party)
            created.append(party)
    return created


def load_flower_public_key(path: Path) -> bytes:
    """Read and check a Flower node-authentication public key (OpenSSH, ECDSA on a NIST curve).

    Returns:
        The key in Flower's wire form (PEM SubjectPublicKeyInfo), as the SuperLink reports it.

    Raises:
        KeyFileError: missing, unreadable, or not an ECDSA key on a NIST curve.
    """
    path = Path(path)
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read Flower node key ({exc.strerror})") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _FLOWER_CURVES):
        raise KeyFileError(f"{path}: Flower node keys must be ECDSA on a NIST curve (P-256, P-384, P-521)")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
