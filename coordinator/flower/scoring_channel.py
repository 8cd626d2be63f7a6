"""The coordinator's Flower channel for a scoring run: one exchange per call, broadcast or batch.

:class:`FlowerScoringChannel` signs each ``query.score`` request (its payload beside it, encoded by
:mod:`pplink.scoring.wire`), sends a step's messages at once through the Grid, checks each reply's
signature and digest, and decodes it. Requests with the same content for several parties go in one
exchange (:meth:`FlowerScoringChannel.broadcast`); requests to one node that do not depend on each
other's answers go in one message (a :class:`~pplink.scoring.wire.Batch`), whose later answers wait
in :meth:`FlowerScoringChannel.take` until their endpoint method asks. Every exchange is a round
trip through the SuperLink and a process start at each node, so fewer exchanges is most of the
speed of a run over Flower (docs/scoring.md, "Over Flower").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from coordinator.flower.exchange import (
    PartyProblem,
    RoundSettings,
    RunRecorder,
    check_reply,
    collect_replies,
    exchange_step,
)
from pplink.errors import PplinkError, TransportError
from pplink.messages import RoundStep, ScoringCall, ScoringReply, ScoringRequest, blob_digest, sign_message
from pplink.scoring.suffstats_protocol import SuffStatsPlan
from pplink.scoring.wire import Batch, BatchReply, decode_payload, encode_payload

__all__ = ["FlowerScoringChannel"]


class FlowerScoringChannel:
    """Sends scoring messages over the Grid; one exchange per call or per broadcast.

    Args:
        grid: the Grid.
        settings: the round settings; ``run_id`` must be the scoring run's id (32 hex).
        node_of: Flower node id per agency.
        recorder: the run record.
        log: the run's log.
    """

    def __init__(self, grid: Grid, settings: RoundSettings, node_of: Mapping[str, int], recorder: RunRecorder,
                 log: Callable[[str], None]) -> None:
        self.grid, self.settings, self.node_of, self.recorder, self.log = grid, settings, dict(node_of), recorder, log
        self.plan: SuffStatsPlan | None = None
        #: Agencies that have been sent the label owner\'s setup bundle in full.
        self.setup_sent: set[str] = set()
        #: Request/reply pairs and exchanges (round trips through the SuperLink) so far.
        self.messages = 0
        self.exchanges = 0
        #: Wall seconds of each exchange, in order, named by its call (where a run's time goes).
        self.timings: list[tuple[str, float]] = []
        self._last: tuple[ScoringCall, object, dict[str, Any]] | None = None
        #: Answers to requests sent ahead in a batch, until their endpoint method asks.
        self._ahead: dict[tuple[str, ScoringCall], Any] = {}

    def exchange(self, call: ScoringCall, payloads: Mapping[str, Any],
                 then: Mapping[str, Sequence[tuple[ScoringCall, Any]]] | None = None) -> dict[str, Any]:
        """Send ``payloads[party]`` to each party at once; return each party's decoded answer.

        ``then[party]`` are requests that do not depend on this one's answer: they go in the same
        message (a :class:`~pplink.scoring.wire.Batch`, answered in order) and their answers wait
        in :meth:`take`.

        Raises:
            TransportError: a party did not answer, failed or was refused (each named).
        """
        settings = self.settings
        started = time.perf_counter()
        then = then or {}
        requests = {}
        calls: dict[str, list[ScoringCall]] = {}
        encoded: dict[int, bytes] = {}  # a payload sent to several parties is encoded once
        for party, payload in payloads.items():
            calls[party] = [call, *(c for c, _ in then.get(party, ()))]
            if then.get(party):
                payload = Batch(settings.run_id, tuple(c.value for c in calls[party]),
                                (payload, *(p for _, p in then[party])))
            if id(payload) not in encoded:
                encoded[id(payload)] = encode_payload(payload)
            blob = encoded[id(payload)]
            request = ScoringRequest(run_id=settings.run_id, agreement_digest=settings.agreement.agreement_id,
                                     party=party, call=call if len(calls[party]) == 1 else ScoringCall.BATCH,
                                     blob_sha256=blob_digest(blob))
            requests[party] = (self.node_of[party], sign_message(request, settings.key), blob)
        replies, absent = exchange_step(self.grid, settings, RoundStep.SCORE, requests, self.recorder, self.log)
        self.messages += len(requests)
        self.exchanges += 1

        def check(party: str, message: Message) -> Any:
            reply, blob = check_reply(settings, RoundStep.SCORE, party, self.node_of[party], message, ScoringReply)
            assert isinstance(reply, ScoringReply)
            sent = calls[party]
            asked = sent[0] if len(sent) == 1 else ScoringCall.BATCH
            if reply.call is not asked or blob is None or blob_digest(blob) != reply.blob_sha256:
                raise PartyProblem(party, f"refused: the {call.value} answer does not match what it signed",
                                   refused=True)
            try:
                answer = decode_payload(blob, what=f"{call.value} answer from {party}")
            except PplinkError as err:
                raise PartyProblem(party, f"refused: {err}", refused=True) from None
            if len(sent) == 1:
                return answer
            if not isinstance(answer, BatchReply) or len(answer.answers) != len(sent):
                raise PartyProblem(party, f"refused: the {call.value} batch answer does not match the batch",
                                   refused=True)
            for later, value in zip(sent[1:], answer.answers[1:], strict=True):
                self._ahead[(party, later)] = value
            return answer.answers[0]

        good, problems = collect_replies(RoundStep.SCORE, list(payloads), replies, absent, check, self.log)
        named = "+".join(c.value for c in max(calls.values(), key=len))
        self.timings.append((named, round(time.perf_counter() - started, 3)))
        if problems:
            listed = "; ".join(f"{p}: {why}" for p, why in sorted(problems.items()))
            raise TransportError(f"scoring failed at {call.value} ({', '.join(sorted(problems))}): {listed}")
        return good

    def take(self, party: str, call: ScoringCall) -> tuple[bool, Any]:
        """``(True, answer)`` for a request that went ahead in an earlier batch (once), else ``(False, None)``."""
        key = (party, call)
        if key in self._ahead:
            return True, self._ahead.pop(key)
        return False, None

    def broadcast(self, call: ScoringCall, token: object, make: Callable[[], Any], parties: Sequence[str],
                  agency: str, then: Mapping[str, Sequence[tuple[ScoringCall, Any]]] | None = None) -> Any:
        """``agency``'s answer to ``make()``, sent to every one of ``parties`` in one exchange.

        The exchange is made (and ``make`` called) when ``token`` differs from the last broadcast's
        (the first endpoint asked); the other parties' endpoints then answer from it.
        """
        last = self._last
        if last is None or last[0] is not call or last[1] is not token and last[1] != token or agency not in last[2]:
            payload = make()
            answers = self.exchange(call, dict.fromkeys(parties, payload), then)
            self._last = last = (call, token, answers)
        return last[2][agency]

    def one(self, call: ScoringCall, agency: str, payload: Any,
            then: Sequence[tuple[ScoringCall, Any]] = ()) -> Any:
        """Send one message to one agency (with ``then`` batched behind it) and return its answer."""
        return self.exchange(call, {agency: payload}, {agency: then} if then else None)[agency]
