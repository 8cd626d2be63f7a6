"""CKKS homomorphic encryption under the label owner's key (TenSEAL), and signed ciphertext bundles.

The label owner alone holds the secret key. Every per-entity vector that leaves a party is a
CKKS ciphertext under that key: the coordinator relays what it cannot open, the other agencies
compute on what they cannot open, and the label owner decrypts only sums over entities, each
with DP noise already added by the agency that computed it.

Vectors are cut into chunks of :data:`SLOTS` values (one ciphertext each, zero padded). A dot
product with a plaintext vector is one ciphertext-plaintext product per chunk, a chunk sum and a
rotate-and-add sum over the slots: TenSEAL rotates left by 1, 2, 4, ..., 2048, so the public
context carries Galois keys for those 12 rotations only (:data:`SUM_STEPS`), in SEAL's seeded form:
about 9 MB, where TenSEAL's own ``generate_galois_keys`` (every power-of-two rotation both ways,
expanded) makes 34 MB that every agency would receive. The label owner never rotates (it encrypts,
adds and decrypts), so its own context has no Galois keys at all.

Parameters: ring degree 8192, moduli 60/40/40/60 bits, scale 2**40: two plaintext products deep,
about 128-bit security (the SEAL/HE-standard bound for 8192 is 218 bits of modulus). Measured
absolute error of a dot product: 2e-5 on small sums, up to 1.3e-3 on the Gram sums of 20,000
people; the stated sensitivities carry a slack for it (``pplink.scoring.suffstats.CKKS_ERROR_BOUND``).

Bundles are signed by their maker (Ed25519, the agreement's key) over the run, the purpose and
the SHA-256 of every chunk, so the coordinator can relay a ciphertext but never substitute one of
its own making, or one made for another purpose, for the label owner to decrypt.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pplink.agreement import AgreementConfig, canonical_json
from pplink.crypto import sign, verify
from pplink.errors import SignatureError, TransportError

__all__ = ["SLOTS", "SUM_STEPS", "HeSecret", "SignedBundle", "chunked", "dot", "encrypt", "load", "mul_plain",
           "public_context", "round_units", "sign_bundle", "verify_bundle"]

#: Values per ciphertext (half the ring degree).
SLOTS = 4096
_POLY = 8192
_MODULI = (60, 40, 40, 60)
_SCALE = 2.0**40
#: The rotations (left, in slots) of TenSEAL's sum over a :data:`SLOTS`-slot ciphertext.
SUM_STEPS = tuple(2**i for i in range(SLOTS.bit_length() - 1))


def _galois_element(step: int) -> int:
    """SEAL's Galois element for a left rotation by ``step`` slots (``3**step`` mod ``2 * ring degree``).

    >>> _galois_element(1), _galois_element(2)
    (3, 9)
    """
    return pow(3, step, 2 * _POLY)


def _context_message() -> type:
    """TenSEAL's serialised context (``tenseal/proto/tensealcontext.proto``), as a protobuf class.

    Built from its field list here (TenSEAL ships the ``.proto`` but no Python module for it), in a
    pool of its own; only the public part's fields are named, the rest pass through unchanged.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="pplink_tenseal_context.proto", package="pplink_tenseal",
                                               syntax="proto3")
    public = proto.message_type.add(name="Public")
    for number, (name, kind) in enumerate((("public_key", field.TYPE_BYTES), ("auto_flags", field.TYPE_UINT32),
                                           ("scale", field.TYPE_DOUBLE), ("relin_keys", field.TYPE_BYTES),
                                           ("galois_keys", field.TYPE_BYTES)), start=1):
        public.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    context = proto.message_type.add(name="Context")
    context.field.add(name="encryption_parameters", number=1, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    context.field.add(name="public_context", number=2, type=field.TYPE_MESSAGE, type_name=".pplink_tenseal.Public",
                      label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pplink_tenseal.Context"))  # type: ignore[no-any-return]


class HeSecret:
    """The label owner's CKKS key pair for one run (the secret half never leaves it)."""

    def __init__(self) -> None:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=_POLY, coeff_mod_bit_sizes=list(_MODULI))
        ctx.global_scale = _SCALE
        self._ctx = ctx

    @property
    def context(self) -> ts.Context:
        """The private context (encrypts and decrypts)."""
        return self._ctx

    def public_bytes(self) -> bytes:
        """The public context (encryption, products, the Galois keys of :data:`SUM_STEPS`) without the secret key."""
        public = self._ctx.copy()
        public.make_context_public()
        message = _context_message()()
        message.ParseFromString(public.serialize(save_galois_keys=False, save_relin_keys=False))
        message.public_context.galois_keys = self._galois_keys()
        return message.SerializeToString()  # type: ignore[no-any-return]

    def _galois_keys(self) -> bytes:
        """SEAL's seeded serialisation of the Galois keys for :data:`SUM_STEPS` (public key material)."""
        from tenseal import sealapi

        generator = sealapi.KeyGenerator(self._ctx.seal_context().data, self._ctx.secret_key().data)
        keys = generator.create_galois_keys([_galois_element(step) for step in SUM_STEPS])
        with tempfile.TemporaryDirectory(prefix="pplink-galois-") as folder:  # SEAL's binding saves to a file only
            path = os.path.join(folder, "galois")
            keys.save(path)
            with open(path, "rb") as fh:
                return fh.read()

    def decrypt_scalar(self, data: bytes) -> float:
        """Decrypt a one-value ciphertext (a sum over entities)."""
        values = ts.ckks_vector_from(self._ctx, data).decrypt()
        if len(values) != 1:
            # The label owner decrypts only sums; a longer vector could be per-entity data.
            raise TransportError("refused to decrypt a ciphertext that is not a single sum")
        return float(values[0])

    def decrypt_vector(self, chunks: Sequence[bytes], length: int) -> np.ndarray:
        """Decrypt a chunked vector (the label owner's own people's scores only)."""
        parts = [np.asarray(ts.ckks_vector_from(self._ctx, c).decrypt()) for c in chunks]
        return np.concatenate(parts)[:length] if parts else np.zeros(0)


def public_context(data: bytes) -> ts.Context:
    """Load a public context; refuse one that carries a secret key (it would be someone's key)."""
    try:
        ctx = ts.context_from(data)
    except Exception:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise TransportError("the encryption context is malformed") from None
    if ctx.is_private():
        raise TransportError("the encryption context carries a secret key; refusing it")
    return ctx


def chunked(values: np.ndarray) -> list[np.ndarray]:
    """A vector cut into zero-padded chunks of :data:`SLOTS` values (the ciphertext layout)."""
    v = np.asarray(values, dtype=np.float64)
    padded = np.zeros(-(-len(v) // SLOTS) * SLOTS)
    padded[: len(v)] = v
    return [padded[i:i + SLOTS] for i in range(0, len(padded), SLOTS)]


def encrypt(ctx: ts.Context, values: np.ndarray) -> list[bytes]:
    """Encrypt a vector, chunk by chunk."""
    return [ts.ckks_vector(ctx, part.tolist()).serialize() for part in chunked(values)]


def load(ctx: ts.Context, chunks: Sequence[bytes], length: int) -> list[ts.CKKSVector]:
    """Load a chunked ciphertext of a vector of ``length`` values.

    Raises:
        TransportError: malformed, or the wrong number of chunks for ``length``.
    """
    if len(chunks) != -(-length // SLOTS):
        raise TransportError("a ciphertext vector has the wrong number of chunks")
    try:
        return [ts.ckks_vector_from(ctx, c) for c in chunks]
    except Exception:  # noqa: BLE001 - TenSEAL raises bare errors on bad bytes
        raise TransportError("a ciphertext is malformed") from None


def mul_plain(cts: Sequence[ts.CKKSVector], values: np.ndarray) -> list[ts.CKKSVector]:
    """Entry-wise product with a plaintext vector (still per entity, still encrypted)."""
    return [ct * part.tolist() for ct, part in zip(cts, chunked(values), strict=True)]


def dot(cts: Sequence[ts.CKKSVector], values: np.ndarray, *, add: float = 0.0) -> bytes:
    """``sum_i ct_i * values_i + add``, as a one-value ciphertext."""
    total = None
    for ct, part in zip(cts, chunked(values), strict=True):
        product = ct * part.tolist()
        total = product if total is None else total + product
    assert total is not None
    return (total.sum() + [add]).serialize()


def round_units(value: float, unit: int) -> int:
    """A decrypted (noisy) sum in integer units: rounding is post-processing of the noisy value.

    >>> round_units(1.0 + 1e-6, 256)
    256

    Raises:
        TransportError: not a finite number (a wrong ciphertext).
    """
    scaled = value * unit
    if not math.isfinite(scaled):
        raise TransportError("a decrypted sum is not a finite number; the computation went wrong")
    return int(round(scaled))


@dataclass(frozen=True)
class SignedBundle:
    """Named ciphertexts made by one party for one purpose in one run, signed by that party.

    Attributes:
        run_id: the run.
        maker: the agency that made them.
        purpose: what they are for (``owner-setup``, ``forward``, ``block``, ``scores``).
        items: name -> chunks (a vector) or one chunk (a sum).
        signature: Ed25519 over :meth:`payload`.
    """

    run_id: str
    maker: str
    purpose: str
    items: dict[str, tuple[bytes, ...]] = field(repr=False)
    signature: bytes = field(repr=False, default=b"")

    def item(self, name: str) -> tuple[bytes, ...]:
        """One named item.

        Raises:
            TransportError: the bundle has no such item.
        """
        found = self.items.get(name)
        if found is None:
            raise TransportError(f"{self.maker}'s {self.purpose} ciphertexts lack an expected item")
        return found

    def payload(self, agreement_id: str) -> bytes:
        """The signed bytes: run, maker, purpose and each item's chunk digests."""
        return canonical_json({
            "purpose": f"pplink scoring ciphertexts: {self.purpose}", "agreement_id": agreement_id,
            "run_id": self.run_id, "maker": self.maker,
            "items": {name: [hashlib.sha256(c).hexdigest() for c in chunks] for name, chunks in self.items.items()},
        })


def sign_bundle(key: Ed25519PrivateKey, agreement_id: str, bundle: SignedBundle) -> SignedBundle:
    """Sign a bundle with the maker's agreement key."""
    return SignedBundle(bundle.run_id, bundle.maker, bundle.purpose, bundle.items,
                        sign(key, bundle.payload(agreement_id)))


def verify_bundle(agreement: AgreementConfig, bundle: SignedBundle, *, run_id: str, maker: str, purpose: str) -> None:
    """Check who made a bundle, for which run and purpose.

    Raises:
        SignatureError: another maker, run or purpose, or the signature does not verify.
    """
    if bundle.run_id != run_id or bundle.maker != maker or bundle.purpose != purpose:
        raise SignatureError(f"ciphertexts claimed to be {maker}'s {purpose} for this run are not")
    verify(agreement.agency(maker).public_key, bundle.payload(agreement.agreement_id), bundle.signature,
           what=f"{maker}'s {purpose} ciphertexts")
