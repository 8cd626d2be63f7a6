"""The coordinator's side of a vertical scoring run over Flower: endpoints that are Flower messages.

:func:`run_scoring_round` is what the ServerApp runs for ``task = "score"``. It drives the same
:func:`coordinator.scoring.vertical.train_vertical` and :func:`~coordinator.scoring.vertical.evaluate_vertical` as
the in-process run; only the node endpoints differ. :class:`FlowerVerticalNode` satisfies
:class:`pplink.scoring.protocol.LabelOwnerEndpoint`: each method is one ``query.score`` message
(a signed :class:`~pplink.messages.ScoringRequest` with its payload beside it, as in a match round).

Requests that go to every party with the same content (announce, join, share; presence to every
agency but the label owner) are sent to all of them in **one** exchange when the first endpoint is
asked, and the other endpoints answer from that exchange: a SuperNode polls every few seconds,
so a step costs two exchanges (shares from all, then residuals from the label owner) instead of
K + 1. Each node still receives exactly the message the in-process run would give it.

After the evaluation every node is told the run is finished (each removes its saved run state) and
the label owner, sent the released figures, writes its scores locally
(``<out-dir>/<owner>.scores.csv``); nothing of a score leaves it. The run's summary goes to
``<state>/scoring/<run_id>.json`` and its progress to the run record.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
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
from coordinator.flower.node_directory import wait_for_nodes
from coordinator.linkage.state import STATE_FILE, LinkageState, load_linkage_state
from coordinator.run_records import RunPhase, RunRecord, RunStatus
from coordinator.scoring.vertical import ScoringEvaluation, TrainingRun, evaluate_vertical, train_vertical
from pplink.errors import ConfigError, PplinkError, TransportError
from pplink.messages import RoundStep, ScoringCall, ScoringReply, ScoringRequest, blob_digest, sign_message
from pplink.scoring.protocol import (
    HoldoutReply,
    HoldoutRequest,
    PresenceReply,
    PresenceRequest,
    ResidualReply,
    ResidualRequest,
    RunPlan,
    ShareReply,
    ShareRequest,
    ThresholdReply,
    ThresholdRequest,
    VerticalSettings,
)
from pplink.scoring.wire import FinishRequest, JoinRequest, decode_payload, encode_payload

__all__ = [
    "LEDGER_FILE",
    "FlowerScoringChannel",
    "FlowerVerticalNode",
    "ScoringRunSettings",
    "evaluation_lines",
    "latest_round",
    "run_scoring_round",
    "scoring_run_id",
]

#: The coordinator's ledger in its state folder.
LEDGER_FILE = "ledger.jsonl"


def scoring_run_id(run_id: str) -> str:
    """A scoring run id (32 hex) that starts with the pplink run id (16 to 32 hex)."""
    return (run_id + secrets.token_hex(16))[:32]


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
        self.plan: RunPlan | None = None
        #: Request/reply pairs and exchanges (round trips through the SuperLink) so far.
        self.messages = 0
        self.exchanges = 0
        self._last: tuple[ScoringCall, object, dict[str, Any]] | None = None

    def exchange(self, call: ScoringCall, payloads: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``payloads[party]`` to each party at once; return each party's decoded answer.

        Raises:
            TransportError: a party did not answer, failed or was refused (each named).
        """
        settings = self.settings
        requests = {}
        for party, payload in payloads.items():
            blob = encode_payload(payload)
            request = ScoringRequest(run_id=settings.run_id, agreement_digest=settings.agreement.agreement_id,
                                     party=party, call=call, blob_sha256=blob_digest(blob))
            requests[party] = (self.node_of[party], sign_message(request, settings.key), blob)
        replies, absent = exchange_step(self.grid, settings, RoundStep.SCORE, requests, self.recorder, self.log)
        self.messages += len(requests)
        self.exchanges += 1

        def check(party: str, message: Message) -> Any:
            reply, blob = check_reply(settings, RoundStep.SCORE, party, self.node_of[party], message, ScoringReply)
            assert isinstance(reply, ScoringReply)
            if reply.call is not call or blob is None or blob_digest(blob) != reply.blob_sha256:
                raise PartyProblem(party, f"refused: the {call.value} answer does not match what it signed",
                                   refused=True)
            try:
                return decode_payload(blob, what=f"{call.value} answer from {party}")
            except PplinkError as err:
                raise PartyProblem(party, f"refused: {err}", refused=True) from None

        good, problems = collect_replies(RoundStep.SCORE, list(payloads), replies, absent, check, self.log)
        if problems:
            listed = "; ".join(f"{p}: {why}" for p, why in sorted(problems.items()))
            raise TransportError(f"scoring failed at {call.value} ({', '.join(sorted(problems))}): {listed}")
        return good

    def broadcast(self, call: ScoringCall, token: object, payload: Any, parties: Sequence[str], agency: str) -> Any:
        """``agency``'s answer to ``payload``, sent to every one of ``parties`` in one exchange.

        The exchange is made when ``token`` differs from the last broadcast's (the first endpoint
        asked); the other parties' endpoints then answer from it.
        """
        last = self._last
        if last is None or last[0] is not call or last[1] is not token and last[1] != token or agency not in last[2]:
            answers = self.exchange(call, {p: payload for p in parties})
            self._last = last = (call, token, answers)
        return last[2][agency]

    def one(self, call: ScoringCall, agency: str, payload: Any) -> Any:
        """Send one message to one agency and return its answer."""
        return self.exchange(call, {agency: payload})[agency]


