"""The coordinator's side of a match round over Flower.

:func:`run_flower_match_round` is what the ServerApp (:mod:`coordinator.flower.server_app`) runs. Agencies'
SuperNodes dial out to the SuperLink; the coordinator only talks to them through the Grid:

1. **Nodes.** Wait until every agency's node is online. A node is known by the name the
   coordinator registered its key under (``pplink coordinator serve`` registers exactly the
   agreement's agencies); a node whose name is not an agency, whose key is not the one registered
   for that agency, or that shares its name with another node is ignored and logged. Where Flower
   authenticates no node (``--insecure`` tests), each node is asked to identify itself and only a
   reply signed with an agency's key from the agreement is believed.
2. **Encode.** Ask each agency for its encodings. A reply is used only if it parses, is for this
   run and agreement, comes from the agency that was asked, is signed by that agency's key in the
   agreement, and its ``.enc`` bytes verify (signature, agreement id, party). Anything else is
   refused and logged. An agency that does not answer, fails, or is refused fails the round, naming
   it, unless the agreement's ``linkage.allow_missing_parties`` lets the round go on without it.
3. **Match** the verified encodings (``coordinator.linkage.match_round``) and write the coordinator's
   outputs (maps, linkage state, signed manifest) into a staging folder.
4. **Resolve.** Send each agency only its own pseudonym map; each checks it, sets its previous
   result aside and writes ``record_id,entity_id``. When every agency has, the coordinator keeps
   its outputs (renames the staging folder to ``<state>/rounds/<run_id>``). If any agency fails
   here, the staging folder is removed and the agencies that had written are asked to roll back
   (``query.rollback``): a failed round leaves everyone with the last finished round's result.

Two exchanges on success: each costs seconds, as an idle SuperNode polls for work (every 0.5 s,
see :mod:`nodes.flower.supernode_poll`) and starts a process per message (forked warm, see
:mod:`pplink.transport.warm`).

Progress and the outcome go to ``<state>/runs/<run_id>.json`` (:mod:`coordinator.run_records`).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

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
from coordinator.linkage.match_round import check_coordinator_key, check_inputs, match_files, write_round_outputs
from coordinator.run_records import RunPhase, RunRecord, RunStatus, read_run_record
from pplink.agreement import load_agreement
from pplink.atomic import PARTIAL_SUFFIX, atomic_replace
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

__all__ = ["RoundSettings", "rounds_dir", "run_flower_match_round", "settings_from_run_config"]


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


def _fail_message(step: RoundStep, problems: Mapping[str, str]) -> str:
    listed = "; ".join(f"{party}: {why}" for party, why in sorted(problems.items()))
    return f"round failed at {step.value} ({', '.join(sorted(problems))}): {listed}"


def _map_blob(f: EncodingsFile, entity_ids: np.ndarray) -> bytes:
    """One agency's pseudonym map as ``rows x 32`` bytes: row token, then entity pseudonym."""
    return np.concatenate([f.tokens, entity_ids], axis=1).tobytes()


def _roll_back(grid: Grid, settings: RoundSettings, node_of: Mapping[str, int], parties: list[str],
               recorder: RunRecorder, problems: dict[str, str], log: Callable[[str], None]) -> None:
    """Ask agencies that already wrote this round's result to put their previous one back."""
    if not parties:
        return
    recorder.update(phase=RunPhase.ROLLBACK, problems=problems)
    log(f"run {settings.run_id}: rolling back {', '.join(parties)}")
    requests: dict[str, tuple[int, AnyRequest, bytes | None]] = {
        p: (node_of[p], sign_message(RollbackRequest(run_id=settings.run_id,
                                                     agreement_digest=settings.agreement.agreement_id, party=p),
                                     settings.key), None)
        for p in parties
    }
    replies, absent = exchange_step(grid, settings, RoundStep.ROLLBACK, requests, recorder, log)

    def check(party: str, message: Message) -> RollbackReply:
        reply, _ = check_reply(settings, RoundStep.ROLLBACK, party, node_of[party], message, RollbackReply)
        assert isinstance(reply, RollbackReply)
        return reply

    _, failed = collect_replies(RoundStep.ROLLBACK, parties, replies, absent, check, log)
    for party, why in failed.items():
        problems[party] = f"its result of this failed run may still be in place (rollback: {why})"


