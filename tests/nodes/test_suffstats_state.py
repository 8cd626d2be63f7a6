"""A node's run state survives the save/load between Flower messages without losing what it enforces.

A SuperNode starts a process per message, so every refusal of ``tests/nodes/test_suffstats_protocol.py``
must hold across :func:`nodes.scoring.suffstats_state.save_node` / ``load_node``: a reloaded node
still refuses a replayed block and a repeated join, and the reloaded label owner still decrypts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes.scoring.suffstats_state import load_node, load_owner_setup, save_node, save_owner_setup, state_path
from pplink.errors import ReleaseError, TransportError
from pplink.scoring import he
from pplink.scoring.suffstats_protocol import DecryptRequest
from pplink.scoring.wire import decode_payload, encode_payload
from tests.nodes.test_suffstats_protocol import Harness

pytestmark = pytest.mark.slow


def _reload(harness: Harness, agency: str, root: Path) -> None:
    path = state_path(root / agency, harness.plan.run_id)
    save_node(harness.nodes[agency], path)
    assert path.stat().st_mode & 0o077 == 0  # owner-only: it holds the run's secrets
    harness.nodes[agency] = load_node(path, harness.agreement, harness.setup.key(agency))
    if agency == harness.plan.label_owner:
        harness.owner = harness.nodes[agency]


def test_refusals_and_the_owners_key_survive_a_reload(tmp_path: Path) -> None:
    """Invariant: after every node is saved and loaded again (as between two Flower messages), a replayed
    block and a repeated join are refused, and the label owner decrypts the blocks to the same release
    shape; the saved owner state carries no Galois keys (it only decrypts after setup)."""
    harness = Harness(tmp_path / "h")
    harness.join()
    for agency in harness.plan.parties:
        _reload(harness, agency, tmp_path / "nodes")
    with pytest.raises(TransportError, match="join refused"):
        harness.nodes[harness.others[0]].join(harness.plan, harness.announcements, ())
    lines = harness.charge()
    blocks = harness.blocks(lines)
    for agency in harness.others:
        _reload(harness, agency, tmp_path / "nodes")
    with pytest.raises((TransportError, ReleaseError)):
        harness.nodes[harness.others[-1]].block(harness.block_request(harness.others[-1], lines))
    released = harness.owner.decrypt(DecryptRequest(harness.plan.run_id, blocks, lines))
    d = harness.plan.dimension
    assert released.gram.shape == (d, d) and np.isfinite(released.b).all()


def test_a_kept_setup_is_used_only_when_named_by_its_own_signature(tmp_path: Path) -> None:
    """Invariant: a request that names the setup bundle without its ciphertexts gets the kept copy only
    if the signature it names is that copy's; any other name is refused."""
    bundle = he.SignedBundle("ab" * 16, "social_care", "owner-setup", {"x:0": (b"\x01" * 1000,)}, b"s" * 64)
    save_owner_setup(tmp_path, bundle)
    named = he.SignedBundle(bundle.run_id, bundle.maker, bundle.purpose, {}, bundle.signature)
    assert load_owner_setup(tmp_path, named).items == bundle.items
    with pytest.raises(TransportError, match="other than"):
        load_owner_setup(tmp_path, he.SignedBundle(bundle.run_id, bundle.maker, bundle.purpose, {}, b"t" * 64))


def test_long_byte_strings_travel_as_arrays_not_hex(tmp_path: Path) -> None:
    """Invariant: a ciphertext-sized byte string round-trips exactly and costs about its own size on the
    wire (not twice, as hex in the JSON tree would)."""
    data = np.random.default_rng(0).integers(0, 256, 1_000_000, dtype=np.uint8).tobytes()
    bundle = he.SignedBundle("ab" * 16, "school", "forward", {"x:0": (data,)}, b"s" * 64)
    encoded = encode_payload(bundle)
    assert decode_payload(encoded).items["x:0"][0] == data
    assert len(encoded) < 1.1 * len(data)