class FlowerVerticalNode:
    """One agency's endpoint in a vertical run, reached through a :class:`FlowerScoringChannel`."""

    def __init__(self, channel: FlowerScoringChannel, agency: str) -> None:
        self._channel, self._agency = channel, agency

    @property
    def agency_id(self) -> str:
        """The agency."""
        return self._agency

    def _plan(self) -> RunPlan:
        if self._channel.plan is None:
            raise TransportError("scoring message before the run was announced")
        return self._channel.plan

    def announce(self, plan: RunPlan) -> Any:
        """Ask every party for its signed mask key (one exchange)."""
        self._channel.plan = plan
        return self._channel.broadcast(ScoringCall.ANNOUNCE, plan, plan, plan.parties, self._agency)

    def join(self, plan: RunPlan, announcements: Sequence[Any]) -> None:
        """Relay every key to every party (one exchange)."""
        self._channel.broadcast(ScoringCall.JOIN, announcements, JoinRequest(plan, tuple(announcements)),
                                plan.parties, self._agency)

    def share(self, request: ShareRequest) -> ShareReply:
        """Ask for masked shares (one exchange for every party)."""
        answer = self._channel.broadcast(ScoringCall.SHARE, request, request, self._plan().parties, self._agency)
        assert isinstance(answer, ShareReply)
        return answer

    def presence(self, request: PresenceRequest) -> PresenceReply:
        """Ask every agency but the label owner for its outcome-mask sums (one exchange)."""
        plan = self._plan()
        others = [a for a in plan.parties if a != plan.label_owner]
        answer = self._channel.broadcast(ScoringCall.PRESENCE, ("presence", request.run_id), request, others,
                                         self._agency)
        assert isinstance(answer, PresenceReply)
        return answer

    def residuals(self, request: ResidualRequest) -> ResidualReply:
        """The label owner's noisy residuals (one message)."""
        answer = self._channel.one(ScoringCall.RESIDUALS, self._agency, request)
        assert isinstance(answer, ResidualReply)
        return answer

    def holdout(self, request: HoldoutRequest) -> HoldoutReply:
        """The label owner's holdout histogram (one message)."""
        answer = self._channel.one(ScoringCall.HOLDOUT, self._agency, request)
        assert isinstance(answer, HoldoutReply)
        return answer

    def threshold(self, request: ThresholdRequest) -> ThresholdReply:
        """The label owner's error counts at the threshold (one message)."""
        answer = self._channel.one(ScoringCall.THRESHOLD, self._agency, request)
        assert isinstance(answer, ThresholdReply)
        return answer


@dataclasses.dataclass(frozen=True)
class ScoringRunSettings:
    """What a scoring run over Flower needs beyond the round settings.

    Attributes:
        vertical: the training and evaluation settings.
        match_run: the finished match round whose linkage to score on (None: the latest).
        ledger_path: the ledger (default ``<state>/ledger.jsonl``).
    """

    vertical: VerticalSettings = dataclasses.field(default_factory=VerticalSettings)
    match_run: str | None = None
    ledger_path: Path | None = None


def latest_round(state_dir: Path) -> Path:
    """The newest finished match round's folder under ``<state>/rounds``.

    Raises:
        ConfigError: no finished round.
    """
    rounds = [p for p in (Path(state_dir) / "rounds").glob("*") if p.is_dir() and "." not in p.name
              and (p / STATE_FILE).is_file()]
    if not rounds:
        raise ConfigError(f"{Path(state_dir) / 'rounds'}: no finished match round to score on")
    return max(rounds, key=lambda p: (p / STATE_FILE).stat().st_mtime)


