"""The match round, once, for every transport: :func:`run_round` over any :class:`MatchNodes`.

1. **Connect** to the agencies (:meth:`MatchNodes.connect`). An agency that cannot be reached
   fails the round, naming it, unless the agreement's ``linkage.allow_missing_parties`` lets the
   round go on without it.
2. **Encode**: obtain every reachable agency's verified encodings. An agency that fails or is
   refused fails the round in the same way; fewer than two agencies left fail it always.
3. **Match** the encodings (:func:`~coordinator.linkage.match_round.match_files`) and write the
   outputs (maps, linkage state, match report, signed manifest:
   :func:`~coordinator.linkage.match_round.write_round_outputs`).
4. **Resolve**: hand each agency only its own pseudonym map. If any agency fails here, the ones
   that had written this round's result are asked to roll back, and the round fails: a failed
   round leaves everyone with the last finished round's result.

A *staged* round (``staging`` given: the Flower path) is written into the staging folder and
renamed to ``out_dir`` only once every agency has resolved; any failure removes the staging
folder. Otherwise (the file-based path) the round is published to ``out_dir`` at once, and
agencies resolve from it afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.compare import announce
from coordinator.linkage.match import MatchResult
from coordinator.linkage.match_round import check_coordinator_key, check_inputs, match_files, write_round_outputs
from coordinator.linkage.round_nodes import MatchNodes, PartyMap
from coordinator.linkage.state import LinkageState
from coordinator.run_records import RunPhase, RunStatus
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_replace
from pplink.encfile import EncodingsFile
from pplink.errors import PplinkError, TransportError
from pplink.messages import RoundStep

__all__ = ["RoundOutcome", "fail_message", "run_round"]


@dataclass(frozen=True)
class RoundOutcome:
    """What a finished round produced.

    Attributes:
        out_dir: where the round's outputs are.
        files: the encodings matched, in match order.
        missing: the agencies the round went on without.
        problems: per agency, why it was left out (empty when every agency took part).
        state: the coordinator's linkage state.
        result: the match result (stats, histogram).
        maps: per agency, its map's path in ``out_dir``.
        seconds: time per step (``waiting_for_nodes``, ``encode``, ``match``, ``resolve``) and ``total``.
    """

    out_dir: Path
    files: tuple[EncodingsFile, ...]
    missing: tuple[str, ...]
    problems: dict[str, str]
    state: LinkageState
    result: MatchResult
    maps: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def linked_entities(self) -> int:
        """Entities with records at more than one agency."""
        return int((self.state.membership().sum(axis=1) > 1).sum())


def fail_message(step: RoundStep, problems: Mapping[str, str]) -> str:
    """The error text of a round that failed at ``step`` because of these agencies' problems.

    >>> fail_message(RoundStep.ENCODE, {"police": "no reply", "health": "refused: bad signature"})
    'round failed at query.encode (health, police): health: refused: bad signature; police: no reply'
    """
    listed = "; ".join(f"{party}: {why}" for party, why in sorted(problems.items()))
    return f"round failed at {step.value} ({', '.join(sorted(problems))}): {listed}"


def _ignore(*_: Any, **__: Any) -> None:
    """Stand-in for a run record or log nobody keeps (the file-based path)."""


def run_round(
    agreement: AgreementConfig,
    key: Ed25519PrivateKey,
    nodes: MatchNodes,
    out_dir: Path,
    *,
    staging: Path | None = None,
    workers: int = 2,
    blocking: BlockingConfig | None | Literal["auto"] = "auto",
    progress: Callable[[int, int], None] | None = None,
    threshold: float | None = None,
    record: Callable[..., None] = _ignore,
    log: Callable[[str], None] = _ignore,
) -> RoundOutcome:
    """Run one match round with ``nodes``; see the module docstring for the steps.

    Args:
        agreement: the validated agreement.
        key: the coordinator's signing key (must be the agreement's coordinator key).
        nodes: the agencies, through one transport.
        out_dir: where the round's outputs are kept.
        staging: for a staged round, where its outputs are written until every agency resolved.
        workers: threads for comparing encodings.
        blocking: the blocking policy (see :func:`~coordinator.linkage.match_round.match_files`).
        progress: receives ``(done, total)`` while comparing; told each stage (loading, blocking,
            comparing, solving, writing) if it has a ``stage(name, total)`` method.
        threshold: this round's threshold, overriding the agreement's (within its bounds).
        record: receives the run record's changes at every phase (``phase=``, ``status=``, …).
        log: receives one line per event.

    Returns:
        The round's outcome.

    Raises:
        TransportError: an agency could not be reached, failed or was refused (each named), when
            the agreement does not allow going on without it, or fewer than two agencies remain,
            or an agency failed to resolve (after the others were asked to roll back).
        MatchError, KeyFileError, PplinkError: as reading, matching and writing raise them.
        Every failure is recorded (``record``) and logged first, and nothing of a staged round is kept.
    """
    allow_missing = agreement.linkage.allow_missing_parties
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}
    problems: dict[str, str] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    try:
        check_coordinator_key(agreement, key)
        present, problems = nodes.connect(agreement.agency_ids)
        problems = dict(problems)
        t = lap("waiting_for_nodes", started)
        if problems and not allow_missing:
            raise TransportError(fail_message(RoundStep.ENCODE, problems) +
                                 "; the agreement does not allow a round without every agency")

        # --- encode ---------------------------------------------------------------------------
        record(phase=RunPhase.ENCODE, problems=problems)
        announce(progress, "loading")
        files, encode_problems = nodes.encode(present)
        problems.update(encode_problems)
        t = lap("encode", t)
        if encode_problems and not allow_missing:
            raise TransportError(fail_message(RoundStep.ENCODE, encode_problems))
        if len(files) < 2 and problems:
            raise TransportError(fail_message(RoundStep.ENCODE, problems) + "; fewer than two agencies remain")

        # --- match ----------------------------------------------------------------------------
        ordered = list(files.values())
        missing = check_inputs(agreement, ordered)
        record(phase=RunPhase.MATCH, parties=tuple(files), missing=missing, problems=problems,
               records={p: f.header.n_records for p, f in files.items()})
        log(f"matching {sum(f.header.n_records for f in ordered)} encodings from {len(ordered)} agencies"
            + (f" (without {', '.join(missing)})" if missing else ""))
        state, result = match_files(agreement, ordered, workers=workers, blocking=blocking, progress=progress,
                                    threshold=threshold)
        written_to = out_dir
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            written_to = Path(staging)
        announce(progress, "writing")
        maps = write_round_outputs(agreement, key, ordered, state, result, missing, written_to)
        maps = {party: out_dir / path.relative_to(written_to) for party, path in maps.items()}
        t = lap("match", t)

        # --- resolve --------------------------------------------------------------------------
        record(phase=RunPhase.RESOLVE)
        party_maps = {p: PartyMap(p, f.tokens, state.pseudonyms[state.cluster_of[p]]) for p, f in files.items()}
        resolved, resolve_problems = nodes.resolve(party_maps)
        t = lap("resolve", t)
        if resolve_problems:
            problems.update(resolve_problems)
            if resolved:
                record(phase=RunPhase.ROLLBACK, problems=problems)
                log(f"rolling back {', '.join(sorted(resolved))}")
                for party, why in nodes.rollback(sorted(resolved)).items():
                    problems[party] = f"its result of this failed run may still be in place (rollback: {why})"
                lap("rollback", t)
            raise TransportError(fail_message(RoundStep.RESOLVE, resolve_problems))

        # --- every agency has its result: the round is kept --------------------------------------
        if staging is not None:
            atomic_replace(staging, out_dir)  # one rename: the round's folder appears whole
        seconds["total"] = round(time.perf_counter() - started, 3)
        outcome = RoundOutcome(out_dir=out_dir, files=tuple(ordered), missing=missing, problems=problems,
                               state=state, result=result, maps=maps, seconds=seconds)
        record(status=RunStatus.FINISHED, phase=RunPhase.DONE, output_dir=str(out_dir), entities=state.n_clusters,
               linked_entities=outcome.linked_entities, problems=problems, seconds=seconds)
        log(f"finished in {seconds['total']:.1f} s: {state.n_clusters} entities; outputs in {out_dir}")
        return outcome
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        seconds["total"] = round(time.perf_counter() - started, 3)
        code = err.code if isinstance(err, PplinkError) else None
        message = str(err) if isinstance(err, PplinkError) else f"unexpected {type(err).__name__}: {err}"
        record(status=RunStatus.FAILED, waiting_for=(), problems=problems, error_code=code, error=message,
               seconds=seconds)
        log(f"FAILED: {message}")
        raise
