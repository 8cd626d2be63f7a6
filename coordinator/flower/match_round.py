"""The coordinator's side of a match round over Flower: the agencies' SuperNodes as :class:`MatchNodes`.

:func:`run_flower_match_round` is what the ServerApp (:mod:`coordinator.flower.server_app`) runs:
the round itself (what a missing or refused agency means, matching, writing, resolving or rolling
back, keeping the round) is :func:`coordinator.linkage.round_runner.run_round`, the same function
the file-based path runs. This module only carries its steps over the Grid
(:class:`FlowerMatchNodes`); agencies' SuperNodes dial out to the SuperLink, and the coordinator
only talks to them through the Grid:

* **connect**: wait until every agency's node is online. A node is known by the name the
  coordinator registered its key under (``pplink coordinator serve`` registers exactly the
  agreement's agencies); a node whose name is not an agency, whose key is not the one registered
  for that agency, or that shares its name with another node is ignored and logged. Where Flower
  authenticates no node (``--insecure`` tests), each node is asked to identify itself and only a
  reply signed with an agency's key from the agreement is believed.
* **encode**: ask each agency for its encodings. A reply is used only if it parses, is for this
  run and agreement, comes from the agency that was asked, is signed by that agency's key in the
  agreement, and its ``.enc`` bytes verify (signature, agreement id, party). Anything else is
  refused and logged.
* **resolve**: send each agency only its own pseudonym map; each checks it, sets its previous
  result aside and writes ``record_id,entity_id``.
* **rollback**: ask agencies that had written this failed round's result to put the previous one back.

The round is staged in ``<state>/rounds/<run_id>.partial`` and renamed to ``<state>/rounds/<run_id>``
once every agency has resolved. Two exchanges on success: each costs seconds, as an idle SuperNode
polls for work (every 0.5 s, see :mod:`nodes.flower.supernode_poll`) and starts a process per
message (forked warm, see :mod:`pplink.transport.warm`).

Progress and the outcome go to ``<state>/runs/<run_id>.json`` (:mod:`coordinator.run_records`).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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
from coordinator.flower.node_directory import load_registered_keys, wait_for_nodes
from coordinator.linkage.match_round import check_coordinator_key
from coordinator.linkage.round_nodes import PartyMap
from coordinator.linkage.round_runner import run_round
from coordinator.run_records import RunRecord, RunStatus, read_run_record
from pplink.agreement import load_agreement
from pplink.atomic import PARTIAL_SUFFIX
from pplink.crypto import load_private_key
from pplink.encfile import EncodingsFile, encodings_from_bytes
from pplink.errors import AgreementMismatchError, ConfigError, PplinkError, TransportError
from pplink.messages import (
    AnyRequest,
    EncodeReply,
    EncodeRequest,
    ResolveReply,
    ResolveRequest,
    RollbackReply,
    RollbackRequest,
    RoundStep,
    blob_digest,
    sign_message,
)

__all__ = ["FlowerMatchNodes", "RoundSettings", "rounds_dir", "run_flower_match_round", "settings_from_run_config"]


def rounds_dir(state_dir: Path) -> Path:
    """Where the coordinator keeps each finished round's outputs (``<state>/rounds/<run_id>``)."""
    return Path(state_dir) / "rounds"


def _clear_abandoned_staging(state_dir: Path) -> None:
    """Remove the staging folders of earlier runs that are no longer running (killed mid-round)."""
    folder = rounds_dir(state_dir)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            running = read_run_record(state_dir, entry.name.removesuffix(PARTIAL_SUFFIX)).status is RunStatus.RUNNING
        except TransportError:
            running = False
        if not running:
            shutil.rmtree(entry, ignore_errors=True)


