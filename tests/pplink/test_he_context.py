"""The label owner's public CKKS context: only the Galois keys a sum needs, and sums still right.

The context goes to every agency once per run (most of the setup bundle's bytes over Flower), so it
carries Galois keys for the 12 rotations of TenSEAL's slot sum only, seeded. Invariant: an agency
holding it computes dot products (multi-chunk, the block and presence sums) as exactly as with every
key, and it carries no secret key.
"""

from __future__ import annotations

import numpy as np
import pytest

from pplink.errors import TransportError
from pplink.scoring import he

pytestmark = pytest.mark.slow


def test_the_public_context_sums_right_with_only_the_sum_rotations() -> None:
    secret = he.HeSecret()
    public = he.public_context(secret.public_bytes())  # refuses a context with a secret key
    assert not public.is_private() and public.has_galois_keys()
    rng = np.random.default_rng(7)
    for length in (1, 4096, 10_001):  # one slot, one full chunk, three chunks
        values, weights = rng.uniform(-1, 1, length), rng.uniform(-1, 1, length)
        encrypted = he.load(public, he.encrypt(secret.context, values), length)
        got = secret.decrypt_scalar(he.dot(encrypted, weights, add=0.25))
        assert abs(got - (float(values @ weights) + 0.25)) < 1e-3


def test_the_public_context_is_a_quarter_of_the_every_rotation_one() -> None:
    """Invariant: the context an agency receives is under 12 MB (every rotation, expanded: ~34 MB)."""
    assert len(he.HeSecret().public_bytes()) < 12_000_000


def test_a_context_with_its_secret_key_is_refused() -> None:
    secret = he.HeSecret()
    with pytest.raises(TransportError, match="secret key"):
        he.public_context(secret.context.serialize(save_secret_key=True))
