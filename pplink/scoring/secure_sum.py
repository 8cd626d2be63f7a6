"""Pairwise masks between agencies: signed X25519 keys, pair seeds, ChaCha20 mask streams.

The sufficient-statistics protocol masks each agency's encrypted partial scores so that the label
owner, summing them, can decrypt each of its people's total score but no single agency's part:

1. **Keys.** For each run, every node makes a fresh X25519 key pair and announces the public half
   through the coordinator, signed with its Ed25519 key from the agreement
   (:func:`announce_mask_key`, :func:`verify_mask_key`). A node only derives masks with keys whose
   signature verifies against the agreement, so the coordinator cannot slip in a key of its own.
2. **Pair seeds.** Nodes ``i`` and ``j`` agree on a 32-byte seed: HKDF-SHA256 of their X25519
   shared secret, salted with the run id and bound to the agreement id and both agency ids
   (:func:`pair_seed`). The coordinator, holding neither private key, cannot compute it.
3. **Mask streams.** A seed expands into a ChaCha20 key stream per (step, purpose)
   (:func:`mask_stream`); node ``i`` adds the stream shared with every ``j`` after it and subtracts
   those shared with every ``j`` before it, so the masks cancel in the sum over all nodes
   (``nodes.scoring.suffstats``).

(The residual protocol's fixed-point secure sum and blinding were removed with it; issue #13.)

>>> from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
>>> a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
>>> ab = pair_seed(a, b.public_key(), agreement_id="f" * 64, run_id="0" * 32, own_id="a", peer_id="b")
>>> ab == pair_seed(b, a.public_key(), agreement_id="f" * 64, run_id="0" * 32, own_id="b", peer_id="a")
True
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import Field, StringConstraints

from pplink.agreement import AgreementConfig, canonical_json
from pplink.crypto import sign, verify
from pplink.errors import AgreementMismatchError, ConfigError, SignatureError
from pplink.models import PplinkModel

__all__ = [
    "MaskKeyAnnouncement",
    "announce_mask_key",
    "mask_stream",
    "new_mask_key",
    "pair_seed",
    "verify_mask_key",
]

_SEED_BYTES = 32
_KEY_LABEL = "pplink secure-sum key v1"
_HKDF_INFO = b"pplink secure-sum pair v1"
_STREAM_PERSON = b"pplink-mask-v1"  # BLAKE2b personalisation (max 16 bytes)

RunId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PartyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


def new_mask_key() -> X25519PrivateKey:
    """A fresh X25519 key for one run's masks (never reused across runs)."""
    return X25519PrivateKey.generate()


