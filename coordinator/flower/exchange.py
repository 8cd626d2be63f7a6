"""Exchanging one step's messages with the agencies' nodes, and checking what comes back.

Used by :mod:`coordinator.flower.match_round` for every step of a round: push one request per agency,
pull replies until all arrived, a node went offline, or the step's time ran out; then check each
reply (Flower error, pplink error reply, run, agreement, sender, signature) before anything in it
is used. A reply that fails a check is refused, and the agency named with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.serverapp import Grid

from coordinator.run_records import RunPhase, RunRecord, RunStatus, timestamp, write_run_record
from pplink.agreement import AgreementConfig
from pplink.errors import AgreementMismatchError, PplinkError, TransportError
from pplink.messages import AnyReply, AnyRequest, NodeErrorReply, RoundStep, verify_message
from pplink.wire import pack, unpack_reply

__all__ = ["PartyProblem", "RoundSettings", "RunRecorder", "check_reply", "collect_replies", "exchange_step"]

#: How often a waiting ServerApp asks the SuperLink which nodes are still online.
_LIVENESS_EVERY = 2.0


@dataclass(frozen=True)
class RoundSettings:
    """Everything one round needs.

    Attributes:
        agreement: the validated agreement.
        key: the coordinator's signing key (must be the agreement's coordinator key).
        state_dir: the coordinator's state folder (run records, round outputs).
        run_id: pplink's id for this round.
        flower_run_id: Flower's id for the run, recorded for cross-reference.
        node_keys: per agency, the node-authentication public key (PEM) registered for it;
            ``None`` skips that check (insecure test deployments register no keys).
        wait_nodes: seconds to wait for every agency's node to be online.
        reply_timeout: seconds to wait for the replies of one step.
        poll_interval: seconds between pulls for replies (a pull is one small request to the local
            SuperLink; a longer wait adds half of it to every step on average).
        workers: threads for comparing encodings.
    """

    agreement: AgreementConfig
    key: Ed25519PrivateKey
    state_dir: Path
    run_id: str
    flower_run_id: int | None = None
    node_keys: Mapping[str, bytes] | None = None
    wait_nodes: float = 60.0
    reply_timeout: float = 600.0
    poll_interval: float = 0.1
    workers: int = 2


class PartyProblem(Exception):
    """A party's reply to one step could not be used (collected per step, then reported).

    Not a :class:`~pplink.errors.PplinkError`: it never leaves the round; the round raises one
    ``TransportError`` naming every agency and its problem.
    """

    def __init__(self, party: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.party, self.reason, self.refused = party, reason, refused


class RunRecorder:
    """Keeps a round's run record current on disk (created as running when constructed)."""

    def __init__(self, settings: RoundSettings) -> None:
        self.state_dir = settings.state_dir
        now = timestamp()
        self.record = write_run_record(settings.state_dir, RunRecord(
            run_id=settings.run_id, agreement_id=settings.agreement.agreement_id, status=RunStatus.RUNNING,
            phase=RunPhase.WAITING_FOR_NODES, started=now, updated=now, flower_run_id=settings.flower_run_id,
        ))

    def update(self, **changes: Any) -> None:
        """Change fields of the record and write it."""
        self.record = write_run_record(self.state_dir, self.record.model_copy(update=changes))


