"""An agency's side of a vertical scoring run over Flower, as plain functions (no Flower here).

The ClientApp (:mod:`nodes.flower.client_app`) unpacks each ``query.score`` message and calls
:func:`handle_scoring`, which answers it with the same :class:`nodes.scoring.vertical.ScoringNode` (or
:class:`~nodes.scoring.vertical.LabelOwnerNode`) method the in-process run calls. A SuperNode starts a
new process per message, so the node's run state (its mask key, pair seeds, weights, and at the
label owner the holdout split, blinding seed and exact scores) is written after every message to
``<out-dir>/scoring/<run_id>.state`` (owner-only, never sent anywhere) and read back by the next.
That file holds secrets of this run only; :func:`forget_run` removes it once the run is finished.

Inputs: the agency's records file (``data-path``, the same CSV it encoded, with the feature
columns the agreement names for it) and ``<out-dir>/<party>.entities.csv`` from the last match
round. After the evaluation the coordinator sends ``finish`` to every node, which removes the
run's saved state; the label owner, given the released evaluation lines, first writes
``<out-dir>/<party>.scores.csv`` and its evaluation note.

Every request must be signed by the agreement's coordinator and name this node's party; every
reply is signed with the agency's key and binds its payload by digest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nodes.export_settings import load_export_settings
from nodes.match_round import NodeSettings, check_result, entities_path
from nodes.scoring.data import load_agency_data
from nodes.scoring.vertical import LabelOwnerNode, ScoringNode, write_scores
from pplink.agreement import AgreementConfig, load_agreement
from pplink.atomic import atomic_write
from pplink.crypto import load_private_key, public_key_text
from pplink.errors import AgreementMismatchError, ConfigError, KeyFileError, TransportError
from pplink.messages import (
    ScoringCall,
    ScoringReply,
    ScoringRequest,
    blob_digest,
    sign_message,
    verify_message,
)
from pplink.scoring.wire import FinishReply, decode_payload, encode_payload

__all__ = [
    "SCORING_NODE_CONFIG_KEYS",
    "ScoringNodeSettings",
    "forget_run",
    "handle_scoring",
    "scores_path",
    "split_node_config",
]

#: ``--node-config`` keys used only by scoring (the match round's keys are
#: :data:`nodes.match_round.NODE_CONFIG_KEYS`). ``holdout-seed`` fixes the label owner's holdout
#: split (tests, reproducible reports); ``horizontal-data`` is the local labelled data of
#: horizontal mode (:mod:`nodes.flower.horizontal`).
SCORING_NODE_CONFIG_KEYS = ("holdout-seed", "horizontal-data")
_STATE_DIR = "scoring"
#: Node attributes rebuilt from local files on every message rather than saved.
_NOT_SAVED = ("_agreement", "_key", "_mask_key")


@dataclass(frozen=True)
class ScoringNodeSettings:
    """The node's settings for scoring: the match round's, plus the scoring-only keys."""

    base: NodeSettings
    holdout_seed: int | None = None
    horizontal_data: Path | None = None

    @classmethod
    def from_node_config(cls, config: Mapping[str, object]) -> ScoringNodeSettings:
        """Read the settings from a Flower node config.

        Raises:
            ConfigError: see :meth:`nodes.match_round.NodeSettings.from_node_config`, or a
                scoring key has the wrong type.
        """
        base, extra = split_node_config(config)
        seed = extra.get("holdout-seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError("node config: 'holdout-seed' must be a non-negative integer")
        data = extra.get("horizontal-data")
        if data is not None and not isinstance(data, str):
            raise ConfigError("node config: 'horizontal-data' must be a string")
        return cls(NodeSettings.from_node_config(base), seed, Path(data) if data else None)


def split_node_config(config: Mapping[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """Split a node config into the match round's keys and the scoring-only keys."""
    base = {k: v for k, v in config.items() if k not in SCORING_NODE_CONFIG_KEYS}
    extra = {k: v for k, v in config.items() if k in SCORING_NODE_CONFIG_KEYS}
    return base, extra


def scores_path(out_dir: Path, party: str) -> Path:
    """Where the label owner's scores go: ``<out-dir>/<party>.scores.csv``."""
    return Path(out_dir) / f"{party}.scores.csv"


def _state_path(out_dir: Path, run_id: str) -> Path:
    return Path(out_dir) / _STATE_DIR / f"{run_id}.state"


def _save(node: ScoringNode, path: Path) -> None:
    """Write the node's run state (owner-only, atomically)."""
    state = {k: v for k, v in vars(node).items() if k not in _NOT_SAVED}
    mask_key = getattr(node, "_mask_key", None)
    state["_mask_key_raw"] = mask_key.private_bytes_raw() if mask_key is not None else None
    state["_class"] = type(node).__name__
    data = encode_payload(_saved(state))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data, mode=0o600)


def _saved(state: dict[str, Any]) -> dict[str, Any]:
    # The agency's data is a dataclass the payload codec does not know; save its fields.
    out = dict(state)
    data = out.pop("_data")
    out["_data_fields"] = {f: getattr(data, f) for f in data.__dataclass_fields__}
    # Object arrays (the label owner's subgroup per entity) travel as lists of strings.
    objects = [k for k, v in out.items() if isinstance(v, np.ndarray) and v.dtype == object]
    for k in objects:
        out[k] = [str(v) for v in out[k].tolist()]
    out["_object_arrays"] = objects
    return out


