"""An agency's side of a vertical scoring run over Flower, as plain functions (no Flower here).

The ClientApp (:mod:`nodes.flower.client_app`) unpacks each ``query.score`` message and calls
:func:`handle_scoring`, which decodes its payload, checks it, calls the same
:class:`nodes.scoring.suffstats.SuffStatsNode` (or :class:`~nodes.scoring.suffstats_owner.SuffStatsOwner`)
method the in-process run calls, and encodes the answer. A SuperNode starts a new process per
message, so the node's run state is saved after every message (:mod:`nodes.scoring.suffstats_state`,
owner-only, never sent anywhere) and read back by the next; :func:`forget_run` removes it once the
run is finished.

Inputs: the agency's records file (``data-path``, the same CSV it encoded, with the feature
columns the agreement names for it) and ``<out-dir>/<party>.entities.csv`` from the last match
round. After the evaluation the coordinator sends ``finish`` to every node, which removes the
run's saved state; the label owner, given the released evaluation lines, first writes
``<out-dir>/<party>.scores.csv`` and its evaluation note.

Every request must be signed by the agreement's coordinator and name this node's party; every
reply is signed with the agency's key and binds its payload by digest.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.export_settings import load_export_settings
from nodes.match_round import NodeSettings, check_result, entities_path
from nodes.scoring.data import load_agency_data
from nodes.scoring.scores import write_scores
from nodes.scoring.suffstats import SuffStatsNode
from nodes.scoring.suffstats_owner import SuffStatsOwner
from nodes.scoring.suffstats_state import (
    forget_state,
    load_node,
    load_owner_setup,
    save_node,
    save_owner_setup,
    state_path,
)
from pplink.agreement import AgreementConfig, load_agreement
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
from pplink.scoring import he
from pplink.scoring.suffstats_protocol import BlockRequest, ScoreRequest
from pplink.scoring.wire import Batch, BatchReply, CountsReply, FinishReply, decode_payload, encode_payload

__all__ = [
    "SCORING_NODE_CONFIG_KEYS",
    "ScoringNodeSettings",
    "forget_run",
    "handle_scoring",
    "holdout_key_for_seed",
    "scores_path",
    "split_node_config",
]

#: ``--node-config`` keys used only by scoring (the match round's keys are
#: :data:`nodes.match_round.NODE_CONFIG_KEYS`). ``holdout-seed`` fixes the label owner's holdout
#: key (tests, reproducible reports); ``horizontal-data`` is the local labelled data of
#: horizontal mode (:mod:`nodes.flower.horizontal`).
SCORING_NODE_CONFIG_KEYS = ("holdout-seed", "horizontal-data")

_log = logging.getLogger("pplink.node")


def holdout_key_for_seed(seed: int) -> bytes:
    """The holdout key a fixed ``holdout-seed`` stands for (tests and reproducible reports only).

    >>> len(holdout_key_for_seed(1))
    32
    """
    return hashlib.sha256(f"pplink holdout seed {seed}".encode()).digest()


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


def forget_run(out_dir: Path, run_id: str) -> None:
    """Remove a run's saved state (its keys and seeds): nothing of the run can be re-answered."""
    forget_state(out_dir, run_id)


def _new_node(agreement: AgreementConfig, settings: ScoringNodeSettings, key: Ed25519PrivateKey) -> SuffStatsNode:
    base = settings.base
    if agreement.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    check_result(base.out_dir, base.party)
    data = load_agency_data(agreement, base.party, base.data_path, entities_path(base.out_dir, base.party),
                            load_export_settings(base.settings_path))
    if base.party == agreement.scoring.label_owner:
        seed = settings.holdout_seed
        return SuffStatsOwner(agreement, data, key, holdout_key=None if seed is None else holdout_key_for_seed(seed))
    return SuffStatsNode(agreement, data, key)


def _owner_bundle(out_dir: Path, bundle: he.SignedBundle) -> he.SignedBundle:
    """The setup bundle in full: kept when it comes in full, looked up when only named (no items)."""
    if bundle.items:
        save_owner_setup(out_dir, bundle)
        return bundle
    return load_owner_setup(out_dir, bundle)


