"""The coordinator's Flower ServerApp: a thin adapter over :mod:`coordinator.flower.match_round`.

It reads the round settings from the run config that ``pplink coordinator run`` passes, runs
:func:`coordinator.flower.match_round.run_flower_match_round` (``task = "match"``, the default) or
:func:`coordinator.flower.scoring.run_scoring_round` (``task = "score"``, with the scoring
settings as JSON under ``scoring`` and optionally ``match-run``) against the SuperLink's Grid and logs to the
run's log (``<state>/runs/<run_id>.log``) and to Flower's log stream (``flwr run --stream``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.flower.match_round import run_flower_match_round, settings_from_run_config
from coordinator.flower.scoring import ScoringRunSettings, run_scoring_round
from coordinator.run_records import runs_dir
from pplink.errors import ConfigError
from pplink.scoring.suffstats import SuffStatsSettings

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one pplink match round or vertical scoring run."""
    settings = settings_from_run_config(context.run_config, flower_run_id=context.run_id)
    log_path = runs_dir(settings.state_dir) / f"{settings.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"pplink {stamp} {line}", flush=True)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    task = context.run_config.get("task", "match") or "match"
    if task == "match":
        run_flower_match_round(grid, settings, log=log)
    elif task == "score":
        raw = context.run_config.get("scoring", "") or "{}"
        match_run = context.run_config.get("match-run", "") or None
        if not isinstance(raw, str) or not isinstance(match_run, str | None):
            raise ConfigError("run config: 'scoring' and 'match-run' must be strings")
        scoring = ScoringRunSettings(suffstats=SuffStatsSettings.model_validate_json(raw), match_run=match_run)
        run_scoring_round(grid, settings, scoring, log=log)
    else:
        raise ConfigError(f"run config: unknown task {task!r} (match or score)")
