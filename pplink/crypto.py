"""Keys, signatures and the linkage secret.

* Every party holds an Ed25519 signing key; the agreement names its public key as
  ``ed25519:<base64 of the 32 raw bytes>``. Private keys are PKCS#8 PEM files created ``0600`` and
  refused when group or others can read them.
* Agencies share a 256-bit linkage secret. The coordinator never holds it. Encoding keys are
  derived per agreement (HKDF-SHA256 with the agreement id as salt), so encodings made under two
  agreements cannot be linked to each other.

Messages never contain key bytes or the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as _secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pplink.errors import KeyFileError, SecretError, SignatureError

__all__ = [
    "PUBLIC_KEY_PREFIX",
    "SECRET_ENV_VAR",
    "SecretBytes",
    "derive_linkage_key",
    "generate_signing_key",
    "load_private_key",
    "load_public_key_file",
    "load_secret",
    "new_secret",
    "parse_public_key",
    "public_key_text",
    "secret_check",
    "sign",
    "verify",
    "write_derived_key",
    "write_private_key",
    "write_secret",
]

PUBLIC_KEY_PREFIX = "ed25519:"
SECRET_ENV_VAR = "PPLINK_SECRET"
_SECRET_HEADER = "pplink-linkage-secret-v1"
SECRET_BYTES = 32


class SecretBytes:
    r"""Bytes that never show themselves in ``repr``, ``str`` or tracebacks.

    >>> s = SecretBytes(b"\x00" * 32)
    >>> repr(s)
    'SecretBytes(<32 bytes hidden>)'
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """Return the raw bytes; call only where they are used for key derivation."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretBytes(<{len(self._value)} bytes hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretBytes) and _secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value).digest())


# --- signing keys -------------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    """Create a new Ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``ed25519:<base64>`` form of a public key, as the agreement stores it."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>`` into a public key.

    Raises:
        KeyFileError: the text is not of that form.
    """
    if not text.startswith(PUBLIC_KEY_PREFIX):
        raise KeyFileError(f"public key must start with {PUBLIC_KEY_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFileError("public key is not 32 bytes of valid base64") from exc


def _create_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable only by its owner (never widened, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key or secret") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_derived_key(key: bytes, path: Path) -> None:
    """Write a derived encoding key (:func:`derive_linkage_key`) to a new 0600 file; refuses to overwrite."""
    try:
        _create_private_file(Path(path), key + b"\n")
    except KeyFileError as exc:
        raise SecretError(str(exc)) from None


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a private key as PKCS#8 PEM, mode 0600; refuses to overwrite."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _create_private_file(Path(path), pem)


def _check_private_mode(path: Path, what: str, error: type[KeyFileError] | type[SecretError]) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{path}: {what} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key, refusing files that group or others can read.

    Raises:
        KeyFileError: missing, too readable, or not an Ed25519 PKCS#8 PEM key.
    """
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{path}: private key file not found")
    with open(path, "rb") as fh:
        head = fh.read(200)
    # Checked before the file mode, so a public key gets "wrong file", not advice to chmod it.
    if head.lstrip().startswith(b"ed25519:") or b"PUBLIC KEY" in head:
        raise KeyFileError(f"{path}: this is a public key; --key needs the private key that `pplink keys new` "
                           f"wrote beside it ({path.with_suffix('.key').name})")
    _check_private_mode(path, "private key", KeyFileError)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def load_public_key_file(path: Path) -> str:
    """Read a ``.pub`` file written by ``pplink keys new`` and return its ``ed25519:`` text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read public key") from exc
    parse_public_key(text)
    return text


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Sign ``data``; returns the 64-byte Ed25519 signature."""
    return key.sign(data)