def _verified_encodings(settings: RoundSettings, party: str, node_id: int, message: Message) -> EncodingsFile:
    reply, blob = check_reply(settings, RoundStep.ENCODE, party, node_id, message, EncodeReply)
    assert isinstance(reply, EncodeReply)
    where = f"encodings from node {node_id} ({party})"
    try:
        if blob is None or blob_digest(blob) != reply.blob_sha256:
            raise TransportError(f"{where}: the bytes do not match the digest the agency signed")
        enc = encodings_from_bytes(blob, settings.agreement, source=where, expected_party=party)
        if enc.header.file_id != reply.file_id or enc.header.n_records != reply.records:
            raise TransportError(f"{where}: the file does not match the reply describing it")
    except PplinkError as err:
        raise PartyProblem(party, f"refused: {err}", refused=True) from None
    return enc


def _map_blob(party_map: PartyMap) -> bytes:
    """One agency's pseudonym map as ``rows x 32`` bytes: row token, then entity pseudonym."""
    return np.concatenate([party_map.tokens, party_map.entities], axis=1).tobytes()


class FlowerMatchNodes:
    """The agencies' SuperNodes over a Flower Grid, as :class:`~coordinator.linkage.round_nodes.MatchNodes`.

    Each step is one exchange: a signed request per agency, pushed together; each reply is checked
    (:func:`~coordinator.flower.exchange.check_reply`) before anything in it is used.

    Args:
        grid: the SuperLink's Grid (or an in-process one).
        settings: the round's settings.
        recorder: the run record (which agencies a step still waits for).
        log: receives one line per event.
    """

    def __init__(self, grid: Grid, settings: RoundSettings, recorder: RunRecorder, log: Callable[[str], None]) -> None:
        self.grid, self.settings, self.recorder, self.log = grid, settings, recorder, log
        self.node_of: dict[str, int] = {}

    def _exchange(self, step: RoundStep, requests: Mapping[str, tuple[AnyRequest, bytes | None]],
                  check: Callable[[str, Message], Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Sign and send one request per party, then check each reply: ``({party: checked}, {party: problem})``."""
        signed: dict[str, tuple[int, AnyRequest, bytes | None]] = {
            p: (self.node_of[p], sign_message(request, self.settings.key), blob)
            for p, (request, blob) in requests.items()
        }
        replies, absent = exchange_step(self.grid, self.settings, step, signed, self.recorder, self.log)
        return collect_replies(step, list(requests), replies, absent, check, self.log)

    def _about(self, party: str) -> dict[str, str]:
        """The fields every request of this round carries for ``party``."""
        return {"run_id": self.settings.run_id, "agreement_digest": self.settings.agreement.agreement_id,
                "party": party}

    def _checked(self, step: RoundStep, expected: type) -> Callable[[str, Message], Any]:
        def check(party: str, message: Message) -> Any:
            reply, _ = check_reply(self.settings, step, party, self.node_of[party], message, expected)
            return reply
        return check

    def connect(self, agencies: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Wait for the agencies' nodes (:func:`~coordinator.flower.node_directory.wait_for_nodes`)."""
        directory = wait_for_nodes(self.grid, self.settings, self.recorder, self.log)
        self.node_of = dict(directory.node_of)
        waited = f"no node online after {self.settings.wait_nodes:g} s"
        problems = {a: waited for a in agencies if a not in self.node_of}
        return tuple(a for a in agencies if a in self.node_of), problems

    def encode(self, parties: Sequence[str]) -> tuple[dict[str, EncodingsFile], dict[str, str]]:
        """Ask each party's node for its encodings; keep those that verify, in agreement order."""
        settings = self.settings
        self.log(f"run {settings.run_id}: nodes {', '.join(f'{p}={self.node_of[p]}' for p in parties)}")
        requests: dict[str, tuple[AnyRequest, bytes | None]] = {p: (EncodeRequest(**self._about(p)), None)
                                                                for p in parties}
        return self._exchange(RoundStep.ENCODE, requests,
                              lambda party, message: _verified_encodings(settings, party, self.node_of[party], message))

    def resolve(self, maps: Mapping[str, PartyMap]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Send each party its own map; a reply counts only if it resolved every row."""
        requests: dict[str, tuple[AnyRequest, bytes | None]] = {}
        for party, party_map in maps.items():
            blob = _map_blob(party_map)
            requests[party] = (ResolveRequest(**self._about(party), rows=party_map.rows, blob_sha256=blob_digest(blob)),
                               blob)
        checked = self._checked(RoundStep.RESOLVE, ResolveReply)

        def check_resolve(party: str, message: Message) -> ResolveReply:
            reply = checked(party, message)
            if reply.rows != maps[party].rows:
                raise PartyProblem(party, f"refused: resolved {reply.rows} rows of {maps[party].rows}", refused=True)
            return reply

        resolved, problems = self._exchange(RoundStep.RESOLVE, requests, check_resolve)
        return tuple(resolved), problems

    def rollback(self, parties: Sequence[str]) -> dict[str, str]:
        """Ask each party's node to put its previous result back."""
        requests: dict[str, tuple[AnyRequest, bytes | None]] = {p: (RollbackRequest(**self._about(p)), None)
                                                                for p in parties}
        _, failed = self._exchange(RoundStep.ROLLBACK, requests, self._checked(RoundStep.ROLLBACK, RollbackReply))
        return failed


def run_flower_match_round(grid: Grid, settings: RoundSettings, *, log: Callable[[str], None] = print) -> RunRecord:
    """Run one match round over ``grid`` (:func:`~coordinator.linkage.round_runner.run_round`).

    Returns:
        The final run record (status ``finished``).

    Raises:
        TransportError: a node was missing, failed or was refused (each named), when the
            agreement does not allow going on without it, or fewer than two agencies remain;
            or a round with this run id was already kept.
        MatchError, KeyFileError, PplinkError: as the matching and output steps raise them.
        Every failure of the round is recorded in the run record first, and nothing of it is kept.
    """
    check_coordinator_key(settings.agreement, settings.key)
    final = rounds_dir(settings.state_dir) / settings.run_id
    if final.exists():  # checked before the run record is made: it must not replace the kept run's record
        raise TransportError(f"{final}: a round with this run id was already kept")
    _clear_abandoned_staging(settings.state_dir)
    recorder = RunRecorder(settings)
    run_round(settings.agreement, settings.key, FlowerMatchNodes(grid, settings, recorder, log), final,
              staging=final.with_name(final.name + PARTIAL_SUFFIX), workers=settings.workers,
              record=recorder.update, log=lambda line: log(f"run {settings.run_id}: {line}"))
    return recorder.record


def settings_from_run_config(config: Mapping[str, object], *, flower_run_id: int | None = None) -> RoundSettings:
    """Build the round settings from the ServerApp's run config (set by ``pplink coordinator run``).

    Keys: ``agreement``, ``agreement-id``, ``state-dir``, ``key``, ``run-id`` and optionally
    ``wait-nodes``, ``reply-timeout``, ``workers``.

    Raises:
        ConfigError: a key is missing or has the wrong type.
        AgreementMismatchError: the agreement file changed since the run was launched.
    """
    def text(name: str) -> str:
        value = config.get(name)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"run config: '{name}' is missing or not a string")
        return value

    def number(name: str, default: float) -> float:
        value = config.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"run config: '{name}' must be a positive number")
        return float(value)

    agreement = load_agreement(Path(text("agreement")))
    if agreement.agreement_id != text("agreement-id"):
        raise AgreementMismatchError("run config: the agreement file changed after the run was launched")
    state_dir = Path(text("state-dir"))
    run_id = text("run-id")
    if not re.fullmatch(r"[0-9a-f]{16,32}", run_id):
        raise ConfigError("run config: 'run-id' must be 16 to 32 lower-case hex digits")
    return RoundSettings(
        agreement=agreement,
        key=load_private_key(Path(text("key"))),
        state_dir=state_dir,
        run_id=run_id,
        flower_run_id=flower_run_id,
        node_keys=load_registered_keys(state_dir),
        wait_nodes=number("wait-nodes", 60.0),
        reply_timeout=number("reply-timeout", 600.0),
        workers=int(number("workers", 2)),
    )
