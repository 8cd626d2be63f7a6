"""Sharing the linkage secret among agencies without the coordinator (or anyone else) reading it.

Each agency has an X25519 exchange key next to its Ed25519 signing key. Its public half travels
as a small JSON file signed with the agency's Ed25519 key, so a sender checks against the
agreement that the exchange key really belongs to the agency it names. Sealing is ECIES-style:

* a fresh ephemeral X25519 key per sealed file; shared secret with the recipient's exchange key;
* HKDF-SHA256 (salt: agreement id; info: sender, recipient) -> a ChaCha20-Poly1305 key;
* the header (agreement id, sender, recipient, ephemeral public key, nonce) is the AEAD's
  associated data, and the sender signs header + ciphertext with its Ed25519 key.

Only agencies may send or receive: sealing to the coordinator or an auditor is refused. A secret
check value (HMAC of a constant under the secret) may be written into the agreement, so a node
using the wrong (for example pre-rotation) secret is stopped before it encodes anything; it
reveals nothing about a 256-bit random secret.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, ValidationError

from pplink.agreement import AgreementConfig, Role, canonical_json
from pplink.crypto import SecretBytes, _check_private_mode, _create_private_file, public_key_text, sign, verify
from pplink.errors import KeyFileError, SecretError
from pplink.models import PplinkModel

__all__ = [
    "ExchangePublicKey",
    "SealedSecret",
    "exchange_key_paths",
    "load_exchange_key",
    "new_exchange_key",
    "open_secret",
    "read_exchange_public",
    "seal_secret",
]

_B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$")]


class ExchangePublicKey(PplinkModel):
    """An agency's X25519 public key, signed with its Ed25519 key from the agreement."""

    format: Literal["pplink-exchange-key"] = "pplink-exchange-key"
    party: str
    x25519: _B64
    signature: _B64 = ""

    def payload(self) -> bytes:
        """The signed bytes: everything but the signature."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))


class SealedSecret(PplinkModel):
    """A linkage secret sealed from one agency to another."""

    format: Literal["pplink-sealed-secret"] = "pplink-sealed-secret"
    version: Literal[1] = 1
    agreement_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    sender: str
    recipient: str
    ephemeral: _B64
    nonce: _B64
    ciphertext: _B64
    signature: _B64 = ""

    def header(self) -> bytes:
        """Associated data for the AEAD: who, to whom, under which agreement, with which keys."""
        return canonical_json(self.model_dump(mode="json", exclude={"ciphertext", "signature"}))

    def payload(self) -> bytes:
        """The signed bytes: header and ciphertext."""
        return canonical_json(self.model_dump(mode="json", exclude={"signature"}))


def exchange_key_paths(keys_dir: Path, party: str) -> tuple[Path, Path]:
    """``(<party>.x25519, <party>.x25519.json)`` in a keys folder."""
    return Path(keys_dir) / f"{party}.x25519", Path(keys_dir) / f"{party}.x25519.json"


def new_exchange_key(keys_dir: Path, party: str, signing_key: Ed25519PrivateKey) -> Path:
    """Create an agency's X25519 exchange key (private 0600) and its signed public file."""
    private, public = exchange_key_paths(keys_dir, party)
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if public.exists():
        raise KeyFileError(f"{public}: already exists; refusing to overwrite a key")
    _create_private_file(private, pem)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    unsigned = ExchangePublicKey(party=party, x25519=base64.b64encode(raw).decode("ascii"))
    signed = unsigned.model_copy(update={"signature": base64.b64encode(sign(signing_key, unsigned.payload())).decode()})
    public.write_text(json.dumps(signed.model_dump(mode="json"), indent=2) + "\n", encoding="ascii")
    return public