def verify(public_key: str | Ed25519PublicKey, data: bytes, signature: bytes, *, what: str) -> None:
    """Verify an Ed25519 signature.

    Args:
        public_key: ``ed25519:`` text or a key object.
        data: the signed bytes.
        signature: the 64-byte signature.
        what: names the artefact in the error message (a file name, "ledger entry 3").

    Raises:
        SignatureError: the signature does not verify.
    """
    pub = parse_public_key(public_key) if isinstance(public_key, str) else public_key
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(f"{what}: signature does not verify against the agreement's key") from None


# --- linkage secret -----------------------------------------------------------------------------


def new_secret() -> SecretBytes:
    """A fresh 256-bit linkage secret from the OS's CSPRNG."""
    return SecretBytes(_secrets.token_bytes(SECRET_BYTES))


def _secret_text(secret: SecretBytes) -> str:
    return f"{_SECRET_HEADER}\n{secret.reveal().hex()}\n"


def _parse_secret_text(text: str, where: str) -> SecretBytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    body = lines[-1] if lines else ""
    if len(lines) == 2 and lines[0] != _SECRET_HEADER:
        raise SecretError(f"{where}: not a pplink linkage secret")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise SecretError(f"{where}: linkage secret is not hexadecimal") from None
    if len(raw) != SECRET_BYTES:
        raise SecretError(f"{where}: linkage secret must be {SECRET_BYTES} bytes")
    return SecretBytes(raw)


def write_secret(secret: SecretBytes, path: Path) -> None:
    """Write the secret to a new 0600 file; refuses to overwrite."""
    try:
        _create_private_file(Path(path), _secret_text(secret).encode("ascii"))
    except KeyFileError as exc:
        raise SecretError(str(exc)) from None


def load_secret(path: Path | None) -> SecretBytes:
    """Load the linkage secret from a file, or from ``$PPLINK_SECRET`` when ``path`` is None.

    Raises:
        SecretError: missing, too readable, or malformed.
    """
    if path is None:
        value = os.environ.get(SECRET_ENV_VAR)
        if not value:
            raise SecretError(f"no secret file given and ${SECRET_ENV_VAR} is not set")
        return _parse_secret_text(value, f"${SECRET_ENV_VAR}")
    path = Path(path)
    if not path.is_file():
        raise SecretError(f"{path}: secret file not found")
    _check_private_mode(path, "linkage secret", SecretError)
    return _parse_secret_text(path.read_text(encoding="ascii", errors="replace"), str(path))


def secret_check(secret: SecretBytes) -> str:
    """A check value for the agreement: lets a node detect a wrong secret, reveals nothing of it.

    HMAC-SHA256 of a constant under the secret, truncated to 128 bits: without the 256-bit
    secret it can neither be computed nor inverted.

    >>> secret_check(SecretBytes(bytes(32)))[:8], len(secret_check(SecretBytes(bytes(32))))
    ('a5825e08', 32)
    """
    return hmac.new(secret.reveal(), b"pplink linkage secret check v1", hashlib.sha256).hexdigest()[:32]


def derive_linkage_key(secret: SecretBytes, agreement_id: str) -> bytes:
    """Derive the per-agreement encoding key from the shared secret.

    HKDF-SHA256 with the agreement id as salt: the same secret under two agreements yields
    unrelated keys, so their encodings cannot be linked. The 32 derived bytes are returned as 64
    lower-case hex characters (ASCII bytes): clkhash's tools take their secret as a text argument
    and hash its UTF-8 bytes, so a party using anonlink-client gives this text and gets the very
    encodings pplink makes (``pplink secret derive-key``).

    >>> s = SecretBytes(bytes(32))
    >>> derive_linkage_key(s, "a" * 64) != derive_linkage_key(s, "b" * 64)
    True
    >>> len(derive_linkage_key(s, "a" * 64)), derive_linkage_key(s, "a" * 64).isascii()
    (64, True)
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(agreement_id),
                info=b"pplink clk key v1")
    return hkdf.derive(secret.reveal()).hex().encode("ascii")


@dataclass(frozen=True)
class KeyPairPaths:
    """Where ``pplink keys new`` put a party's key files."""

    private: Path
    public: Path