def _load(path: Path, agreement: AgreementConfig, key: Any) -> ScoringNode:
    from nodes.scoring.data import AgencyScoringData

    try:
        raw = path.read_bytes()
    except OSError:
        raise TransportError("no scoring run state at this node for that run (was announce sent?)") from None
    state = decode_payload(raw, what=f"{path}")
    cls = LabelOwnerNode if state.pop("_class") == "LabelOwnerNode" else ScoringNode
    node = cls.__new__(cls)
    fields = state.pop("_data_fields")
    mask_raw = state.pop("_mask_key_raw")
    for k in state.pop("_object_arrays"):
        state[k] = np.array(state[k], dtype=object)
    vars(node).update(state)
    vars(node).update(_agreement=agreement, _key=key, _data=AgencyScoringData(**fields),
                      _mask_key=X25519PrivateKey.from_private_bytes(mask_raw) if mask_raw else None)
    return node


def forget_run(out_dir: Path, run_id: str) -> None:
    """Remove a run's saved state (its mask key and seeds): nothing of the run can be re-answered."""
    _state_path(out_dir, run_id).unlink(missing_ok=True)


def _new_node(agreement: AgreementConfig, settings: ScoringNodeSettings, key: Any) -> ScoringNode:
    base = settings.base
    if agreement.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    check_result(base.out_dir, base.party)
    data = load_agency_data(agreement, base.party, base.data_path, entities_path(base.out_dir, base.party),
                            load_export_settings(base.settings_path))
    if base.party == agreement.scoring.label_owner:
        return LabelOwnerNode(agreement, data, key, holdout_seed=settings.holdout_seed)
    return ScoringNode(agreement, data, key)


def _answer(agreement: AgreementConfig, settings: ScoringNodeSettings, key: Any, node: ScoringNode | None,
            call: ScoringCall, payload: Any) -> tuple[ScoringNode, Any]:
    if call is ScoringCall.ANNOUNCE:
        node = _new_node(agreement, settings, key)
        return node, node.announce(payload)
    assert node is not None
    if call is ScoringCall.JOIN:
        node.join(payload.plan, payload.announcements)
        return node, None
    if call is ScoringCall.SHARE:
        return node, node.share(payload)
    if call is ScoringCall.PRESENCE:
        return node, node.presence(payload)
    if call is ScoringCall.FINISH and not isinstance(node, LabelOwnerNode):
        return node, FinishReply(run_id=payload.run_id, rows=0)  # the run's state is removed below
    if not isinstance(node, LabelOwnerNode):
        raise TransportError(f"{settings.base.party}: {call.value} goes to the label owner only")
    if call is ScoringCall.RESIDUALS:
        return node, node.residuals(payload)
    if call is ScoringCall.HOLDOUT:
        return node, node.holdout(payload)
    if call is ScoringCall.THRESHOLD:
        return node, node.threshold(payload)
    # FINISH: write the scores beside the released evaluation.
    rows = node.score_rows()
    write_scores(scores_path(settings.base.out_dir, settings.base.party), rows,
                 evaluation_lines=payload.evaluation_lines, owner=settings.base.party)
    return node, FinishReply(run_id=payload.run_id, rows=len(rows))


def handle_scoring(settings: ScoringNodeSettings, request: ScoringRequest,
                   blob: bytes | None) -> tuple[ScoringReply, bytes]:
    """Answer one scoring message; return the signed reply and its payload bytes.

    Raises:
        AgreementMismatchError: the request is for another agreement.
        SignatureError: not signed by the agreement's coordinator.
        TransportError: addressed to another party, the payload does not match its digest or is
            malformed, or the node's run state is missing or out of step.
        PplinkError: as the node's scoring methods and input files raise them.
    """
    base = settings.base
    agreement = load_agreement(base.agreement_path)
    if request.agreement_digest != agreement.agreement_id:
        raise AgreementMismatchError(
            f"request for agreement {request.agreement_digest[:12]}…, "
            f"this node is under {agreement.agreement_id[:12]}…")
    if request.party != base.party:
        raise TransportError(f"request addressed to {request.party!r}; this node is {base.party!r}")
    verify_message(request, agreement.coordinator.public_key,
                   what=f"scoring {request.call.value} of run {request.run_id}")
    if blob is None or blob_digest(blob) != request.blob_sha256:
        raise TransportError(f"scoring {request.call.value}: "
                             "the payload does not match the digest the coordinator signed")
    payload = decode_payload(blob, what=f"scoring {request.call.value} payload")
    payload_run = (payload.run_id if hasattr(payload, "run_id")
                   else payload.plan.run_id if hasattr(payload, "plan") else None)
    if payload_run != request.run_id:
        raise TransportError(f"scoring {request.call.value}: the payload is for another run")
    key = load_private_key(base.key_path)
    if public_key_text(key) != agreement.agency(base.party).public_key:
        raise KeyFileError(f"{base.key_path}: not {base.party}'s signing key in the agreement")
    path = _state_path(base.out_dir, request.run_id)
    node = None if request.call is ScoringCall.ANNOUNCE else _load(path, agreement, key)
    node, answer = _answer(agreement, settings, key, node, request.call, payload)
    _save(node, path)
    if request.call is ScoringCall.FINISH:
        forget_run(base.out_dir, request.run_id)
    out = encode_payload(answer)
    reply = ScoringReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=base.party,
                         call=request.call, blob_sha256=blob_digest(out))
    return sign_message(reply, key), out