def run_flower_match_round(grid: Grid, settings: RoundSettings, *, log: Callable[[str], None] = print) -> RunRecord:
    """Run one match round over ``grid``; see the module docstring for the steps.

    Returns:
        The final run record (status ``finished``).

    Raises:
        TransportError: a node was missing, failed or was refused (each named), when the
            agreement does not allow going on without it, or fewer than two agencies remain.
        MatchError, KeyFileError, PplinkError: as the matching and output steps raise them.
        Every failure is recorded in the run record first, and nothing of the round is kept.
    """
    agreement, run_id = settings.agreement, settings.run_id
    check_coordinator_key(agreement, settings.key)
    recorder = RunRecorder(settings)
    staging = rounds_dir(settings.state_dir) / f"{run_id}{PARTIAL_SUFFIX}"
    final = rounds_dir(settings.state_dir) / run_id
    seconds: dict[str, float] = {}
    problems: dict[str, str] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    try:
        if final.exists():
            raise TransportError(f"{final}: a round with this run id was already kept")
        _clear_abandoned_staging(settings.state_dir)
        directory = wait_for_nodes(grid, settings, recorder, log)
        t = lap("waiting_for_nodes", started)
        present = [a for a in agreement.agency_ids if a in directory.node_of]
        for party in agreement.agency_ids:
            if party not in directory.node_of:
                problems[party] = f"no node online after {settings.wait_nodes:g} s"
        if problems and not agreement.linkage.allow_missing_parties:
            raise TransportError(_fail_message(RoundStep.ENCODE, problems) +
                                 "; the agreement does not allow a round without every agency")
        log(f"run {run_id}: nodes {', '.join(f'{p}={directory.node_of[p]}' for p in present)}")

        # --- encode ---------------------------------------------------------------------------
        recorder.update(phase=RunPhase.ENCODE, problems=problems)
        node_of = directory.node_of
        requests: dict[str, tuple[int, AnyRequest, bytes | None]] = {
            p: (node_of[p], sign_message(EncodeRequest(run_id=run_id, agreement_digest=agreement.agreement_id,
                                                       party=p), settings.key), None)
            for p in present
        }
        replies, absent = exchange_step(grid, settings, RoundStep.ENCODE, requests, recorder, log)
        files, encode_problems = collect_replies(
            RoundStep.ENCODE, present, replies, absent,
            lambda party, message: _verified_encodings(settings, party, node_of[party], message), log)
        problems.update(encode_problems)
        t = lap("encode", t)
        if encode_problems and not agreement.linkage.allow_missing_parties:
            raise TransportError(_fail_message(RoundStep.ENCODE, encode_problems))
        if len(files) < 2:
            raise TransportError(_fail_message(RoundStep.ENCODE, problems) + "; fewer than two agencies remain")

        # --- match ----------------------------------------------------------------------------
        ordered = [files[p] for p in agreement.agency_ids if p in files]
        missing = check_inputs(agreement, ordered)
        recorder.update(phase=RunPhase.MATCH, parties=tuple(files), missing=missing, problems=problems,
                        records={p: f.header.n_records for p, f in files.items()})
        log(f"run {run_id}: matching {sum(f.header.n_records for f in ordered)} encodings from "
            f"{len(ordered)} agencies" + (f" (without {', '.join(missing)})" if missing else ""))
        state, result = match_files(agreement, ordered, workers=settings.workers)
        shutil.rmtree(staging, ignore_errors=True)
        write_round_outputs(agreement, settings.key, ordered, state, result, missing, staging)
        t = lap("match", t)

        # --- resolve --------------------------------------------------------------------------
        recorder.update(phase=RunPhase.RESOLVE)
        requests = {}
        rows: dict[str, int] = {}
        for f in ordered:
            party = f.header.party
            blob = _map_blob(f, state.pseudonyms[state.cluster_of[party]])
            rows[party] = f.header.n_records
            request = ResolveRequest(run_id=run_id, agreement_digest=agreement.agreement_id, party=party,
                                     rows=rows[party], blob_sha256=blob_digest(blob))
            requests[party] = (node_of[party], sign_message(request, settings.key), blob)
        replies, absent = exchange_step(grid, settings, RoundStep.RESOLVE, requests, recorder, log)

        def check_resolve(party: str, message: Message) -> ResolveReply:
            reply, _ = check_reply(settings, RoundStep.RESOLVE, party, node_of[party], message, ResolveReply)
            assert isinstance(reply, ResolveReply)
            if reply.rows != rows[party]:
                raise PartyProblem(party, f"refused: resolved {reply.rows} rows of {rows[party]}", refused=True)
            return reply

        resolved, resolve_problems = collect_replies(RoundStep.RESOLVE, rows, replies, absent, check_resolve, log)
        t = lap("resolve", t)
        if resolve_problems:
            problems.update(resolve_problems)
            _roll_back(grid, settings, node_of, sorted(resolved), recorder, problems, log)
            lap("rollback", t)
            raise TransportError(_fail_message(RoundStep.RESOLVE, resolve_problems))

        # --- every agency wrote its result: the coordinator keeps the round ---------------------
        atomic_replace(staging, final)  # one rename: the round's folder appears whole
        membership = state.membership()
        seconds["total"] = round(time.perf_counter() - started, 3)
        recorder.update(status=RunStatus.FINISHED, phase=RunPhase.DONE, output_dir=str(final),
                        entities=state.n_clusters, linked_entities=int((membership.sum(axis=1) > 1).sum()),
                        problems=problems, seconds=seconds)
        log(f"run {run_id}: finished in {seconds['total']:.1f} s: {state.n_clusters} entities; outputs in {final}")
        return recorder.record
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        seconds["total"] = round(time.perf_counter() - started, 3)
        code = err.code if isinstance(err, PplinkError) else None
        message = str(err) if isinstance(err, PplinkError) else f"unexpected {type(err).__name__}: {err}"
        recorder.update(status=RunStatus.FAILED, waiting_for=(), problems=problems, error_code=code,
                        error=message, seconds=seconds)
        log(f"run {run_id}: FAILED: {message}")
        raise


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