def evaluation_lines(run: TrainingRun, evaluation: ScoringEvaluation) -> list[str]:
    """The released evaluation in a few lines, for the label owner's evaluation note."""
    s = run.plan.settings
    top = evaluation.top
    lines = [f"run {run.plan.run_id[:12]}: {run.steps_done} training steps; released holdout AUC {evaluation.auc:.2f}; "
             f"top {100 * s.top_share:g}% flagged: precision {top.precision:.2f}, recall {top.recall:.2f}"]
    for group, rates in sorted(evaluation.subgroup_rates.items()):
        lines.append(f"  {group}: false positive rate {rates.fpr:.2f}, false negative rate {rates.fnr:.2f}")
    return lines


def run_scoring_round(grid: Grid, settings: RoundSettings, scoring: ScoringRunSettings, *,
                      log: Callable[[str], None] = print) -> tuple[RunRecord, TrainingRun, ScoringEvaluation]:
    """Train and evaluate a vertical model over ``grid``; the label owner writes its scores.

    Returns:
        The final run record, the training run and the released evaluation.

    Raises:
        TransportError: a node was missing, failed or was refused.
        BudgetExceededError: the run does not fit the budget left (refused before any release).
        PplinkError: as :func:`coordinator.scoring.vertical.train_vertical` and ``evaluate_vertical`` raise.
        Every failure is recorded in the run record first.
    """
    agreement = settings.agreement
    recorder = RunRecorder(settings)
    started = time.perf_counter()
    try:
        round_dir = (Path(settings.state_dir) / "rounds" / scoring.match_run if scoring.match_run
                     else latest_round(settings.state_dir))
        state: LinkageState = load_linkage_state(round_dir / STATE_FILE, agreement.agreement_id)
        directory = wait_for_nodes(grid, settings, recorder, log)
        missing = [a for a in state.parties if a not in directory.node_of]
        if missing:
            raise TransportError(f"scoring needs every agency of the linkage; no node online for {', '.join(missing)}")
        plan_id = scoring_run_id(settings.run_id)
        channel = FlowerScoringChannel(grid, dataclasses.replace(settings, run_id=plan_id), directory.node_of,
                                       recorder, log)
        nodes = {a: FlowerVerticalNode(channel, a) for a in state.parties}
        ledger = scoring.ledger_path or Path(settings.state_dir) / LEDGER_FILE
        recorder.update(phase=RunPhase.ENCODE, parties=tuple(state.parties))
        log(f"run {settings.run_id}: scoring run {plan_id[:12]} on round {round_dir.name}, "
            f"{scoring.vertical.steps} steps")
        run = train_vertical(agreement, state, ledger, settings.key, nodes, scoring.vertical, run_id=plan_id,
                             on_step=lambda step, sec: log(f"run {settings.run_id}: step {step + 1} in {sec:.1f} s"))
        train_exchanges, train_messages = channel.exchanges, channel.messages
        evaluation = evaluate_vertical(agreement, state, ledger, settings.key, nodes, run)
        lines = evaluation_lines(run, evaluation)
        # Every node forgets the run's keys and seeds; the label owner writes its scores first.
        finish = FinishRequest(plan_id, tuple(lines))
        answer = channel.exchange(ScoringCall.FINISH, {a: finish for a in run.plan.parties})[run.plan.label_owner]
        total = round(time.perf_counter() - started, 3)
        summary = {
            "scoring_run_id": plan_id, "match_round": round_dir.name, "steps": run.steps_done,
            "stop_reason": run.stop_reason, "ledger_entries": [c.seq for c in run.charges],
            "released_auc": evaluation.auc, "score_rows": answer.rows, "seconds": total,
            "step_seconds": list(run.step_seconds), "messages": channel.messages, "exchanges": channel.exchanges,
            "training_messages": train_messages, "training_exchanges": train_exchanges,
            "messages_per_step": run.messages_per_step, "exchanges_per_step": 2,
        }
        out = Path(settings.state_dir) / "scoring" / f"{settings.run_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        recorder.update(status=RunStatus.FINISHED, phase=RunPhase.DONE, output_dir=str(out),
                        entities=state.n_clusters, seconds={"total": total})
        log(f"run {settings.run_id}: scoring finished in {total:.1f} s; released AUC {evaluation.auc:.2f}; "
            f"{answer.rows} scores written at {run.plan.label_owner}")
        return recorder.record, run, evaluation
    except BaseException as err:
        code = err.code if isinstance(err, PplinkError) else None
        message = str(err) if isinstance(err, PplinkError) else f"unexpected {type(err).__name__}: {err}"
        recorder.update(status=RunStatus.FAILED, waiting_for=(), error_code=code, error=message,
                        seconds={"total": round(time.perf_counter() - started, 3)})
        log(f"run {settings.run_id}: FAILED: {message}")
        raise