def exchange_step(
    grid: Grid,
    settings: RoundSettings,
    step: RoundStep,
    requests: Mapping[str, tuple[int, AnyRequest, bytes | None]],
    recorder: RunRecorder,
    log: Callable[[str], None],
) -> tuple[dict[str, Message], dict[str, str]]:
    """Send one step's requests and collect replies until all arrive, a node goes, or time runs out.

    Returns:
        ``({party: reply}, {party: why no reply})``.
    """
    messages = [Message(pack(request, blob), node_id, step.value, ttl=settings.reply_timeout + 60,
                        group_id=settings.run_id)
                for node_id, request, blob in requests.values()]
    pending: dict[str, str] = {}
    absent: dict[str, str] = {}
    for party, message in zip(requests, messages, strict=True):
        # One push per message: Flower's HTTP grid drops a whole batch that is too large (a batch
        # of pseudonym maps for a million rows each can be).
        ids = list(grid.push_messages([message]))
        if ids and ids[0]:
            pending[ids[0]] = party
        else:
            absent[party] = f"the SuperLink did not accept the {step.value} message"
            log(f"{party}: the SuperLink did not accept the {step.value} message")
    node_of = {party: node_id for party, (node_id, _, _) in requests.items()}
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + settings.reply_timeout
    next_liveness = time.monotonic()
    while pending:
        for reply in grid.pull_messages(list(pending)):
            party = pending.pop(reply.metadata.reply_to_message_id, None)
            if party is not None:
                replies[party] = reply
        if not pending:
            break
        now = time.monotonic()
        if now >= next_liveness:
            online = {n.node_id for n in grid.get_nodes() if not n.status or n.status == "online"}
            for message_id, party in list(pending.items()):
                if node_of[party] not in online:
                    del pending[message_id]
                    absent[party] = f"its node went offline during {step.value}"
                    log(f"{party}: node {node_of[party]} went offline during {step.value}")
            next_liveness = now + _LIVENESS_EVERY
            recorder.update(waiting_for=tuple(sorted(pending.values())))
        if not pending:
            break
        if now >= deadline:
            for party in pending.values():
                absent[party] = f"no reply to {step.value} within {settings.reply_timeout:g} s"
                log(f"{party}: no reply to {step.value} within {settings.reply_timeout:g} s")
            break
        time.sleep(settings.poll_interval)
    recorder.update(waiting_for=())
    return replies, absent


def check_reply(settings: RoundSettings, step: RoundStep, party: str, node_id: int, message: Message,
            expected: type) -> tuple[AnyReply, bytes | None]:
    """Parse and check one agency's reply to a step.

    Raises:
        PartyProblem: a Flower error (the node is gone), a pplink error reply from the node, or a
            reply refused because its run, agreement, sender, signature or type is wrong.
    """
    agreement = settings.agreement
    where = f"{step.value} reply from node {node_id} ({party})"
    if message.has_error():
        reason = (message.error.reason or "")[:300]
        raise PartyProblem(party, f"Flower error {message.error.code} on {step.value}: {reason}")
    try:
        reply, blob = unpack_reply(message.content, what=where)
        if reply.run_id != settings.run_id:
            raise TransportError(f"{where}: for run {reply.run_id}, not {settings.run_id}")
        if reply.agreement_digest != agreement.agreement_id:
            raise AgreementMismatchError(f"{where}: made under agreement {reply.agreement_digest[:12]}…")
        if reply.party != party:
            raise TransportError(f"{where}: claims to come from {reply.party!r}")
        if isinstance(reply, NodeErrorReply) and not reply.signature:
            raise PartyProblem(party, f"unsigned error reply to {step.value}: PPL{reply.code}: {reply.message}")
        verify_message(reply, agreement.agency(party).public_key, what=where)
    except PplinkError as err:
        raise PartyProblem(party, f"refused: {err}", refused=True) from None
    if isinstance(reply, NodeErrorReply):
        code = f"PPL{reply.code}" if reply.code is not None else "unexpected error"
        raise PartyProblem(party, f"{code} at the node during {step.value}: {reply.message}")
    if not isinstance(reply, expected):
        raise PartyProblem(party, f"refused: {where}: a {reply.kind}, expected {expected.__name__}", refused=True)
    return reply, blob


def collect_replies(step: RoundStep, parties: Iterable[str], replies: Mapping[str, Message], absent: Mapping[str, str],
             check: Callable[[str, Message], Any], log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, str]]:
    """Check each party's reply; return ``({party: checked}, {party: problem})``."""
    good: dict[str, Any] = {}
    problems: dict[str, str] = dict(absent)
    for party in parties:
        if party in absent:
            continue
        try:
            good[party] = check(party, replies[party])
        except PartyProblem as problem:
            problems[party] = problem.reason
            log(f"{party}: {'REFUSED ' if problem.refused else ''}{step.value} reply: {problem.reason}")
    return good, problems
