"""Pairwise masks: fresh mask streams, matching pair seeds, authenticated keys."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pplink.errors import AgreementError, AgreementMismatchError, ConfigError, SignatureError
from pplink.scoring.secure_sum import announce_mask_key, mask_stream, pair_seed, verify_mask_key
from tests.support import make_setup

AGREEMENT_ID = "a" * 64
RUN_ID = "0123456789abcdef0123456789abcdef"
NODES = ("health", "police", "school", "social_care")


def _keys(tag: str = "k") -> dict[str, X25519PrivateKey]:
    # Seeded keys, so the statistical tests below are deterministic.
    return {a: X25519PrivateKey.from_private_bytes(hashlib.sha256(f"{tag}:{a}".encode()).digest()) for a in NODES}


def _seeds(keys: dict[str, X25519PrivateKey], run_id: str = RUN_ID) -> dict[str, dict[str, bytes]]:
    return {a: {b: pair_seed(keys[a], keys[b].public_key(), agreement_id=AGREEMENT_ID, run_id=run_id, own_id=a,
                             peer_id=b) for b in keys if b != a} for a in keys}


def test_masks_are_fresh_per_step_purpose_and_run() -> None:
    """A mask stream is never reused: step, purpose and run each change it."""
    seed = _seeds(_keys())["health"]["police"]
    base = mask_stream(seed, step=0, purpose="logits", length=64)
    assert not np.array_equal(base, mask_stream(seed, step=1, purpose="logits", length=64))
    assert not np.array_equal(base, mask_stream(seed, step=0, purpose="scores", length=64))
    other_run = _seeds(_keys(), run_id="f" * 32)["health"]["police"]
    assert other_run != seed
    # Both ends of a pair derive the same seed (or the masks would not cancel).
    assert _seeds(_keys())["police"]["health"] == seed


def test_mask_key_announcements_are_authenticated(tmp_path: Path) -> None:
    """Only a key signed by the named agency, for this agreement and run, is accepted."""
    setup = make_setup(tmp_path)
    agreement = setup.agreement
    key = X25519PrivateKey.generate()
    ann = announce_mask_key(setup.key("health"), key, agreement_id=agreement.agreement_id, run_id=RUN_ID,
                            agency_id="health")
    public = verify_mask_key(agreement, ann, run_id=RUN_ID)
    assert public.public_bytes_raw() == key.public_key().public_bytes_raw()

    # The coordinator swaps in a key of its own: the signature no longer verifies.
    swapped = ann.model_copy(update={"public_key": base64.b64encode(bytes(32)).decode()})
    with pytest.raises(SignatureError):
        verify_mask_key(agreement, swapped, run_id=RUN_ID)
    # Signed by another agency's key but claiming to be health's.
    forged = announce_mask_key(setup.key("police"), key, agreement_id=agreement.agreement_id, run_id=RUN_ID,
                               agency_id="health")
    with pytest.raises(SignatureError):
        verify_mask_key(agreement, forged, run_id=RUN_ID)
    # Replayed into another run, or from another agreement.
    with pytest.raises(AgreementMismatchError):
        verify_mask_key(agreement, ann, run_id="f" * 32)
    other = ann.model_copy(update={"agreement_id": "b" * 64})
    with pytest.raises(AgreementMismatchError):
        verify_mask_key(agreement, other, run_id=RUN_ID)
    # The coordinator is not an agency, so its announcement is refused.
    coordinator = announce_mask_key(setup.key("coordinator"), key, agreement_id=agreement.agreement_id,
                                    run_id=RUN_ID, agency_id="coordinator")
    with pytest.raises(AgreementError):
        verify_mask_key(agreement, coordinator, run_id=RUN_ID)


def test_pair_seed_refuses_self_pairing() -> None:
    """A node cannot mask against itself (its mask would not cancel)."""
    key = X25519PrivateKey.generate()
    with pytest.raises(ConfigError):
        pair_seed(key, key.public_key(), agreement_id=AGREEMENT_ID, run_id=RUN_ID, own_id="a", peer_id="a")