def load_exchange_key(path: Path) -> X25519PrivateKey:
    """Load an X25519 private key, refusing files readable by group or others."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{path}: exchange key file not found")
    _check_private_mode(path, "exchange key", KeyFileError)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(f"{path}: not an X25519 key")
    return key


def _agency(agreement: AgreementConfig, party: str, what: str) -> None:
    if party not in {p.id for p in agreement.parties} or agreement.party(party).role is not Role.AGENCY:
        raise SecretError(f"{what} {party!r} is not an agency in this agreement: only agencies hold the secret")


def read_exchange_public(path: Path, agreement: AgreementConfig) -> tuple[str, X25519PublicKey]:
    """Read a signed exchange public key and check it against the agreement's Ed25519 key of its party.

    Raises:
        KeyFileError: unreadable or malformed. SignatureError: not signed by the party it names.
        SecretError: the party is not an agency.
    """
    path = Path(path)
    try:
        pub = ExchangePublicKey.model_validate_json(path.read_bytes())
        raw = base64.b64decode(pub.x25519, validate=True)
        key = X25519PublicKey.from_public_bytes(raw)
    except (OSError, ValidationError, ValueError):
        raise KeyFileError(f"{path}: not a pplink exchange public key") from None
    _agency(agreement, pub.party, "recipient")
    verify(agreement.party(pub.party).public_key, pub.payload(), _b64(pub.signature, str(path)),
           what=f"{path} (exchange key of {pub.party})")
    return pub.party, key


def _b64(text: str, what: str) -> bytes:
    # Canonical base64 only: the decoder ignores padding bits, so two texts could decode alike.
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise SecretError(f"{what}: not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise SecretError(f"{what}: not canonical base64")
    return raw


def _aead_key(shared: bytes, agreement_id: str, sender: str, recipient: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(agreement_id),
                info=f"pplink secret seal v1|{sender}|{recipient}".encode()).derive(shared)


def seal_secret(agreement: AgreementConfig, secret: SecretBytes, *, sender: str, signing_key: Ed25519PrivateKey,
                recipient_public: Path) -> SealedSecret:
    """Seal the secret for the agency whose signed exchange key is ``recipient_public``.

    Raises:
        SecretError: sender or recipient is not an agency, or the signing key is not the sender's.
    """
    _agency(agreement, sender, "sender")
    if public_key_text(signing_key) != agreement.party(sender).public_key:
        raise KeyFileError(f"the signing key given is not {sender}'s key in the agreement")
    recipient, recipient_key = read_exchange_public(recipient_public, agreement)
    ephemeral = X25519PrivateKey.generate()
    eph_raw = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nonce = os.urandom(12)
    draft = SealedSecret(agreement_id=agreement.agreement_id, sender=sender, recipient=recipient,
                         ephemeral=base64.b64encode(eph_raw).decode(), nonce=base64.b64encode(nonce).decode(),
                         ciphertext="")
    key = _aead_key(ephemeral.exchange(recipient_key), agreement.agreement_id, sender, recipient)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, secret.reveal(), draft.header())
    sealed = draft.model_copy(update={"ciphertext": base64.b64encode(ciphertext).decode()})
    return sealed.model_copy(update={"signature": base64.b64encode(sign(signing_key, sealed.payload())).decode()})


def open_secret(agreement: AgreementConfig, sealed_path: Path, *, party: str,
                exchange_key: X25519PrivateKey) -> SecretBytes:
    """Verify and open a sealed secret addressed to ``party``.

    Raises:
        SecretError: malformed, for another party or agreement, or it does not decrypt.
        SignatureError: not signed by the agency it names as sender.
    """
    sealed_path = Path(sealed_path)
    try:
        sealed = SealedSecret.model_validate_json(sealed_path.read_bytes())
    except (OSError, ValidationError):
        raise SecretError(f"{sealed_path}: not a pplink sealed secret") from None
    if sealed.agreement_id != agreement.agreement_id:
        raise SecretError(f"{sealed_path}: sealed under another agreement")
    if sealed.recipient != party:
        raise SecretError(f"{sealed_path}: sealed for {sealed.recipient!r}, not {party!r}")
    _agency(agreement, sealed.sender, "sender")
    verify(agreement.party(sealed.sender).public_key, sealed.payload(), _b64(sealed.signature, str(sealed_path)),
           what=f"{sealed_path} (from {sealed.sender})")
    try:
        eph = X25519PublicKey.from_public_bytes(_b64(sealed.ephemeral, str(sealed_path)))
        key = _aead_key(exchange_key.exchange(eph), sealed.agreement_id, sealed.sender, sealed.recipient)
        raw = ChaCha20Poly1305(key).decrypt(_b64(sealed.nonce, str(sealed_path)),
                                            _b64(sealed.ciphertext, str(sealed_path)), sealed.header())
    except (InvalidTag, ValueError):
        raise SecretError(f"{sealed_path}: does not decrypt with this exchange key") from None
    if len(raw) != 32:
        raise SecretError(f"{sealed_path}: sealed content is not a 256-bit secret")
    return SecretBytes(raw)
