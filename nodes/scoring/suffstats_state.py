"""A sufficient-statistics node's run state between Flower messages (a SuperNode starts a process per message).

The state is written after every message to ``<out-dir>/scoring/<run_id>.state`` (owner-only,
atomically) and read back by the next; it never leaves the node. It holds this run's secrets: the
X25519 mask key and pair seeds, the ledger lines seen and charges consumed (so a replay stays
refused across processes), which messages were answered, and at the label owner its CKKS secret
key (without the Galois keys: after its setup it only encrypts, adds and decrypts), its holdout
key and exact scores. :func:`forget_state` removes it when the run is finished.

The label owner's setup bundle (public context and encrypted training vectors, ~40 MB at 20,000
people) is kept once per run at ``<run_id>.owner-setup`` by an agency that received it, so the
coordinator sends it to each agency once; later requests name it by its signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodes.scoring.data import AgencyScoringData
from nodes.scoring.suffstats import SuffStatsNode
from nodes.scoring.suffstats_owner import SuffStatsOwner
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.errors import TransportError
from pplink.scoring import he
from pplink.scoring.suffstats_protocol import LedgerFollower
from pplink.scoring.wire import decode_payload, encode_payload

__all__ = ["forget_state", "load_node", "load_owner_setup", "save_node", "save_owner_setup", "state_path"]

_STATE_DIR = "scoring"
#: Attributes rebuilt from local files on every message, or not needed after the message that made them.
_NOT_SAVED = ("_agreement", "_key", "_context_bytes", "_setup")


def state_path(out_dir: Path, run_id: str, suffix: str = "state") -> Path:
    """``<out-dir>/scoring/<run_id>.<suffix>``."""
    return Path(out_dir) / _STATE_DIR / f"{run_id}.{suffix}"


def save_node(node: SuffStatsNode, path: Path) -> None:
    """Write the node's run state (owner-only permissions, atomically)."""
    state: dict[str, Any] = {k: v for k, v in vars(node).items() if k not in _NOT_SAVED}
    state["_class"] = type(node).__name__
    data = state.pop("_data")
    state["_data"] = {f: getattr(data, f) for f in data.__dataclass_fields__}
    state["_announced"] = {run: (plan, key.private_bytes_raw()) for run, (plan, key) in node._announced.items()}
    state["_ledger"] = node._ledger.saved()
    secret = state.get("_secret")
    if isinstance(secret, he.HeSecret):
        state["_secret"] = secret.context.serialize(save_secret_key=True, save_galois_keys=False)
    objects = [k for k, v in state.items() if isinstance(v, np.ndarray) and v.dtype == object]
    for k in objects:  # the label owner's subgroup per entity travels as strings
        state[k] = [str(v) for v in state[k].tolist()]
    state["_object_arrays"] = objects
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, encode_payload(state), mode=0o600)


def load_node(path: Path, agreement: AgreementConfig, key: Ed25519PrivateKey) -> SuffStatsNode:
    """The node as the last message left it.

    Raises:
        TransportError: no saved state for the run (announce never reached this node), or it is unreadable.
        LedgerError: the saved ledger lines no longer verify.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        raise TransportError("no scoring run state at this node for that run (was announce sent?)") from None
    state = decode_payload(raw, what="the node's saved scoring state")
    cls = SuffStatsOwner if state.pop("_class") == "SuffStatsOwner" else SuffStatsNode
    node = cls.__new__(cls)
    for k in state.pop("_object_arrays"):
        state[k] = np.array(state[k], dtype=object)
    state["_data"] = AgencyScoringData(**state["_data"])
    state["_announced"] = {run: (plan, X25519PrivateKey.from_private_bytes(raw_key))
                           for run, (plan, raw_key) in state["_announced"].items()}
    lines, used = state["_ledger"]
    state["_ledger"] = LedgerFollower.restored(agreement, lines, used)
    if isinstance(state.get("_secret"), bytes):
        secret = he.HeSecret.__new__(he.HeSecret)
        secret._ctx = ts.context_from(state["_secret"])
        state["_secret"] = secret
    vars(node).update(state)
    vars(node).update(_agreement=agreement, _key=key)
    return node


def save_owner_setup(out_dir: Path, bundle: he.SignedBundle) -> None:
    """Keep the label owner's setup bundle for this run (once; owner-only permissions)."""
    path = state_path(out_dir, bundle.run_id, "owner-setup")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, encode_payload(bundle), mode=0o600)


def load_owner_setup(out_dir: Path, stub: he.SignedBundle) -> he.SignedBundle:
    """The kept setup bundle a request names by its signature (the node still verifies it before use).

    Raises:
        TransportError: none kept for this run, or it is not the one named.
    """
    try:
        kept = decode_payload(state_path(out_dir, stub.run_id, "owner-setup").read_bytes(), what="the kept setup")
    except OSError:
        raise TransportError("the label owner's setup was named but never sent to this node") from None
    if not isinstance(kept, he.SignedBundle) or kept.signature != stub.signature:
        raise TransportError("the request names a setup bundle other than the one this node received")
    return kept


def forget_state(out_dir: Path, run_id: str) -> None:
    """Remove a run's saved state and kept setup: nothing of the run can be re-answered."""
    for suffix in ("state", "owner-setup"):
        state_path(out_dir, run_id, suffix).unlink(missing_ok=True)
