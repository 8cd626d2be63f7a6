"""The coordinator's side of a vertical scoring run over Flower: endpoints that are Flower messages.

:func:`run_scoring_round` is what the ServerApp runs for ``task = "score"``. It drives the same
:func:`coordinator.scoring.suffstats.train_suffstats` and
:func:`~coordinator.scoring.suffstats.evaluate_suffstats` as the in-process run (noisy sufficient
statistics, docs/scoring.md); only the node endpoints differ. :class:`FlowerSuffStatsNode`
satisfies :class:`pplink.scoring.suffstats_protocol.SuffStatsOwnerEndpoint`: each method is one
``query.score`` message (a signed :class:`~pplink.messages.ScoringRequest` with its payload beside
it, as in a match round). These endpoints only encode, send, decode and check types.

Requests that go to several parties with the same content (announce, join, forward, scores,
presence) are sent to all of them in **one** exchange when the first endpoint is asked, and the
other endpoints answer from that exchange (a SuperNode polls for work every few seconds). Each
node still receives exactly the message the in-process run would give it, except that the label
owner's setup bundle (~40 MB at 20,000 people, mostly its public key material) is sent to each
agency once: later requests carry it without its ciphertexts, named by its signature, and the
node uses the copy it kept (:mod:`nodes.scoring.suffstats_state`) and verifies it again.

Message size: a payload travels as one uint8 array of a Flower ``ArrayRecord``; Flower (1.41)
cuts arrays into 5 MB chunks for gRPC itself (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``) and allows
gRPC messages of up to 2 GB, so pplink sends whole payloads and does no chunking of its own.

After the evaluation every node is told the run is finished (each removes its saved run state) and
the label owner, sent the model card, writes its scores locally (``<out-dir>/<owner>.scores.csv``);
nothing of a score leaves it. The run's summary goes to ``<state>/scoring/<run_id>.json`` and its
progress to the run record.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from coordinator.flower.exchange import RoundSettings, RunRecorder
from coordinator.flower.node_directory import wait_for_nodes
from coordinator.flower.scoring_channel import FlowerScoringChannel
from coordinator.linkage.state import STATE_FILE, LinkageState, load_linkage_state
from coordinator.release.binding import binding_for_linkage, ledger_for_round
from coordinator.run_records import RunPhase, RunRecord, RunStatus
from coordinator.scoring.suffstats import (
    SuffStatsEvaluation,
    SuffStatsRun,
    evaluate_suffstats,
    presence_attribute,
    spent_loss,
    train_suffstats,
)
from pplink.atomic import atomic_write
from pplink.errors import ConfigError, PplinkError, TransportError
from pplink.messages import ScoringCall
from pplink.scoring.he import SignedBundle
from pplink.scoring.model_card import model_card
from pplink.scoring.secure_sum import MaskKeyAnnouncement
from pplink.scoring.suffstats import SuffStatsSettings
from pplink.scoring.suffstats_protocol import (
    BlockRequest,
    DecryptRequest,
    PresenceAsk,
    Released,
    ScoreRequest,
    SuffStatsPlan,
)
from pplink.scoring.wire import (
    CountsReply,
    FinishReply,
    FinishRequest,
    ForwardAsk,
    OwnerScoresAsk,
    PresenceCountsAsk,
    RunAsk,
    SuffJoin,
    ThresholdAsk,
)

__all__ = [
    "FlowerScoringChannel",
    "FlowerSuffStatsNode",
    "ScoringRunSettings",
    "latest_round",
    "run_scoring_round",
    "scoring_run_id",
]



def scoring_run_id(run_id: str) -> str:
    """A scoring run id (32 hex) that starts with the pplink run id (16 to 32 hex)."""
    return (run_id + secrets.token_hex(16))[:32]


def _typed(answer: Any, cls: type, agency: str, call: ScoringCall) -> Any:
    if not isinstance(answer, cls):
        raise TransportError(f"{agency}: the {call.value} answer is not a {cls.__name__}")
    return answer


def _named(bundle: SignedBundle) -> SignedBundle:
    """The setup bundle without its ciphertexts: a node already holding it uses its own copy."""
    return SignedBundle(bundle.run_id, bundle.maker, bundle.purpose, {}, bundle.signature)


class FlowerSuffStatsNode:
    """One agency's endpoint in a sufficient-statistics run, reached through a :class:`FlowerScoringChannel`."""

    def __init__(self, channel: FlowerScoringChannel, agency: str) -> None:
        self._channel, self._agency = channel, agency

    @property
    def agency_id(self) -> str:
        """The agency."""
        return self._agency

    def _plan(self) -> SuffStatsPlan:
        if self._channel.plan is None:
            raise TransportError("scoring message before the run was announced")
        return self._channel.plan

    def _owner(self, bundle: SignedBundle, parties: Sequence[str]) -> SignedBundle:
        sent = self._channel.setup_sent
        if all(p in sent for p in parties):
            return _named(bundle)
        sent.update(parties)
        return bundle

    def _one(self, call: ScoringCall, payload: Any, cls: type, then: Sequence[tuple[ScoringCall, Any]] = ()) -> Any:
        found, answer = self._channel.take(self._agency, call)
        if not found:
            answer = self._channel.one(call, self._agency, payload, then)
        return _typed(answer, cls, self._agency, call)

    def _all(self, call: ScoringCall, token: object, make: Callable[[], Any], parties: Sequence[str],
             cls: type) -> Any:
        answer = self._channel.broadcast(call, token, make, parties, self._agency)
        return _typed(answer, cls, self._agency, call)

    def announce(self, plan: SuffStatsPlan) -> MaskKeyAnnouncement:
        """Ask every party for its signed mask key (one exchange)."""
        self._channel.plan = plan
        return self._all(ScoringCall.ANNOUNCE, plan, lambda: plan, plan.parties, MaskKeyAnnouncement)

    def join(self, plan: SuffStatsPlan, announcements: Sequence[MaskKeyAnnouncement],
             ledger_lines: Sequence[bytes]) -> None:
        """Relay every key and the ledger chain to every party (one exchange)."""
        lines = tuple(bytes(x) for x in ledger_lines)
        # The label owner's setup needs nothing from the join's answers: it rides in the same message.
        setup = {plan.label_owner: [(ScoringCall.OWNER_SETUP, RunAsk(plan.run_id))]}
        answer = self._channel.broadcast(ScoringCall.JOIN, announcements,
                                         lambda: SuffJoin(plan, tuple(announcements), lines), plan.parties,
                                         self._agency, setup)
        _typed(answer, type(None), self._agency, ScoringCall.JOIN)

    def forward(self, run_id: str, owner: SignedBundle) -> SignedBundle:
        """Ask every agency that forwards (all but the label owner and the last) at once."""
        parties = self._plan().parties[1:-1]
        return self._all(ScoringCall.FORWARD, owner, lambda: ForwardAsk(run_id, self._owner(owner, parties)), parties,
                         SignedBundle)

    def block(self, request: BlockRequest) -> SignedBundle:
        """This agency's noisy encrypted sums (one message)."""
        request = dataclasses.replace(request, owner=self._owner(request.owner, [self._agency]))
        return self._one(ScoringCall.BLOCK, request, SignedBundle)

    def block_each(self, requests: Mapping[str, BlockRequest]) -> dict[str, SignedBundle]:
        """Every agency's noisy encrypted sums, each its own request, in one exchange."""
        payloads = {a: dataclasses.replace(r, owner=self._owner(r.owner, [a])) for a, r in requests.items()}
        answers = self._channel.exchange(ScoringCall.BLOCK, payloads)
        return {a: _typed(answers[a], SignedBundle, a, ScoringCall.BLOCK) for a in requests}

    def score_share(self, request: ScoreRequest) -> SignedBundle:
        """Every agency's masked score share (one exchange)."""
        parties = self._plan().parties[1:]
        return self._all(ScoringCall.SCORES, request,
                         lambda: dataclasses.replace(request, owner=self._owner(request.owner, parties)), parties,
                         SignedBundle)

    def presence(self, request: PresenceAsk) -> SignedBundle:
        """Every agency's noisy presence sums (one exchange)."""
        return self._all(ScoringCall.PRESENCE, request, lambda: request, self._plan().parties[1:], SignedBundle)

    def owner_setup(self, run_id: str) -> SignedBundle:
        """The label owner's public context and encrypted training vectors (one message)."""
        return self._one(ScoringCall.OWNER_SETUP, RunAsk(run_id), SignedBundle)

    def decrypt(self, request: DecryptRequest) -> Released:
        """The released ``G`` and ``b`` (one message)."""
        return self._one(ScoringCall.DECRYPT, request, Released)

    def owner_scores(self, run_id: str, shares: tuple[SignedBundle, ...]) -> None:
        """The label owner sums and decrypts its own people's scores (one message)."""
        # The evaluation's first request (exact holdout histograms) needs nothing from this answer.
        self._one(ScoringCall.OWNER_SCORES, OwnerScoresAsk(run_id, tuple(shares)), type(None),
                  then=[(ScoringCall.HOLDOUT, RunAsk(run_id))])

    def holdout(self, run_id: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Exact holdout histograms, federated and own-feature model (one message, to the release engine)."""
        return self._one(ScoringCall.HOLDOUT, RunAsk(run_id), dict)  # type: ignore[no-any-return]

    def threshold(self, run_id: str, threshold: float) -> dict[str, dict[str, int]]:
        """Exact error counts by subgroup at a public threshold (one message, to the release engine)."""
        # The presence setup (encrypted held-out outcomes at this threshold) goes with it when the
        # evaluation will ask for it: it needs nothing from this answer.
        plan = self._plan()
        then = ([(ScoringCall.PRESENCE_SETUP, RunAsk(run_id))]
                if len(plan.parties) > 1 and presence_attribute(self._channel.settings.agreement) else [])
        return self._one(ScoringCall.THRESHOLD, ThresholdAsk(run_id, float(threshold)), dict,  # type: ignore[no-any-return]
                         then=then)

    def presence_setup(self, run_id: str) -> SignedBundle:
        """The label owner's encrypted held-out outcomes (one message)."""
        return self._one(ScoringCall.PRESENCE_SETUP, RunAsk(run_id), SignedBundle)

    def presence_counts(self, run_id: str, sums: tuple[SignedBundle, ...],
                        ledger_lines: Sequence[bytes]) -> dict[tuple[str, str, str], int]:
        """The released errors by agency presence (one message)."""
        reply = self._one(ScoringCall.PRESENCE_COUNTS,
                          PresenceCountsAsk(run_id, tuple(sums), tuple(bytes(x) for x in ledger_lines)), CountsReply)
        return {(a, w, o): int(c) for a, w, o, c in reply.counts}


@dataclasses.dataclass(frozen=True)
class ScoringRunSettings:
    """What a scoring run over Flower needs beyond the round settings.

    Attributes:
        suffstats: the training and evaluation settings.
        match_run: the finished match round whose linkage to score on (None: the latest).
        ledger_path: the ledger (default: the match round's own, see :func:`ledger_for_round`).
    """

    suffstats: SuffStatsSettings = dataclasses.field(default_factory=SuffStatsSettings)
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


def run_scoring_round(grid: Grid, settings: RoundSettings, scoring: ScoringRunSettings, *,
                      log: Callable[[str], None] = print) -> tuple[RunRecord, SuffStatsRun, SuffStatsEvaluation]:
    """Train and evaluate a vertical model over ``grid``; the label owner writes its scores and model card.

    Returns:
        The final run record, the training run and the released evaluation.

    Raises:
        TransportError: a node was missing, failed or was refused.
        BudgetExceededError: the run does not fit the budget left (refused before any release).
        PplinkError: as :func:`coordinator.scoring.suffstats.train_suffstats` and ``evaluate_suffstats`` raise.
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
        nodes = {a: FlowerSuffStatsNode(channel, a) for a in state.parties}
        # The round's own ledger (its manifest names the genesis), so each round keeps its own budget.
        ledger = scoring.ledger_path or ledger_for_round(
            round_dir, binding_for_linkage(agreement, settings.key, state, round_dir))
        recorder.update(phase=RunPhase.ENCODE, parties=tuple(state.parties))
        log(f"run {settings.run_id}: scoring run {plan_id[:12]} (noisy sufficient statistics) on round "
            f"{round_dir.name}")
        run = train_suffstats(agreement, state, ledger, settings.key, nodes, scoring.suffstats, run_id=plan_id)
        train_exchanges, train_messages = channel.exchanges, channel.messages
        log(f"run {settings.run_id}: G and b released; "
            + ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items()))
        owner = nodes[run.plan.label_owner]
        evaluation = evaluate_suffstats(agreement, ledger, settings.key, owner, run, nodes)
        card = model_card(agreement, run, evaluation, spent_loss(agreement, ledger).epsilon)
        # Every node forgets the run's keys and seeds; the label owner writes its scores and the card first.
        finish = FinishRequest(plan_id, tuple(card.splitlines()))
        answer = channel.exchange(ScoringCall.FINISH, dict.fromkeys(run.plan.parties, finish))[run.plan.label_owner]
        if not isinstance(answer, FinishReply):
            raise TransportError(f"{run.plan.label_owner}: the finish answer is not a FinishReply")
        total = round(time.perf_counter() - started, 3)
        summary = {
            "scoring_run_id": plan_id, "match_round": round_dir.name, "protocol": "sufficient-statistics",
            "ledger": str(ledger), "ledger_entries": [run.ledger_seen - 1, run.ledger_seen],
            "released_auc": evaluation.auc,
            "released_own_auc": evaluation.own_auc, "verdict": evaluation.verdict, "score_rows": answer.rows,
            "entities": run.plan.n_entities, "seconds": total,
            "phase_seconds": {k: round(v, 3) for k, v in run.seconds.items()},
            "bytes_by_message": run.bytes_by_message, "messages": channel.messages, "exchanges": channel.exchanges,
            "training_messages": train_messages, "training_exchanges": train_exchanges,
            "exchange_seconds": channel.timings,
        }
        out = Path(settings.state_dir) / "scoring" / f"{settings.run_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(summary, indent=2).encode("utf-8"))
        recorder.update(status=RunStatus.FINISHED, phase=RunPhase.DONE, output_dir=str(out),
                        entities=state.n_clusters, seconds={"total": total})
        log(f"run {settings.run_id}: scoring finished in {total:.1f} s; released AUC {evaluation.auc:.2f} "
            f"(own features {evaluation.own_auc:.2f}: linking {evaluation.verdict}); "
            f"{answer.rows} scores written at {run.plan.label_owner}")
        return recorder.record, run, evaluation
    except BaseException as err:
        code = err.code if isinstance(err, PplinkError) else None
        message = str(err) if isinstance(err, PplinkError) else f"unexpected {type(err).__name__}: {err}"
        recorder.update(status=RunStatus.FAILED, waiting_for=(), error_code=code, error=message,
                        seconds={"total": round(time.perf_counter() - started, 3)})
        log(f"run {settings.run_id}: FAILED: {message}")
        raise
