"""``pplink coordinator run``: launch one match round or scoring run on the running SuperLink and follow it.

The Flower app is only a ``pyproject.toml`` naming pplink's ServerApp and ClientApp (both
installed with pplink at the coordinator and at every agency); it is written into
``<state>/app`` because ``flwr new`` needs the network. ``flwr run <state>/app pplink --stream``
builds the app bundle, submits it with this round's settings as run config, and streams the
ServerApp's log into ``<state>/runs/<run_id>.flwr.log``. Progress is read from the run record
the ServerApp keeps (:mod:`coordinator.run_records`).

The run config's ``task`` picks what the ServerApp does: ``match`` (a match round) or ``score``
(a vertical scoring run on a finished round, its settings as JSON under ``scoring``). Flower's
SuperLink refuses a run whose config names a key the app's ``[tool.flwr.app.config]`` does not
declare, so every key either task uses is declared there.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.flower.superlink import CONNECTION_NAME, read_serve_info
from coordinator.run_records import (
    RunPhase,
    RunRecord,
    RunStatus,
    read_run_record,
    run_record_path,
    runs_dir,
    timestamp,
    write_run_record,
)
from pplink.agreement import AgreementConfig
from pplink.errors import TransportError, UsageError
from pplink.messages import new_run_id
from pplink.scoring.suffstats import SuffStatsSettings
from pplink.transport.flower_env import flower_env, flower_executable, stop_process

__all__ = ["APP_PYPROJECT", "TASKS", "RunSettings", "launch_round", "run_task", "write_flower_app"]

#: What a run can do: a match round, or a vertical scoring run on a finished round.
TASKS = ("match", "score")

APP_PYPROJECT = """\
# Written by pplink: the Flower app of a pplink match round or scoring run. Its code is pplink's own ServerApp
# (coordinator) and ClientApp (agencies), installed with pplink; nothing is downloaded.
[build-system]
requires = ["setuptools>=65"]
build-backend = "setuptools.build_meta"

[project]
name = "pplink-match-round"
version = "1.0.0"
description = "pplink: one privacy-preserving match round"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pplink"

[tool.flwr.app.components]
serverapp = "coordinator.flower.server_app:app"
clientapp = "nodes.flower.client_app:app"

