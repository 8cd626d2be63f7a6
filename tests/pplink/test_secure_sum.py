"""Secure summation: exact sums, uniformly masked shares, fresh masks, authenticated keys."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pplink.errors import AgreementError, AgreementMismatchError, ConfigError, SignatureError
from pplink.scoring.secure_sum import (
    FRACTION_BITS,
    MAX_ABS_VALUE,
    announce_mask_key,
    decode_fixed,
    encode_fixed,
    mask_stream,
    masked_share,
    pair_seed,
    sum_shares,
    unblind,
    verify_mask_key,
)
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


def _shares(values: dict[str, np.ndarray], seeds: dict[str, dict[str, bytes]], step: int = 0,
            blind: bytes | None = None, blinder: str = "social_care") -> list[np.ndarray]:
    return [masked_share(encode_fixed(values[a]), own_id=a, seeds=seeds[a], step=step, purpose="logits",
                         blind_seed=blind if a == blinder else None) for a in values]


def test_secure_sum_equals_plain_sum_exactly() -> None:
    """The shares' sum is bit-for-bit the sum of the fixed-point values, and within rounding of the float sum."""
    rng = np.random.default_rng(727)
    values = {a: rng.normal(0, 3, 5000) for a in NODES}
    total = sum_shares(_shares(values, _seeds(_keys())))
    plain = sum_shares([encode_fixed(v) for v in values.values()])
    assert np.array_equal(total, plain)
    float_sum = sum(values.values())
    assert np.max(np.abs(decode_fixed(total) - float_sum)) <= len(NODES) * 2.0 ** -(FRACTION_BITS + 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3), min_size=2, max_size=4))
def test_masks_cancel_for_any_values(rows: list[list[float]]) -> None:
    """Invariant: for any values of any number of nodes, masked shares sum to the plain fixed-point sum."""
    names = NODES[: len(rows)]
    keys = {a: k for a, k in _keys().items() if a in names}
    values = {a: np.array(r) for a, r in zip(names, rows, strict=True)}
    total = sum_shares(_shares(values, _seeds(keys), step=3))
    assert np.array_equal(total, sum_shares([encode_fixed(v) for v in values.values()]))


@pytest.mark.parametrize("fill", [0.0, 123.456])
def test_one_nodes_share_looks_uniform_to_the_coordinator(fill: float) -> None:
    """A single share is uniform mod 2**64 whatever the value under it (chi-square on bytes and bits)."""
    n = 1 << 15
    values = {a: np.full(n, fill) for a in NODES}
    share = _shares(values, _seeds(_keys()))[0]
    top_byte = (share >> np.uint64(56)).astype(np.int64)
    chi = stats.chisquare(np.bincount(top_byte, minlength=256))
    assert chi.pvalue > 1e-4
    low_byte = (share & np.uint64(0xFF)).astype(np.int64)
    assert stats.chisquare(np.bincount(low_byte, minlength=256)).pvalue > 1e-4
    bits = np.unpackbits(share.view(np.uint8)).reshape(n, 64).mean(axis=0)
    # Each of the 64 bits is set about half the time (5 sigma band).
    assert np.all(np.abs(bits - 0.5) < 5 * 0.5 / np.sqrt(n))
    # The share is not the value: the same values give shares unrelated to each other across steps.
    again = _shares(values, _seeds(_keys()), step=1)[0]
    assert np.mean(share == again) < 1e-3


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


def test_blind_hides_the_sum_from_the_coordinator_and_unblinds_exactly() -> None:
    """With the receiver's blind the coordinator's total is uniform; the receiver recovers the exact sum."""
    n = 1 << 14
    values = {a: np.full(n, 1.0) for a in NODES}
    blind = bytes(range(32))
    total = sum_shares(_shares(values, _seeds(_keys()), blind=blind))
    top_byte = (total >> np.uint64(56)).astype(np.int64)
    assert stats.chisquare(np.bincount(top_byte, minlength=256)).pvalue > 1e-4
    recovered = decode_fixed(unblind(total, blind, step=0, purpose="logits"))
    assert np.array_equal(recovered, np.full(n, 4.0))


def test_encode_refuses_non_finite_or_huge_values_naming_only_the_position() -> None:
    """Bad inputs are refused with the position, never the value."""
    with pytest.raises(ConfigError, match="position 1") as err:
        encode_fixed(np.array([0.5, np.nan]))
    assert "nan" not in str(err.value).lower()
    with pytest.raises(ConfigError, match="position 0"):
        encode_fixed(np.array([MAX_ABS_VALUE * 2]))
    assert decode_fixed(encode_fixed(np.array([-MAX_ABS_VALUE]))).tolist() == [-MAX_ABS_VALUE]


def test_sum_shares_refuses_mismatched_shares() -> None:
    """A share of the wrong type or length is refused rather than silently broadcast."""
    with pytest.raises(ConfigError):
        sum_shares([np.zeros(3, dtype=np.uint64), np.zeros(4, dtype=np.uint64)])
    with pytest.raises(ConfigError):
        sum_shares([np.zeros(3, dtype=np.uint64), np.zeros(3, dtype=np.int64)])
    with pytest.raises(ConfigError):
        sum_shares([])


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
