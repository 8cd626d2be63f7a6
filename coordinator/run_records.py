"""pplink's own record of each match round run over Flower, kept in the coordinator's state folder.

Flower keeps its runs in ``<state>/flwr.db``; pplink keeps one JSON file per round in
``<state>/runs/<run_id>.json``, written atomically at every phase, so a coordinator that was
restarted can still say what finished, what failed and why, and where the outputs are.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError

from pplink.atomic import atomic_write
from pplink.errors import TransportError
from pplink.models import PplinkModel

__all__ = [
    "RunPhase",
    "RunRecord",
    "RunStatus",
    "list_run_records",
    "mark_interrupted",
    "read_run_record",
    "run_record_path",
    "runs_dir",
    "timestamp",
    "write_run_record",
]


class RunStatus(StrEnum):
    """Where a run stands."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    #: It was running when the coordinator stopped; nothing of it was kept.
    INTERRUPTED = "interrupted"


class RunPhase(StrEnum):
    """The step a run is in (or ended in)."""

    SUBMITTED = "submitted"
    WAITING_FOR_NODES = "waiting for nodes"
    ENCODE = "encode"
    MATCH = "match"
    RESOLVE = "resolve"
    ROLLBACK = "rollback"
    DONE = "done"


def timestamp() -> str:
    """Now, in UTC, to the millisecond (ISO 8601): orders runs started within one second."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunRecord(PplinkModel):
    """One match round run over Flower."""

    run_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16,32}$")]
    agreement_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    status: RunStatus
    phase: RunPhase
    started: str
    updated: str
    flower_run_id: int | None = None
    #: Agencies whose replies were used, in match order.
    parties: tuple[str, ...] = ()
    #: Agencies the round went on without (only when the agreement allows it).
    missing: tuple[str, ...] = ()
    #: Agencies the current phase still waits for.
    waiting_for: tuple[str, ...] = ()
    #: Per agency, why it was left out or why the round failed on it.
    problems: dict[str, str] = {}
    records: dict[str, int] = {}
    entities: int | None = None
    linked_entities: int | None = None
    output_dir: str | None = None
    error_code: int | None = None
    error: str | None = None
    seconds: dict[str, float] = {}


def runs_dir(state_dir: Path) -> Path:
    """The folder of run records."""
    return Path(state_dir) / "runs"


def run_record_path(state_dir: Path, run_id: str) -> Path:
    """Where one run's record is."""
    return runs_dir(state_dir) / f"{run_id}.json"


def write_run_record(state_dir: Path, record: RunRecord) -> RunRecord:
    """Write a run record atomically (stamping ``updated``) and return what was written."""
    record = record.model_copy(update={"updated": timestamp()})
    path = run_record_path(state_dir, record.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, record.model_dump_json(indent=2))
    return record


def read_run_record(state_dir: Path, run_id: str) -> RunRecord:
    """Read one run record.

    Raises:
        TransportError: no record for that run, or it is malformed.
    """
    path = run_record_path(state_dir, run_id)
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except OSError:
        raise TransportError(f"{path}: no record of run {run_id}") from None
    except ValidationError:
        raise TransportError(f"{path}: malformed run record") from None


def list_run_records(state_dir: Path) -> list[RunRecord]:
    """Every readable run record, oldest first (malformed files are skipped)."""
    out = []
    for path in sorted(runs_dir(state_dir).glob("*.json")):
        try:
            out.append(RunRecord.model_validate_json(path.read_bytes()))
        except (OSError, ValidationError):
            continue
    return sorted(out, key=lambda r: (r.started, r.run_id))


def mark_interrupted(state_dir: Path) -> list[str]:
    """Mark runs still recorded as running as interrupted (call when the SuperLink (re)starts).

    Returns:
        The run ids marked.
    """
    marked = []
    for record in list_run_records(state_dir):
        if record.status is RunStatus.RUNNING:
            write_run_record(state_dir, record.model_copy(update={
                "status": RunStatus.INTERRUPTED, "waiting_for": (),
                "error": "the coordinator stopped while this run was in progress",
            }))
            marked.append(record.run_id)
    return marked
