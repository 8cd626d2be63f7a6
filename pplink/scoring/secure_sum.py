"""Secure summation of per-node vectors: fixed point mod 2^64, pairwise masks from X25519.

The coordinator must learn the sum of the nodes' vectors (partial logits, counts) and nothing
about any single node's vector. Each node therefore sends its vector plus masks that cancel in
the sum:

1. **Keys.** For each run, every node makes a fresh X25519 key pair and announces the public half
   through the coordinator, signed with its Ed25519 key from the agreement
   (:func:`announce_mask_key`, :func:`verify_mask_key`). A node only derives masks with keys whose
   signature verifies against the agreement, so the coordinator cannot slip in a key of its own.
2. **Pair seeds.** Nodes ``i`` and ``j`` agree on a 32-byte seed: HKDF-SHA256 of their X25519
   shared secret, salted with the run id and bound to the agreement id and both agency ids
   (:func:`pair_seed`). The coordinator, holding neither private key, cannot compute it.
3. **Masks per step.** Each step and purpose (``"logits"``, ...) expands the seed into a fresh
   ChaCha20 key stream (:func:`mask_stream`; the ChaCha20 key is BLAKE2b of the seed, step and
   purpose): no mask is ever used twice. Node ``i`` adds the stream shared with every ``j`` that
   sorts after it and subtracts the streams shared with every ``j`` that sorts before it, so the
   masks cancel exactly in the sum over all nodes (:func:`masked_share`).
4. **Fixed point.** Values are scaled by ``2**FRACTION_BITS``, rounded to integers and held as
   ``uint64``; all arithmetic is mod ``2**64`` (numpy's wrapping ``uint64`` addition), so a
   masked share is uniformly distributed whatever the value under it, and the sum of the shares
   decodes to the sum of the rounded values **exactly** (:func:`encode_fixed`, :func:`decode_fixed`).
5. **Blinding.** A node that is to receive the sum (the label owner) may also add a *blind*: a
   stream from a seed only it holds. The coordinator then sees only ``sum + blind``, uniform mod
   ``2**64``, and forwards it; the receiver subtracts its blind (:func:`unblind`). So the
   coordinator learns nothing at all, and the receiver learns the sum and nothing else.

Every node must take part in every step (honest-but-curious, no dropout recovery): a missing share
leaves the masks uncancelled, and the coordinator refuses the step rather than release noise.

>>> import numpy as np
>>> from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
>>> keys = {a: X25519PrivateKey.generate() for a in ("a", "b", "c")}
>>> run = "0" * 32
>>> seeds = {a: {b: pair_seed(keys[a], keys[b].public_key(), agreement_id="f" * 64, run_id=run,
...                          own_id=a, peer_id=b) for b in keys if b != a} for a in keys}
>>> values = {"a": [1.5, -2.0], "b": [0.25, 4.0], "c": [-1.0, 0.5]}
>>> shares = [masked_share(encode_fixed(np.array(values[a])), own_id=a, seeds=seeds[a], step=0,
...                        purpose="logits") for a in keys]
>>> decode_fixed(sum_shares(shares)).tolist()
[0.75, 2.5]
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
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
    "FRACTION_BITS",
    "MAX_ABS_VALUE",
    "MaskKeyAnnouncement",
    "announce_mask_key",
    "decode_fixed",
    "encode_fixed",
    "mask_stream",
    "masked_share",
    "new_mask_key",
    "pair_seed",
    "sum_shares",
    "unblind",
    "verify_mask_key",
]

#: Fixed-point fraction bits: values are rounded to multiples of 2**-32.
FRACTION_BITS = 32
_SCALE = float(1 << FRACTION_BITS)
#: Largest magnitude one node may encode. Sums of up to 2**7 such values stay below 2**63 / 2**32,
#: so a decoded sum is never wrapped.
MAX_ABS_VALUE = float(1 << 24)

_SEED_BYTES = 32
_KEY_LABEL = "pplink secure-sum key v1"
_HKDF_INFO = b"pplink secure-sum pair v1"
_STREAM_PERSON = b"pplink-mask-v1"  # BLAKE2b personalisation (max 16 bytes)

RunId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
PartyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


# --- fixed point ------------------------------------------------------------------------------


def encode_fixed(values: np.ndarray) -> np.ndarray:
    """Real values to fixed point mod 2**64 (``uint64``, two's complement for negatives).

    Args:
        values: finite floats with ``|v| <= MAX_ABS_VALUE``.

    Returns:
        ``round(v * 2**FRACTION_BITS)`` as ``uint64``.

    Raises:
        ConfigError: a value is not finite or too large (the message names the position, not the value).

    >>> encode_fixed(np.array([1.0, -1.0])).tolist() == [2**32, 2**64 - 2**32]
    True
    """
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr) | (np.abs(arr) > MAX_ABS_VALUE)
    if bad.any():
        where = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ConfigError(
            f"secure sum: value at position {where} is not finite or exceeds {MAX_ABS_VALUE:g} in magnitude"
        )
    return np.rint(arr * _SCALE).astype(np.int64).view(np.uint64)


def decode_fixed(encoded: np.ndarray) -> np.ndarray:
    """Fixed point mod 2**64 back to floats (the inverse of :func:`encode_fixed` on its range).

    >>> decode_fixed(encode_fixed(np.array([0.5, -3.25]))).tolist()
    [0.5, -3.25]
    """
    return np.asarray(encoded, dtype=np.uint64).view(np.int64).astype(np.float64) / _SCALE


def sum_shares(shares: Sequence[np.ndarray]) -> np.ndarray:
    """Add ``uint64`` shares mod 2**64: what the coordinator does.

    Raises:
        ConfigError: no shares, or shares of different lengths or types.

    >>> sum_shares([np.array([2**63], dtype=np.uint64), np.array([2**63 + 5], dtype=np.uint64)]).tolist()
    [5]
    """
    if not shares:
        raise ConfigError("secure sum: no shares to add")
    first = np.asarray(shares[0])
    total = np.zeros(first.shape, dtype=np.uint64)
    for i, share in enumerate(shares):
        arr = np.asarray(share)
        if arr.dtype != np.uint64 or arr.shape != first.shape:
            raise ConfigError(f"secure sum: share {i} is not a uint64 vector of shape {first.shape}")
        total += arr  # uint64 array addition wraps mod 2**64 without a warning
    return total


# --- keys -------------------------------------------------------------------------------------


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


def masked_share(
    encoded: np.ndarray,
    *,
    own_id: str,
    seeds: Mapping[str, bytes],
    step: int,
    purpose: str,
    blind_seed: bytes | None = None,
) -> np.ndarray:
    """A node's share: its fixed-point vector plus pairwise masks (and its blind, if it has one).

    Args:
        encoded: the node's vector from :func:`encode_fixed`.
        own_id: this node's agency id.
        seeds: ``{peer agency id: pair seed}`` for every other node in the sum.
        step: the step number (masks are fresh per step).
        purpose: what is being summed; masks are fresh per purpose too.
        blind_seed: a seed only this node holds; the receiver of the sum passes it to :func:`unblind`.

    Returns:
        ``encoded + sum_{j > own} m_ij - sum_{j < own} m_ij (+ blind)`` mod 2**64.
    """
    share = np.asarray(encoded, dtype=np.uint64).copy()
    n = share.shape[0]
    for peer in sorted(seeds):
        stream = mask_stream(seeds[peer], step=step, purpose=purpose, length=n)
        if own_id < peer:
            share += stream
        else:
            share -= stream  # wraps mod 2**64
    if blind_seed is not None:
        share += mask_stream(blind_seed, step=step, purpose=f"blind|{purpose}", length=n)
    return share


def unblind(blinded_sum: np.ndarray, blind_seed: bytes, *, step: int, purpose: str) -> np.ndarray:
    """Remove the receiver's blind from a summed vector (still fixed point; see :func:`decode_fixed`)."""
    total = np.asarray(blinded_sum, dtype=np.uint64)
    return total - mask_stream(blind_seed, step=step, purpose=f"blind|{purpose}", length=total.shape[0])