def _raw_public(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class MaskKeyAnnouncement(PplinkModel):
    """A node's X25519 public key for one run, signed with its Ed25519 key from the agreement.

    Attributes:
        agreement_id: the agreement the run is under.
        run_id: the run (32 hex characters), so a key cannot be replayed into another run.
        agency_id: the announcing agency.
        public_key: base64 of the 32 raw X25519 public-key bytes.
        signature: base64 Ed25519 signature over :meth:`payload`.
    """

    agreement_id: HexDigest
    run_id: RunId
    agency_id: PartyId
    public_key: Annotated[str, Field(min_length=44, max_length=44)]
    signature: Annotated[str, Field(min_length=1)]

    def payload(self) -> bytes:
        """The signed bytes: canonical JSON of every field but the signature, with a purpose label."""
        return canonical_json({
            "purpose": _KEY_LABEL, "agreement_id": self.agreement_id, "run_id": self.run_id,
            "agency_id": self.agency_id, "public_key": self.public_key,
        })


def announce_mask_key(
    signing_key: Ed25519PrivateKey, mask_key: X25519PrivateKey, *, agreement_id: str, run_id: str, agency_id: str
) -> MaskKeyAnnouncement:
    """Sign a node's X25519 public key for one run.

    Args:
        signing_key: the agency's Ed25519 key (its public half is in the agreement).
        mask_key: the run's X25519 key (from :func:`new_mask_key`).
        agreement_id: the agreement id.
        run_id: the run id.
        agency_id: the agency.
    """
    unsigned = MaskKeyAnnouncement(
        agreement_id=agreement_id, run_id=run_id, agency_id=agency_id,
        public_key=base64.b64encode(_raw_public(mask_key)).decode("ascii"), signature="-",
    )
    signature = base64.b64encode(sign(signing_key, unsigned.payload())).decode("ascii")
    return unsigned.model_copy(update={"signature": signature})


def verify_mask_key(agreement: AgreementConfig, announcement: MaskKeyAnnouncement, *, run_id: str) -> X25519PublicKey:
    """Check an announcement and return its X25519 public key.

    Raises:
        AgreementMismatchError: made under another agreement or for another run.
        SignatureError: the signature does not verify against the agency's key in the agreement.
        AgreementError: the agency is not an agency of the agreement.
    """
    if announcement.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError(f"mask key of {announcement.agency_id}: made under another agreement")
    if announcement.run_id != run_id:
        raise AgreementMismatchError(f"mask key of {announcement.agency_id}: announced for another scoring run")
    party = agreement.agency(announcement.agency_id)
    try:
        signature = base64.b64decode(announcement.signature, validate=True)
        raw = base64.b64decode(announcement.public_key, validate=True)
    except ValueError:
        raise SignatureError(f"mask key of {announcement.agency_id}: not valid base64") from None
    verify(party.public_key, announcement.payload(), signature, what=f"mask key of {announcement.agency_id}")
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SignatureError(f"mask key of {announcement.agency_id}: not a 32-byte X25519 key") from None


def pair_seed(
    own_key: X25519PrivateKey, peer_key: X25519PublicKey, *, agreement_id: str, run_id: str, own_id: str, peer_id: str
) -> bytes:
    """The 32-byte seed two nodes share for one run (both compute the same bytes).

    HKDF-SHA256 of the X25519 shared secret, salt = the run id, info binding the agreement id and
    both agency ids (sorted), so the seed differs per run, per agreement and per pair.

    Raises:
        ConfigError: the two ids are equal.
        SignatureError: the peer key is a low-order point (the exchange gives all zeros).
    """
    if own_id == peer_id:
        raise ConfigError("secure sum: a node cannot pair with itself")
    try:
        shared = own_key.exchange(peer_key)
    except ValueError:
        raise SignatureError(f"mask key of {peer_id}: key exchange failed (low-order point)") from None
    low, high = sorted((own_id, peer_id))
    info = b"|".join((_HKDF_INFO, agreement_id.encode("ascii"), low.encode("ascii"), high.encode("ascii")))
    return HKDF(algorithm=hashes.SHA256(), length=_SEED_BYTES, salt=bytes.fromhex(run_id), info=info).derive(shared)


# --- masks ------------------------------------------------------------------------------------


def mask_stream(seed: bytes, *, step: int, purpose: str, length: int) -> np.ndarray:
    """A uniform ``uint64`` vector from a seed, fresh for every (step, purpose).

    The ChaCha20 key is BLAKE2b-256 of ``step|purpose`` keyed with the seed; the stream is
    ChaCha20's key stream (an all-zero nonce is safe because every key is used once).

    >>> a = mask_stream(bytes(32), step=0, purpose="logits", length=4)
    >>> b = mask_stream(bytes(32), step=1, purpose="logits", length=4)
    >>> a.dtype.name, bool((a != b).all()), bool((a == mask_stream(bytes(32), step=0, purpose="logits",
    ...                                                            length=4)).all())
    ('uint64', True, True)
    """
    if len(seed) != _SEED_BYTES:
        raise ConfigError(f"secure sum: a mask seed must be {_SEED_BYTES} bytes")
    if step < 0 or length < 0:
        raise ConfigError("secure sum: step and length must be non-negative")
    key = hashlib.blake2b(f"{step}|{purpose}".encode(), key=seed, digest_size=32, person=_STREAM_PERSON).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)), dtype=np.uint64).copy()