def _answer(settings: ScoringNodeSettings, node: SuffStatsNode, call: ScoringCall, payload: Any) -> Any:
    out_dir = settings.base.out_dir
    if call is ScoringCall.ANNOUNCE:
        return node.announce(payload)
    if call is ScoringCall.JOIN:
        return node.join(payload.plan, payload.announcements, payload.ledger_lines)
    if call is ScoringCall.FORWARD:
        return node.forward(payload.run_id, _owner_bundle(out_dir, payload.owner))
    if call is ScoringCall.BLOCK:
        return node.block(BlockRequest(payload.run_id, _owner_bundle(out_dir, payload.owner), payload.forwards,
                                       payload.ledger_lines))
    if call is ScoringCall.SCORES:
        return node.score_share(ScoreRequest(payload.run_id, payload.released, _owner_bundle(out_dir, payload.owner)))
    if call is ScoringCall.PRESENCE:
        kept = state_path(out_dir, payload.run_id, "owner-setup")
        if getattr(node, "_context_bytes", None) is None and kept.is_file():
            # The agency's copy of the label owner's public context, verified when it first used it.
            setup = decode_payload(kept.read_bytes(), what="the kept setup")
            node._context_bytes = setup.item("context")[0]
        return node.presence(payload)
    if call is ScoringCall.FINISH and not isinstance(node, SuffStatsOwner):
        return FinishReply(run_id=payload.run_id, rows=0)  # the run's state is removed by the caller
    if not isinstance(node, SuffStatsOwner):
        raise TransportError(f"{settings.base.party}: {call.value} goes to the label owner only")
    if call is ScoringCall.OWNER_SETUP:
        return node.owner_setup(payload.run_id)
    if call is ScoringCall.DECRYPT:
        return node.decrypt(payload)
    if call is ScoringCall.OWNER_SCORES:
        return node.owner_scores(payload.run_id, payload.shares)
    if call is ScoringCall.HOLDOUT:
        return node.holdout(payload.run_id)
    if call is ScoringCall.THRESHOLD:
        return node.threshold(payload.run_id, payload.threshold)
    if call is ScoringCall.PRESENCE_SETUP:
        return node.presence_setup(payload.run_id)
    if call is ScoringCall.PRESENCE_COUNTS:
        counts = node.presence_counts(payload.run_id, payload.sums, payload.ledger_lines)
        return CountsReply(payload.run_id, tuple((a, w, o, int(c)) for (a, w, o), c in sorted(counts.items())))
    # FINISH: write the scores beside the released evaluation.
    rows = node.score_rows()
    write_scores(scores_path(out_dir, settings.base.party), rows, evaluation_lines=payload.evaluation_lines,
                 owner=settings.base.party)
    return FinishReply(run_id=payload.run_id, rows=len(rows))


#: What a :class:`~pplink.scoring.wire.Batch` may hold: never the message that makes the run state,
#: the one that removes it, or another batch.
_BATCHABLE = frozenset(ScoringCall) - {ScoringCall.ANNOUNCE, ScoringCall.FINISH, ScoringCall.BATCH}
_MAX_BATCH = 4


def _batch_calls(payload: Any, run_id: str) -> list[tuple[ScoringCall, Any]]:
    """The requests of a batch, checked: known calls that may be batched, each for this run.

    Raises:
        TransportError: not a batch, too long, a call that may not be batched, or another run.
    """
    if not isinstance(payload, Batch) or len(payload.calls) != len(payload.payloads) \
            or not 1 <= len(payload.calls) <= _MAX_BATCH:
        raise TransportError("scoring batch: malformed")
    out = []
    for value, item in zip(payload.calls, payload.payloads, strict=True):
        call = ScoringCall(value) if value in {c.value for c in _BATCHABLE} else None
        if call is None:
            raise TransportError(f"scoring batch: {str(value)[:20]!r} may not be batched")
        if _payload_run(item) != run_id:
            raise TransportError(f"scoring batch: the {call.value} payload is for another run")
        out.append((call, item))
    return out


def _payload_run(payload: Any) -> str | None:
    if hasattr(payload, "run_id"):
        return str(payload.run_id)
    if hasattr(payload, "plan"):
        return str(payload.plan.run_id)
    return None


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
    started = time.perf_counter()
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
    if _payload_run(payload) != request.run_id:
        raise TransportError(f"scoring {request.call.value}: the payload is for another run")
    batch = _batch_calls(payload, request.run_id) if request.call is ScoringCall.BATCH else None
    key = load_private_key(base.key_path)
    if public_key_text(key) != agreement.agency(base.party).public_key:
        raise KeyFileError(f"{base.key_path}: not {base.party}'s signing key in the agreement")
    path = state_path(base.out_dir, request.run_id)
    if request.call is ScoringCall.ANNOUNCE:
        if path.exists():
            raise TransportError(f"{base.party}: run already announced; a repeated announce is refused")
        node = _new_node(agreement, settings, key)
    else:
        node = load_node(path, agreement, key)
    loaded = time.perf_counter()
    try:
        if batch is None:
            answer = _answer(settings, node, request.call, payload)
        else:  # in order, each as if alone; a failure stops the rest (those answered stay answered)
            answer = BatchReply(request.run_id, tuple(_answer(settings, node, c, p) for c, p in batch))
    except BaseException:
        # Saved even when the answer failed: a message marked answered stays answered (never re-asked).
        if request.call not in (ScoringCall.ANNOUNCE, ScoringCall.FINISH):
            save_node(node, path)
        raise
    answered = time.perf_counter()
    if request.call is ScoringCall.FINISH:
        forget_run(base.out_dir, request.run_id)
    else:
        save_node(node, path)
    out = encode_payload(answer)
    reply = ScoringReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=base.party,
                         call=request.call, blob_sha256=blob_digest(out))
    done = time.perf_counter()
    # Seconds only (no values): where a message's time goes at the node, for the operator.
    _log.info("%s: scoring %s: checks and state %.2f s, answer %.2f s, save and encode %.2f s", base.party,
              "+".join(c.value for c, _ in batch) if batch else request.call.value, loaded - started,
              answered - loaded, done - answered)
    return sign_message(reply, key), out