# Set for each run by `pplink coordinator run` (see coordinator.flower.match_round.settings_from_run_config
# and coordinator.flower.server_app). The SuperLink refuses run-config keys not declared here.
[tool.flwr.app.config]
agreement = ""
agreement-id = ""
state-dir = ""
key = ""
run-id = ""
wait-nodes = 60.0
reply-timeout = 600.0
workers = 2
task = "match"
scoring = ""
match-run = ""
"""


@dataclass(frozen=True)
class RunSettings:
    """One round to launch.

    Attributes:
        agreement: the validated agreement.
        agreement_path: its file (the ServerApp reads it again and checks the id).
        key_path: the coordinator's private signing key.
        state_dir: the state folder of the running ``coordinator serve``.
        wait_nodes: seconds the ServerApp waits for every agency's node.
        reply_timeout: seconds it waits for the replies of one step.
        workers: threads for comparing encodings.
        timeout: seconds after which ``coordinator run`` gives up following the round.
        task: ``match`` (a match round) or ``score`` (a vertical scoring run).
        scoring: the training and evaluation settings of a scoring run (None: the defaults).
        match_run: the finished match round a scoring run uses (None: the newest).
    """

    agreement: AgreementConfig
    agreement_path: Path
    key_path: Path
    state_dir: Path
    wait_nodes: float = 60.0
    reply_timeout: float = 600.0
    workers: int = 2
    timeout: float = 3600.0
    task: str = "match"
    scoring: SuffStatsSettings | None = None
    match_run: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r} (match or score)")
        if self.task != "score" and (self.scoring is not None or self.match_run is not None):
            raise UsageError("scoring settings and a match run belong to task 'score' only")


def write_flower_app(state_dir: Path) -> Path:
    """Write (or refresh) the Flower app folder ``<state>/app``; return it."""
    app = Path(state_dir).resolve() / "app"
    app.mkdir(parents=True, exist_ok=True)
    pyproject = app / "pyproject.toml"
    if not pyproject.is_file() or pyproject.read_text(encoding="utf-8") != APP_PYPROJECT:
        pyproject.write_text(APP_PYPROJECT, encoding="utf-8")
    return app


def _run_config(settings: RunSettings, run_id: str) -> str:
    # A TOML file rather than `k=v` pairs: paths may hold spaces or quotes. JSON strings are TOML strings.
    values: dict[str, object] = {
        "agreement": str(Path(settings.agreement_path).resolve()),
        "agreement-id": settings.agreement.agreement_id,
        "state-dir": str(Path(settings.state_dir).resolve()),
        "key": str(Path(settings.key_path).resolve()),
        "run-id": run_id,
        "wait-nodes": float(settings.wait_nodes),
        "reply-timeout": float(settings.reply_timeout),
        "workers": int(settings.workers),
        "task": settings.task,
        # Every declared key is set, so a run never inherits another task's settings from the app's defaults.
        "scoring": (settings.scoring or SuffStatsSettings()).model_dump_json() if settings.task == "score" else "",
        "match-run": settings.match_run or "",
    }
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def run_task(state_dir: Path, run_id: str) -> str:
    """What a run launched from this state folder did (``match`` or ``score``).

    Read from the run config ``coordinator run`` kept (``<state>/runs/<run_id>.config.toml``);
    ``match`` for a run without one (launched before scoring runs existed).
    """
    path = runs_dir(Path(state_dir)) / f"{run_id}.config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return "match"
    task = config.get("task")
    return task if task in TASKS else "match"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch_round(settings: RunSettings, *, on_update: Callable[[RunRecord], None] | None = None) -> RunRecord:
    """Launch a match round or scoring run with ``flwr run`` and wait for it to end.

    Args:
        settings: the round.
        on_update: called with the run record whenever it changes (progress display).

    Returns:
        The final run record (finished or failed; check ``status``).

    Raises:
        UsageError: no SuperLink is running for the state folder.
    """
    state = Path(settings.state_dir).resolve()
    info = read_serve_info(state)
    app = write_flower_app(state)
    run_id = new_run_id()
    runs = runs_dir(state)
    runs.mkdir(parents=True, exist_ok=True)
    config_path = runs / f"{run_id}.config.toml"
    config_path.write_text(_run_config(settings, run_id), encoding="utf-8")
    log_path = runs / f"{run_id}.flwr.log"
    now = timestamp()
    submitted = write_run_record(state, RunRecord(run_id=run_id, agreement_id=settings.agreement.agreement_id,
                                                  status=RunStatus.RUNNING, phase=RunPhase.SUBMITTED,
                                                  started=now, updated=now))
    if on_update is not None:
        on_update(submitted)
    env = flower_env(Path(str(info["flwr_home"])))
    # The warm launcher `coordinator serve` recorded (no import wait), else the installed program.
    warm = info.get("flwr")
    flwr = str(warm) if isinstance(warm, str) and Path(warm).is_file() else flower_executable("flwr")
    cmd = [flwr, "run", str(app), CONNECTION_NAME, "--stream", "--run-config", str(config_path)]
    last = submitted
    deadline = time.monotonic() + settings.timeout
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=state,
                                   start_new_session=True)
        try:
            while process.poll() is None:
                record = _read_quietly(state, run_id) or last
                if record != last:
                    last = record
                    if on_update is not None:
                        on_update(record)
                if last.status is not RunStatus.RUNNING:
                    # The round has ended. Its log is already in runs/<run_id>.log; give `flwr run`
                    # only a moment to finish streaming rather than wait for its next poll.
                    try:
                        process.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        process.terminate()
                    break
                if time.monotonic() > deadline:
                    process.terminate()
                    break
                time.sleep(0.25)
        finally:
            stop_process(process, 10)
    final = _read_quietly(state, run_id) or last
    if final.status is RunStatus.RUNNING and final.flower_run_id is not None:
        # Gave up following it: stop the run on the SuperLink too, so it cannot finish unseen.
        subprocess.run([flower_executable("flwr"), "stop", str(final.flower_run_id), CONNECTION_NAME],
                       env=env, capture_output=True, timeout=60, check=False)
    if final.status is RunStatus.RUNNING:
        ended = "did not end in time" if time.monotonic() > deadline else "ended without a result"
        final = write_run_record(state, final.model_copy(update={
            "status": RunStatus.FAILED, "waiting_for": (), "error_code": TransportError.code,
            "error": f"the round {ended} (flwr run exit status {process.returncode}); see {log_path}:\n"
                     + _tail(log_path),
        }))
    if on_update is not None and final != last:
        on_update(final)
    return final


def _read_quietly(state: Path, run_id: str) -> RunRecord | None:
    if not run_record_path(state, run_id).is_file():
        return None
    try:
        return read_run_record(state, run_id)
    except TransportError:
        return None  # being replaced at this moment
